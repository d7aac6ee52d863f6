//! [`PageServerSession`]: one page-server session (one `criu dump` / `criu pre-dump` connection) as
//! a sans-IO state machine: feed it the [`ServerInput`]s of a [`CommandDecoder`](super::CommandDecoder);
//! it drives a [`SessionTarget`] and appends the reply bytes the client is owed.
//!
//! What it does, following CRIU's `page-xfer.c` server:
//!
//! * OPEN and OPEN2 start a pagemap (OPEN2 is answered with the 1-byte `has_parent`); ADD, HOLE
//!   and ADD_F for a `dst_id` other than the open one start that pagemap implicitly ("Deprecated
//!   IO w/o open"). A pagemap opened a second time in one session is refused.
//! * PARENT is answered with a native `int`: 1 if the parent images hold that pagemap.
//! * ADD is `PE_PRESENT` with data, HOLE is `PE_PARENT`, ADD_F carries any combination of
//!   `PE_PARENT`, `PE_LAZY` and `PE_PRESENT` (data follows only with `PE_PRESENT`). Entries must
//!   be page-aligned, non-empty, sorted and non-overlapping within their pagemap.
//! * A `PE_PARENT` entry needs a parent pagemap (`has_parent` true) that covers its whole range,
//!   else the session fails ("Missing %lx in parent pagemap", `check_pagehole_in_parent`).
//! * GET (lazy pages) is refused with a clear error; this server only receives dumps.
//! * CLOSE / FORCE_CLOSE commit the target and only then append the `int32` 0 reply.
//!
//! Any error fails the session for good and drops the target, which removes everything written
//! (CRIU's client ignores the CLOSE status, so the caller must close the connection without a
//! reply). An end of stream before CLOSE ([`PageServerSession::end_of_stream`]) fails it too.

use bytes::Bytes;
use pagestream_engine::criu::session_dirs::{SessionDirWriter, SessionDirs};
use pagestream_engine::criu::{ImageError, PageFlags, PagemapEntry, PagemapId};

use super::command::{DstId, PagemapKind, PsCommand};
use super::error::ProtocolError;
use super::header::HeaderLayout;
use super::reply::{encode_reply, Reply};
use super::server_decoder::ServerInput;
use super::session_target::{SessionTarget, TargetError};

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The byte stream is not CRIU's protocol (from the decoder).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The client went away before CLOSE.
    #[error(
        "connection closed before CLOSE (after {commands} commands and {data_bytes} bytes of page data): \
         the data were not flushed"
    )]
    EofBeforeClose { commands: u64, data_bytes: u64 },
    /// A lazy-pages request inside a dump session (GETs are served only as a session of their own).
    #[error(
        "GET (lazy-pages request for pid {pid}: {nr_pages} pages at {vaddr:#x}) inside a dump session: a \
         dump session does not serve lazy pages (a lazy-pages client's session starts with GET)"
    )]
    LazyGetUnsupported { pid: u64, vaddr: u64, nr_pages: u64 },
    /// OPEN / OPEN2 (or an implicit open) for a pagemap already started in this session.
    #[error("{id} opened a second time in one session")]
    ReopenedPagemap { id: PagemapId },
    /// An entry with no `PE_*` flag at all.
    #[error("{command} at {vaddr:#x} for {id} carries no PE_* flag")]
    NoFlags { command: &'static str, id: PagemapId, vaddr: u64 },
    /// An entry with flag bits CRIU does not define.
    #[error("{command} at {vaddr:#x} for {id} has unknown flags {flags:#x}")]
    UnknownFlags { command: &'static str, id: PagemapId, vaddr: u64, flags: u32 },
    /// An entry of 0 pages.
    #[error("{command} at {vaddr:#x} for {id} has 0 pages")]
    EmptyEntry { command: &'static str, id: PagemapId, vaddr: u64 },
    /// An entry not on a page boundary.
    #[error("{command} at {vaddr:#x} for {id} is not page aligned")]
    Unaligned { command: &'static str, id: PagemapId, vaddr: u64 },
    /// An entry below the end of the previous one of its pagemap.
    #[error(
        "{command} at {vaddr:#x} for {id} is below the previous entry's end {prev_end:#x} (unsorted or overlapping)"
    )]
    Unsorted { command: &'static str, id: PagemapId, vaddr: u64, prev_end: u64 },
    /// `PE_PARENT` for a pagemap the parent images do not have.
    #[error("PE_PARENT entry {vaddr:#x} x {nr_pages} for {id}, but there is no parent {id} (has_parent is false)")]
    NoParent { id: PagemapId, vaddr: u64, nr_pages: u64 },
    /// `PE_PARENT` for a range the parent pagemap does not cover.
    #[error("Missing {missing:#x} in parent pagemap {id} (PE_PARENT entry {vaddr:#x} x {nr_pages})")]
    MissingInParent { id: PagemapId, vaddr: u64, nr_pages: u64, missing: u64 },
    /// Page data that no command announced (a decoder/session mismatch).
    #[error("{bytes} bytes of page data where only {owed} were owed")]
    UnexpectedPageData { bytes: u64, owed: u64 },
    /// A command while the previous entry's page data is incomplete (a decoder/session mismatch).
    #[error("{command} arrived while {owed} bytes of page data were still owed to the previous entry")]
    DataMissing { command: &'static str, owed: u64 },
    /// The target failed.
    #[error("{context}: {source}")]
    Target { context: String, source: TargetError },
    /// Creating the session's storage failed.
    #[error("cannot start the session: {0}")]
    Begin(#[source] ImageError),
    /// Input after the session committed or failed.
    #[error("the session has already {0}")]
    Finished(&'static str),
}

/// What a session received, for logs and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Commands handled.
    pub commands: u64,
    /// Pagemaps opened (explicitly or implicitly).
    pub pagemaps: u64,
    /// Entries written.
    pub entries: u64,
    /// Pages with data (`PE_PRESENT`).
    pub present_pages: u64,
    /// Pages left to the parent (`PE_PARENT`).
    pub parent_pages: u64,
    /// Pages marked `PE_LAZY` without data.
    pub lazy_pages: u64,
    /// Bytes of page data received.
    pub data_bytes: u64,
    /// OPEN2 / PARENT questions answered "the parent has it".
    pub has_parent_true: u64,
    /// OPEN2 / PARENT questions answered "no parent".
    pub has_parent_false: u64,
}

enum State<C> {
    Receiving,
    Committed(C),
    Failed,
}

/// One page-server session over a [`SessionTarget`] (sans-IO).
pub struct PageServerSession<T: SessionTarget> {
    target: Option<T>,
    page_size: u64,
    state: State<T::Committed>,
    /// The pagemap ADD/HOLE/ADD_F go to, and the end of its last entry.
    current: Option<(PagemapId, u64)>,
    opened: std::collections::HashSet<PagemapId>,
    /// Page-data bytes the last entry still owes.
    data_owed: u64,
    stats: SessionStats,
}

impl PageServerSession<SessionDirWriter> {
    /// Starts the next numbered session of `dirs` (see [`SessionDirs::begin`]).
    pub fn begin(dirs: &SessionDirs) -> Result<Self, SessionError> {
        let dir = dirs.begin().map_err(SessionError::Begin)?;
        let page_size = dir.page_size();
        Ok(Self::new(dir, page_size))
    }
}

impl<T: SessionTarget> PageServerSession<T> {
    /// A session writing to `target`, for pages of `page_size` bytes.
    pub fn new(target: T, page_size: u64) -> Self {
        Self {
            target: Some(target),
            page_size,
            state: State::Receiving,
            current: None,
            opened: Default::default(),
            data_owed: 0,
            stats: SessionStats::default(),
        }
    }

    /// What was received so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// The target, while the session is receiving.
    pub fn target(&self) -> Option<&T> {
        self.target.as_ref()
    }

    /// What the commit yielded, once CLOSE was handled.
    pub fn committed(&self) -> Option<&T::Committed> {
        match &self.state {
            State::Committed(c) => Some(c),
            _ => None,
        }
    }

    /// Takes what the commit yielded (once; later calls and uncommitted sessions give `None`).
    pub fn take_committed(&mut self) -> Option<T::Committed> {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Committed(c) => Some(c),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Whether the session failed (and its target was dropped).
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Handles one input; appends the reply it owes (if any) to `reply`. On error the session is
    /// failed and its target dropped, and nothing is appended.
    pub fn handle(&mut self, input: ServerInput, reply: &mut Vec<u8>) -> Result<(), SessionError> {
        match self.state {
            State::Receiving => {}
            State::Committed(_) => return Err(SessionError::Finished("committed")),
            State::Failed => return Err(SessionError::Finished("failed")),
        }
        let result = match input {
            ServerInput::Command(command) => self.command(command, reply),
            ServerInput::PageData(data) => self.page_data(data),
        };
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Call at the end of the client's stream: an error (and the session fails) unless CLOSE
    /// was handled.
    pub fn end_of_stream(&mut self) -> Result<(), SessionError> {
        match self.state {
            State::Committed(_) => Ok(()),
            State::Failed => Err(SessionError::Finished("failed")),
            State::Receiving => {
                self.fail();
                Err(SessionError::EofBeforeClose { commands: self.stats.commands, data_bytes: self.stats.data_bytes })
            }
        }
    }

    /// Fails the session (e.g. on a decoder or socket error): the target is dropped, so nothing
    /// of the session is kept. Does nothing once committed.
    pub fn fail(&mut self) {
        if !matches!(self.state, State::Committed(_)) {
            self.target = None;
            self.state = State::Failed;
        }
    }

    fn target_mut(&mut self) -> Result<&mut T, SessionError> {
        self.target.as_mut().ok_or(SessionError::Finished("failed"))
    }

    fn command(&mut self, command: PsCommand, reply: &mut Vec<u8>) -> Result<(), SessionError> {
        if self.data_owed != 0 {
            return Err(SessionError::DataMissing { command: command.name(), owed: self.data_owed });
        }
        self.stats.commands += 1;
        let page_size = self.page_size;
        // The layout only shapes GET replies, which this session never sends.
        let mut answer = |r: Reply| encode_reply(&r, HeaderLayout::Legacy24, page_size, reply);
        match command {
            PsCommand::Open { dst } => self.open(pagemap_id(dst)),
            PsCommand::Open2 { dst } => {
                let id = pagemap_id(dst);
                self.open(id)?;
                let has_parent = self.has_parent(id)?;
                Ok(answer(Reply::Open2 { has_parent })?)
            }
            PsCommand::Parent { dst } => {
                let has_parent = self.has_parent(pagemap_id(dst))?;
                Ok(answer(Reply::Parent { has_parent })?)
            }
            PsCommand::Add { dst, vaddr, nr_pages } => self.entry("ADD", dst, vaddr, nr_pages, PageFlags::PRESENT),
            PsCommand::Hole { dst, vaddr, nr_pages } => self.entry("HOLE", dst, vaddr, nr_pages, PageFlags::PARENT),
            PsCommand::AddF { dst, vaddr, nr_pages, flags } => self.entry("ADD_F", dst, vaddr, nr_pages, flags),
            PsCommand::Get { pid, vaddr, nr_pages } => Err(SessionError::LazyGetUnsupported { pid, vaddr, nr_pages }),
            PsCommand::Close | PsCommand::ForceClose => {
                let target = self.target.take().ok_or(SessionError::Finished("failed"))?;
                let committed =
                    target.commit().map_err(|source| SessionError::Target { context: "commit".into(), source })?;
                self.state = State::Committed(committed);
                answer(Reply::Close { status: 0 })?;
                Ok(())
            }
        }
    }

    fn has_parent(&mut self, id: PagemapId) -> Result<bool, SessionError> {
        let has = self
            .target_mut()?
            .has_parent(id)
            .map_err(|source| SessionError::Target { context: format!("parent lookup for {id}"), source })?;
        if has {
            self.stats.has_parent_true += 1;
        } else {
            self.stats.has_parent_false += 1;
        }
        Ok(has)
    }

    fn open(&mut self, id: PagemapId) -> Result<(), SessionError> {
        if !self.opened.insert(id) {
            return Err(SessionError::ReopenedPagemap { id });
        }
        self.target_mut()?
            .open_pagemap(id)
            .map_err(|source| SessionError::Target { context: format!("opening {id}"), source })?;
        self.current = Some((id, 0));
        self.stats.pagemaps += 1;
        Ok(())
    }

    fn entry(
        &mut self,
        command: &'static str,
        dst: DstId,
        vaddr: u64,
        nr_pages: u64,
        flags: PageFlags,
    ) -> Result<(), SessionError> {
        let id = pagemap_id(dst);
        if self.current.map(|(cur, _)| cur) != Some(id) {
            tracing::debug!(%id, command, "implicit open of a pagemap (\"Deprecated IO w/o open\")");
            self.open(id)?;
        }
        let prev_end = self.current.map_or(0, |(_, end)| end);
        if flags.bits() == 0 {
            return Err(SessionError::NoFlags { command, id, vaddr });
        }
        if flags.unknown_bits() != 0 {
            return Err(SessionError::UnknownFlags { command, id, vaddr, flags: flags.bits() });
        }
        if nr_pages == 0 {
            return Err(SessionError::EmptyEntry { command, id, vaddr });
        }
        if vaddr % self.page_size != 0 {
            return Err(SessionError::Unaligned { command, id, vaddr });
        }
        if vaddr < prev_end {
            return Err(SessionError::Unsorted { command, id, vaddr, prev_end });
        }
        // The decoder checked that the range fits in u64; check again rather than trust it.
        let len = nr_pages.checked_mul(self.page_size).ok_or(ProtocolError::PagesOverflow {
            command,
            nr_pages,
            page_size: self.page_size,
        })?;
        let end = vaddr.checked_add(len).ok_or(ProtocolError::RangeWraps {
            command,
            vaddr,
            nr_pages,
            page_size: self.page_size,
        })?;
        if flags.is_parent() {
            if !self
                .target_mut()?
                .has_parent(id)
                .map_err(|source| SessionError::Target { context: format!("parent lookup for {id}"), source })?
            {
                return Err(SessionError::NoParent { id, vaddr, nr_pages });
            }
            let missing = self
                .target_mut()?
                .first_missing_in_parent(id, vaddr, nr_pages)
                .map_err(|source| SessionError::Target { context: format!("parent coverage of {id}"), source })?;
            if let Some(missing) = missing {
                return Err(SessionError::MissingInParent { id, vaddr, nr_pages, missing });
            }
        }
        let entry = PagemapEntry { vaddr, nr_pages, flags };
        self.target_mut()?.push_entry(id, entry).map_err(|source| SessionError::Target {
            context: format!("{command} {vaddr:#x} x {nr_pages} ({flags}) for {id}"),
            source,
        })?;
        self.current = Some((id, end));
        self.data_owed = if flags.is_present() { len } else { 0 };
        self.stats.entries += 1;
        if flags.is_present() {
            self.stats.present_pages += nr_pages;
        } else if flags.is_lazy() {
            self.stats.lazy_pages += nr_pages;
        }
        if flags.is_parent() {
            self.stats.parent_pages += nr_pages;
        }
        Ok(())
    }

    fn page_data(&mut self, data: Bytes) -> Result<(), SessionError> {
        let bytes = data.len() as u64;
        let Some((id, _)) = self.current.filter(|_| bytes <= self.data_owed) else {
            return Err(SessionError::UnexpectedPageData { bytes, owed: self.data_owed });
        };
        self.target_mut()?
            .write_data(id, data)
            .map_err(|source| SessionError::Target { context: format!("writing page data of {id}"), source })?;
        self.data_owed -= bytes;
        self.stats.data_bytes += bytes;
        Ok(())
    }
}

/// The pagemap image a `dst_id` names.
pub fn pagemap_id(dst: DstId) -> PagemapId {
    match dst.kind {
        PagemapKind::Task => PagemapId::Task(dst.id),
        PagemapKind::Shmem => PagemapId::Shmem(dst.id),
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
