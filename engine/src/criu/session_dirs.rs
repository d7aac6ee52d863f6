//! [`SessionDirs`]: numbered image directories under one root, one per page-server session, chained
//! into a pre-dump chain.
//!
//! Session `k` (1, 2, …: one more than the largest numeric subdirectory present) is written to
//! `ROOT/k` through an [`ImageDirWriter`], with `parent -> ../k-1` when session `k-1` exists, so
//! that `PE_PARENT` entries of a `criu pre-dump`/`criu dump --prev-images-dir` round resolve to the
//! previous round. After the directory is committed, `ROOT/last -> k` is replaced atomically (a
//! symlink under a temporary name renamed over it) and the root is fsynced. Failed sessions leave
//! nothing behind: the writer removes its temporary directory, and neither the numbering nor
//! `last` moves.
//!
//! Only complete sessions ever appear as `ROOT/k`, so the previous session is always the largest
//! number present. Whether the client may use the parent at all is decided per pagemap: the page
//! server answers `has_parent` true only when the parent directory holds that pagemap.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{ImageError, ImageErrorKind};
use super::image_dir::ImageDir;
use super::magic::PAGE_SERVER_PAGES_ID_BASE;
use super::writer::ImageDirWriter;

/// The name of the link to the newest complete session.
pub const LAST_LINK: &str = "last";

/// The numbered session directories under one root.
#[derive(Debug, Clone)]
pub struct SessionDirs {
    root: PathBuf,
    page_size: u64,
}

impl SessionDirs {
    /// Uses `root` (created, with its parents, if missing) for sessions with pages of `page_size`
    /// bytes.
    pub fn open(root: &Path, page_size: u64) -> Result<SessionDirs, ImageError> {
        fs::create_dir_all(root).map_err(|e| ImageError::io(root, e))?;
        let md = fs::metadata(root).map_err(|e| ImageError::io(root, e))?;
        if !md.is_dir() {
            return Err(ImageError::file(root, ImageErrorKind::Invalid("images root is not a directory".into())));
        }
        Ok(SessionDirs { root: root.to_path_buf(), page_size })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The page size sessions are written with.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The path of session `number`.
    pub fn session_path(&self, number: u64) -> PathBuf {
        self.root.join(number.to_string())
    }

    /// The numbers of the complete sessions present, ascending. Only entries named by a number in
    /// canonical form (`1`, not `01`) that are directories count.
    pub fn sessions(&self) -> Result<Vec<u64>, ImageError> {
        let mut numbers = Vec::new();
        for dent in fs::read_dir(&self.root).map_err(|e| ImageError::io(&self.root, e))? {
            let dent = dent.map_err(|e| ImageError::io(&self.root, e))?;
            let Some(number) = dent.file_name().to_str().and_then(parse_session_name) else { continue };
            if dent.file_type().map_err(|e| ImageError::io(dent.path(), e))?.is_dir() {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The number the next session gets: one more than the largest present (1 when none is).
    pub fn next_number(&self) -> Result<u64, ImageError> {
        let largest = self.sessions()?.last().copied().unwrap_or(0);
        largest
            .checked_add(1)
            .ok_or_else(|| ImageError::file(&self.root, ImageErrorKind::Invalid("session numbers exhausted".into())))
    }

    /// The session `ROOT/last` points to, if the link exists and names a session.
    pub fn last(&self) -> Result<Option<u64>, ImageError> {
        let link = self.root.join(LAST_LINK);
        match fs::read_link(&link) {
            Ok(target) => Ok(target.to_str().and_then(parse_session_name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(&link, e)),
        }
    }

    /// Starts the next session: a writer for `ROOT/k` (pages ids from
    /// [`PAGE_SERVER_PAGES_ID_BASE`], as `criu page-server` uses) with `parent -> ../k-1` when
    /// session `k-1` exists, whose memory images are opened (and fully validated) as the parent.
    pub fn begin(&self) -> Result<SessionDirWriter, ImageError> {
        let number = self.next_number()?;
        let path = self.session_path(number);
        let mut writer = ImageDirWriter::create(&path, self.page_size, PAGE_SERVER_PAGES_ID_BASE)?;
        let parent = match number.checked_sub(1).filter(|&p| p > 0) {
            Some(prev) if self.session_path(prev).is_dir() => {
                let parent = ImageDir::open(&self.session_path(prev), self.page_size)?;
                writer.set_parent(&Path::new("..").join(prev.to_string()))?;
                Some(parent)
            }
            _ => None,
        };
        Ok(SessionDirWriter { root: self.root.clone(), number, page_size: self.page_size, writer, parent })
    }
}

/// A session being written: its [`ImageDirWriter`] and the previous session's images. Dropped
/// without [`commit`](Self::commit), it removes everything it wrote.
pub struct SessionDirWriter {
    root: PathBuf,
    number: u64,
    page_size: u64,
    writer: ImageDirWriter,
    parent: Option<ImageDir>,
}

/// A session committed by [`SessionDirWriter::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedSession {
    /// Its number `k`.
    pub number: u64,
    /// `ROOT/k`.
    pub path: PathBuf,
}

impl SessionDirWriter {
    /// The session's number `k`.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The page size of the session.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The image directory being written.
    pub fn writer(&mut self) -> &mut ImageDirWriter {
        &mut self.writer
    }

    /// The previous session's memory images (the `parent` this session links to), if any.
    pub fn parent(&self) -> Option<&ImageDir> {
        self.parent.as_ref()
    }

    /// Commits the directory durably as `ROOT/k`, then points `ROOT/last` at it (atomically:
    /// symlink to a temporary name, rename, fsync of the root).
    pub fn commit(self) -> Result<CommittedSession, ImageError> {
        let path = self.writer.commit()?;
        replace_last_link(&self.root, self.number).map_err(|e| {
            let msg = format!("{} is committed, but `{LAST_LINK}` could not be pointed at it: {e}", path.display());
            ImageError::file(&self.root, ImageErrorKind::Invalid(msg))
        })?;
        Ok(CommittedSession { number: self.number, path })
    }
}

/// `name` as a session number if it is one in canonical decimal form.
fn parse_session_name(name: &str) -> Option<u64> {
    let number: u64 = name.parse().ok()?;
    (number > 0 && number.to_string() == name).then_some(number)
}

fn replace_last_link(root: &Path, number: u64) -> Result<(), ImageError> {
    let tmp = root.join(format!(".{LAST_LINK}.tmp-{}", std::process::id()));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io(&tmp, e)),
    }
    std::os::unix::fs::symlink(number.to_string(), &tmp).map_err(|e| ImageError::io(&tmp, e))?;
    let link = root.join(LAST_LINK);
    if let Err(e) = fs::rename(&tmp, &link) {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::io(&link, e));
    }
    fs::File::open(root).and_then(|d| d.sync_all()).map_err(|e| ImageError::io(root, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::{ImageChain, PageFlags, PageLookup, PagemapId};
    use crate::page::PageRun;

    const PS: u64 = 4096;
    const PID: PagemapId = PagemapId::Task(42);

    fn names(root: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(root).unwrap().map(|d| d.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn numbers_sessions_links_parents_and_moves_last() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = SessionDirs::open(&tmp.path().join("images"), PS).unwrap();
        assert_eq!(dirs.next_number().unwrap(), 1);
        assert_eq!(dirs.last().unwrap(), None);

        let mut s1 = dirs.begin().unwrap();
        assert_eq!(s1.number(), 1);
        assert!(s1.parent().is_none());
        s1.writer()
            .open_pagemap(PID)
            .unwrap()
            .push_present(0x10000, &[1u8; 2 * PS as usize], PageFlags::default())
            .unwrap();
        let c1 = s1.commit().unwrap();
        assert_eq!(c1, CommittedSession { number: 1, path: dirs.root().join("1") });
        assert_eq!(dirs.last().unwrap(), Some(1));
        assert!(fs::symlink_metadata(c1.path.join("parent")).is_err(), "session 1 has no parent");

        let mut s2 = dirs.begin().unwrap();
        assert_eq!(s2.number(), 2);
        assert!(s2.parent().is_some_and(|p| p.pagemap(PID).is_some()));
        let pm = s2.writer().open_pagemap(PID).unwrap();
        pm.push_hole(PageRun::new(0x10000, 1), PageFlags::PARENT).unwrap();
        pm.push_present(0x11000, &[2u8; PS as usize], PageFlags::default()).unwrap();
        let c2 = s2.commit().unwrap();
        assert_eq!(fs::read_link(c2.path.join("parent")).unwrap(), Path::new("../1"));
        assert_eq!(fs::read_link(dirs.root().join(LAST_LINK)).unwrap(), Path::new("2"));
        assert_eq!(dirs.sessions().unwrap(), [1, 2]);
        assert_eq!(names(dirs.root()), ["1", "2", "last"], "no temporary names left");

        let chain = ImageChain::open(&dirs.root().join(LAST_LINK), None, PS).unwrap();
        chain.verify().unwrap();
        assert_eq!(chain.levels().len(), 2);
        assert_eq!(chain.page_at(PID, 0x10000).unwrap(), PageLookup::Data(vec![1u8; PS as usize]));
        assert_eq!(chain.page_at(PID, 0x11000).unwrap(), PageLookup::Data(vec![2u8; PS as usize]));
    }

    #[test]
    fn a_dropped_session_leaves_nothing_and_keeps_numbering_and_last() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = SessionDirs::open(tmp.path(), PS).unwrap();
        dirs.begin().unwrap().commit().unwrap();
        let mut failed = dirs.begin().unwrap();
        failed.writer().open_pagemap(PID).unwrap().push_present(0, &[3u8; PS as usize], PageFlags::default()).unwrap();
        drop(failed);
        assert_eq!(names(tmp.path()), ["1", "last"]);
        assert_eq!(dirs.last().unwrap(), Some(1));
        assert_eq!(dirs.next_number().unwrap(), 2);
    }

    #[test]
    fn scanning_ignores_what_is_not_a_session() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["3", "07", "x", ".4.tmp-1-0", "0"] {
            fs::create_dir(tmp.path().join(d)).unwrap();
        }
        fs::write(tmp.path().join("9"), b"a file, not a session").unwrap();
        std::os::unix::fs::symlink("3", tmp.path().join(LAST_LINK)).unwrap();
        let dirs = SessionDirs::open(tmp.path(), PS).unwrap();
        assert_eq!(dirs.sessions().unwrap(), [3]);
        assert_eq!(dirs.next_number().unwrap(), 4);
        assert_eq!(dirs.last().unwrap(), Some(3));
        let s4 = dirs.begin().unwrap();
        assert!(s4.parent().is_some(), "session 3 exists, so 4 links to it");
        let c4 = s4.commit().unwrap();
        assert_eq!(fs::read_link(c4.path.join("parent")).unwrap(), Path::new("../3"));
        assert_eq!(dirs.last().unwrap(), Some(4));
    }

    #[test]
    fn a_gap_below_the_previous_session_does_not_matter() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = SessionDirs::open(tmp.path(), PS).unwrap();
        for _ in 0..3 {
            dirs.begin().unwrap().commit().unwrap();
        }
        fs::remove_dir_all(tmp.path().join("1")).unwrap();
        let s4 = dirs.begin().unwrap();
        assert_eq!(s4.number(), 4);
        assert!(s4.parent().is_some());
    }

    #[test]
    fn a_last_that_cannot_be_replaced_is_reported_with_the_committed_path() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join(LAST_LINK).join("x")).unwrap();
        let dirs = SessionDirs::open(tmp.path(), PS).unwrap();
        let err = dirs.begin().unwrap().commit().unwrap_err().to_string();
        assert!(err.contains("1 is committed, but `last` could not be pointed at it"), "{err}");
        assert_eq!(names(tmp.path()), ["1", "last"], "the temporary link is removed again");
    }

    #[test]
    fn refuses_a_root_that_is_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"").unwrap();
        let err = SessionDirs::open(&file, PS).unwrap_err();
        assert!(err.to_string().contains("f"), "{err}");
    }
}
