//! [`LockedTempDir`]: the hidden temporary directory an image is written in, next to its
//! destination, named `.<destination>.tmp-<pid>-<seq>`. Its writer holds an exclusive `flock`
//! on it for its whole life, so a temporary directory that anyone can lock belongs to a writer
//! that is gone (killed before it could remove it): creating a new one for the same destination
//! removes those first. A live writer's, in this or another PID namespace, is never touched.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

/// Attempts at a fresh name before giving up (a name is only lost to a racing cleaner).
const ATTEMPTS: usize = 16;

/// A locked temporary directory; see the module documentation.
pub struct LockedTempDir {
    path: PathBuf,
    _lock: Flock<File>,
}

impl LockedTempDir {
    /// Removes stale temporary directories of `final_path`, then creates and locks a new one.
    pub fn create(final_path: &Path, name: &str) -> std::io::Result<LockedTempDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        remove_stale(final_path, name);
        for _ in 0..ATTEMPTS {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = final_path.with_file_name(format!(".{name}.tmp-{}-{seq}", std::process::id()));
            fs::create_dir(&path)?;
            // Another writer's cleaning may take it between the two steps: then try a new name.
            let Ok(dir) = File::open(&path) else { continue };
            let Ok(lock) = Flock::lock(dir, FlockArg::LockExclusiveNonblock) else { continue };
            if same_inode(&lock, &path) {
                return Ok(LockedTempDir { path, _lock: lock });
            }
        }
        Err(std::io::Error::other(format!(
            "no temporary directory next to {} after {ATTEMPTS} tries",
            final_path.display()
        )))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether `path` still names the directory `file` is open on.
fn same_inode(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the temporary directories of `final_path` that nobody holds locked.
fn remove_stale(final_path: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let parent = match final_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            continue;
        }
        let path = entry.path();
        let Ok(dir) = File::open(&path) else { continue };
        if let Ok(lock) = Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            tracing::info!(path = %path.display(), "removing the temporary image directory of a writer that is gone");
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a stale temporary image directory");
            }
            drop(lock);
        }
    }
}
