//! [`SessionTarget`]: where a page-server session's pagemaps go and what it knows about the parent
//! images, and its local implementation on [`SessionDirWriter`] (a numbered image directory of
//! [`SessionDirs`](pagestream_engine::criu::session_dirs::SessionDirs)).
//!
//! The session ([`super::session`]) enforces the protocol (opening, entry order, flags, data
//! accounting, CLOSE); a target only stores and answers. A forwarding page server implements the
//! same trait with a remote destination behind it.

use bytes::Bytes;
pub use pagestream_engine::criu::pagemap::first_uncovered;
use pagestream_engine::criu::session_dirs::{CommittedSession, SessionDirWriter};
use pagestream_engine::criu::{PagemapEntry, PagemapId};

/// An error of a target (I/O, a refused write, a lost destination), shown after the session's
/// context.
pub type TargetError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The storage side of a page-server session.
///
/// The session calls, in protocol order: [`open_pagemap`](Self::open_pagemap) once per pagemap,
/// then for each entry [`push_entry`](Self::push_entry) followed, for `PE_PRESENT` entries, by
/// [`write_data`](Self::write_data) chunks adding up to exactly `nr_pages * page_size` bytes, and
/// finally [`commit`](Self::commit) on CLOSE. Entries reach a target sorted, non-overlapping,
/// page-aligned and with known, non-empty flags. A target dropped without `commit` must leave
/// nothing of the session behind.
pub trait SessionTarget {
    /// What a successful commit yields.
    type Committed;

    /// Whether the parent images hold pagemap `id`: the answer to OPEN2 and PARENT, and the
    /// condition for accepting `PE_PARENT` entries of `id` at all.
    fn has_parent(&mut self, id: PagemapId) -> Result<bool, TargetError>;

    /// The first address of the `nr_pages` pages at `vaddr` that the parent's pagemap `id` does
    /// not cover (`None`: all covered). Called only when [`has_parent`](Self::has_parent) is true.
    fn first_missing_in_parent(&mut self, id: PagemapId, vaddr: u64, nr_pages: u64)
        -> Result<Option<u64>, TargetError>;

    /// Starts pagemap `id` (never called twice for one id).
    fn open_pagemap(&mut self, id: PagemapId) -> Result<(), TargetError>;

    /// Appends an entry to pagemap `id`.
    fn push_entry(&mut self, id: PagemapId, entry: PagemapEntry) -> Result<(), TargetError>;

    /// The next bytes of the data of the last `PE_PRESENT` entry of pagemap `id`.
    fn write_data(&mut self, id: PagemapId, data: Bytes) -> Result<(), TargetError>;

    /// Makes the session durable. The CLOSE reply is sent only after this returned `Ok`.
    fn commit(self) -> Result<Self::Committed, TargetError>;
}

/// Writes the session to `ROOT/k`; the parent is the previous session `ROOT/k-1`.
impl SessionTarget for SessionDirWriter {
    type Committed = CommittedSession;

    fn has_parent(&mut self, id: PagemapId) -> Result<bool, TargetError> {
        Ok(self.parent().is_some_and(|p| p.pagemap(id).is_some()))
    }

    fn first_missing_in_parent(
        &mut self,
        id: PagemapId,
        vaddr: u64,
        nr_pages: u64,
    ) -> Result<Option<u64>, TargetError> {
        let Some(pm) = self.parent().and_then(|p| p.pagemap(id)) else { return Ok(Some(vaddr)) };
        Ok(first_uncovered(&pm.pagemap.entries, vaddr, nr_pages, self.page_size()))
    }

    fn open_pagemap(&mut self, id: PagemapId) -> Result<(), TargetError> {
        self.writer().open_pagemap(id)?;
        Ok(())
    }

    fn push_entry(&mut self, id: PagemapId, entry: PagemapEntry) -> Result<(), TargetError> {
        Ok(opened(self, id)?.push_entry(entry)?)
    }

    fn write_data(&mut self, id: PagemapId, data: Bytes) -> Result<(), TargetError> {
        Ok(opened(self, id)?.write_data(&data)?)
    }

    fn commit(self) -> Result<CommittedSession, TargetError> {
        Ok(SessionDirWriter::commit(self)?)
    }
}

/// A [`SessionDirWriter`] whose CLOSE only stages the session: the "commit" hands the writer
/// back, still uncommitted, so that more files (the rest of a CRIU dump) can join it before the
/// real commit.
pub struct StagedSession(pub SessionDirWriter);

impl SessionTarget for StagedSession {
    type Committed = SessionDirWriter;

    fn has_parent(&mut self, id: PagemapId) -> Result<bool, TargetError> {
        SessionTarget::has_parent(&mut self.0, id)
    }

    fn first_missing_in_parent(
        &mut self,
        id: PagemapId,
        vaddr: u64,
        nr_pages: u64,
    ) -> Result<Option<u64>, TargetError> {
        self.0.first_missing_in_parent(id, vaddr, nr_pages)
    }

    fn open_pagemap(&mut self, id: PagemapId) -> Result<(), TargetError> {
        SessionTarget::open_pagemap(&mut self.0, id)
    }

    fn push_entry(&mut self, id: PagemapId, entry: PagemapEntry) -> Result<(), TargetError> {
        self.0.push_entry(id, entry)
    }

    fn write_data(&mut self, id: PagemapId, data: Bytes) -> Result<(), TargetError> {
        self.0.write_data(id, data)
    }

    fn commit(self) -> Result<SessionDirWriter, TargetError> {
        Ok(self.0)
    }
}

fn opened(
    dir: &mut SessionDirWriter,
    id: PagemapId,
) -> Result<&mut pagestream_engine::criu::PagemapWriter, TargetError> {
    dir.writer().pagemap(id).ok_or_else(|| format!("{id} was never opened").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagestream_engine::criu::PageFlags;

    const PS: u64 = 4096;

    fn e(vaddr: u64, nr_pages: u64, flags: PageFlags) -> PagemapEntry {
        PagemapEntry { vaddr, nr_pages, flags }
    }

    #[test]
    fn coverage_walks_adjacent_entries_of_any_flags() {
        let entries = [
            e(0x1000, 2, PageFlags::PRESENT),
            e(0x3000, 1, PageFlags::PARENT),
            e(0x4000, 1, PageFlags::LAZY),
            e(0x8000, 4, PageFlags::PRESENT),
        ];
        assert_eq!(first_uncovered(&entries, 0x1000, 4, PS), None);
        assert_eq!(first_uncovered(&entries, 0x2000, 3, PS), None);
        assert_eq!(first_uncovered(&entries, 0x9000, 3, PS), None);
        assert_eq!(first_uncovered(&entries, 0x4000, 2, PS), Some(0x5000));
        assert_eq!(first_uncovered(&entries, 0x0, 1, PS), Some(0x0));
        assert_eq!(first_uncovered(&entries, 0x9000, 4, PS), Some(0xC000));
        assert_eq!(first_uncovered(&[], 0x9000, 1, PS), Some(0x9000));
    }
}
