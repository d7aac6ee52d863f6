//! [`SnapshotOwner`]: who owns the hidden snapshot directories next to a destination, so that
//! those of a receiver killed before it could clean up are found and removed, and those of a
//! live one (in this or another PID namespace, sharing the directory) never are.
//!
//! Each owner holds an exclusive `flock` on `.pagestream-snapshot-<tag>.lock` for its lifetime
//! and names its directories `.pagestream-snapshot-<tag>-<seq>` (the image writer's temporary
//! ones add a leading dot and a suffix). A lock file anyone can lock belongs to nobody: its
//! directories are stale; so are directories whose tag has no lock file at all.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

/// What every snapshot file name starts with (after its dots).
const PREFIX: &str = "pagestream-snapshot-";
const LOCK_SUFFIX: &str = ".lock";

/// The owner of one store's snapshot directories; see the module documentation.
pub(crate) struct SnapshotOwner {
    dir: PathBuf,
    tag: String,
    lock_path: PathBuf,
    _lock: Flock<File>,
}

impl SnapshotOwner {
    /// Removes stale snapshot directories in `dir`, then takes a fresh tag there.
    pub(crate) fn new(dir: &Path) -> std::io::Result<Self> {
        remove_stale(dir);
        static N: AtomicU64 = AtomicU64::new(0);
        loop {
            let tag = format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
            let lock_path = dir.join(format!(".{PREFIX}{tag}{LOCK_SUFFIX}"));
            let file = match File::options().write(true).create_new(true).open(&lock_path) {
                Ok(file) => file,
                // A reused pid's leftover that is still locked by someone: take the next tag.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| std::io::Error::from(e))?;
            return Ok(Self { dir: dir.to_path_buf(), tag, lock_path, _lock: lock });
        }
    }

    /// The path of this owner's snapshot number `seq`.
    pub(crate) fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!(".{PREFIX}{}-{seq}", self.tag))
    }
}

impl Drop for SnapshotOwner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// The owner tag (`<pid>-<n>`) in a snapshot file name, and whether it is a lock file.
fn tag_of(name: &str) -> Option<(&str, bool)> {
    let rest = name.trim_start_matches('.').strip_prefix(PREFIX)?;
    if let Some(tag) = rest.strip_suffix(LOCK_SUFFIX) {
        return Some((tag, true));
    }
    // `<pid>-<n>-<seq>[.tmp-...]`: the tag is the first two fields.
    let mut fields = rest.splitn(3, '-');
    let (pid, n) = (fields.next()?, fields.next()?);
    let tag = &rest[..pid.len() + 1 + n.len()];
    Some((tag, false))
}

/// Removes the snapshot directories in `dir` whose owner is gone.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let entries: Vec<(String, PathBuf)> =
        entries.flatten().filter_map(|e| Some((e.file_name().into_string().ok()?, e.path()))).collect();
    let mut live = HashSet::new();
    let mut gone = Vec::new();
    for (name, path) in &entries {
        let Some((tag, true)) = tag_of(name) else { continue };
        let Ok(file) = File::options().write(true).open(path) else { continue };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // Nobody holds it: its owner is gone (the lock is dropped with the file below).
            Ok(_) => gone.push((tag.to_string(), path.clone())),
            Err(_) => {
                live.insert(tag.to_string());
            }
        }
    }
    for (name, path) in &entries {
        match tag_of(name) {
            Some((tag, false)) if !live.contains(tag) => match std::fs::remove_dir_all(path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a snapshot left by a receiver that is gone"),
                Err(e) => tracing::warn!(path = %path.display(), "could not remove a stale snapshot: {e}"),
            },
            _ => {}
        }
    }
    for (_, lock) in gone {
        let _ = std::fs::remove_file(lock);
    }
}

#[cfg(test)]
mod tests {
    use super::tag_of;

    #[test]
    fn tags_of_names() {
        assert_eq!(tag_of(".pagestream-snapshot-12-0.lock"), Some(("12-0", true)));
        assert_eq!(tag_of(".pagestream-snapshot-12-0-3"), Some(("12-0", false)));
        assert_eq!(tag_of("..pagestream-snapshot-12-0-3.tmp-12-9"), Some(("12-0", false)));
        assert_eq!(tag_of(".pagestream-snapshot-12"), None);
        assert_eq!(tag_of("pagemap-1.img"), None);
    }
}
