//! [`ImageDirWriter`]: writes an image directory atomically.
//!
//! Everything goes into a hidden temporary directory next to the destination; [`commit`] fsyncs
//! every file and the directory, renames it into place and fsyncs the containing directory. A
//! writer dropped without commit removes its temporary directory, so a failed or aborted
//! migration leaves nothing that looks like an image; one killed before it could is cleaned up
//! by the next writer of the same destination ([`LockedTempDir`](super::temp_dir::LockedTempDir)).
//!
//! [`commit`]: ImageDirWriter::commit

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::commit_marker::{CommitMarker, MARKER_NAME};
use super::error::{ImageError, ImageErrorKind};
use super::magic::{pages_file_name, PagemapId, PARENT_LINK};
pub use super::pagemap_writer::PagemapWriter;
use super::temp_dir::LockedTempDir;

/// Builds an image directory in a temporary location and moves it into place on commit.
pub struct ImageDirWriter {
    final_path: PathBuf,
    /// The temporary directory, locked until the writer is dropped (after commit the lock is on
    /// the committed directory).
    tmp: LockedTempDir,
    page_size: u64,
    next_pages_id: u32,
    pagemaps: BTreeMap<PagemapId, PagemapWriter>,
    committed: bool,
}

impl ImageDirWriter {
    /// Starts a directory that will become `final_path` (which must not exist yet). Pages files
    /// get ids from `pages_id_base` upwards (CRIU's page server uses
    /// [`PAGE_SERVER_PAGES_ID_BASE`](super::magic::PAGE_SERVER_PAGES_ID_BASE)).
    pub fn create(final_path: &Path, page_size: u64, pages_id_base: u32) -> Result<Self, ImageError> {
        let name = final_path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            ImageError::file(final_path, ImageErrorKind::Invalid("destination has no usable file name".into()))
        })?;
        if fs::symlink_metadata(final_path).is_ok() {
            return Err(ImageError::file(final_path, ImageErrorKind::Invalid("destination already exists".into())));
        }
        let tmp = LockedTempDir::create(final_path, name).map_err(|e| ImageError::io(final_path, e))?;
        Ok(Self {
            final_path: final_path.to_path_buf(),
            tmp,
            page_size,
            next_pages_id: pages_id_base,
            pagemaps: BTreeMap::new(),
            committed: false,
        })
    }

    /// The temporary directory being filled.
    pub fn tmp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// The path the directory will have after commit.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Starts the pagemap `id` with a fresh pages file. Each id may be opened once.
    pub fn open_pagemap(&mut self, id: PagemapId) -> Result<&mut PagemapWriter, ImageError> {
        if self.pagemaps.contains_key(&id) {
            return Err(ImageError::file(
                self.tmp.path().join(id.file_name()),
                ImageErrorKind::Invalid("pagemap opened twice".into()),
            ));
        }
        let pages_id = self.next_pages_id;
        self.next_pages_id = pages_id
            .checked_add(1)
            .ok_or_else(|| ImageError::file(self.tmp.path(), ImageErrorKind::Invalid("pages ids exhausted".into())))?;
        let pages_path = self.tmp.path().join(pages_file_name(pages_id));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&pages_path)
            .map_err(|e| ImageError::io(&pages_path, e))?;
        let w = PagemapWriter::new(id, self.page_size, pages_id, pages_path, file);
        Ok(self.pagemaps.entry(id).or_insert(w))
    }

    /// Makes the page data of every pagemap written so far durable.
    pub fn sync_pages(&mut self) -> Result<(), ImageError> {
        self.pagemaps.values_mut().try_for_each(PagemapWriter::sync_data)
    }

    /// [`PagemapWriter::set_direct_data`] for every pagemap opened so far.
    pub fn set_direct_data(&mut self, on: bool) -> Result<(), ImageError> {
        self.pagemaps.values_mut().try_for_each(|p| p.set_direct_data(on))
    }

    /// The pagemap `id` if it was opened.
    pub fn pagemap(&mut self, id: PagemapId) -> Option<&mut PagemapWriter> {
        self.pagemaps.get_mut(&id)
    }

    /// Creates the `parent` link with `target` (relative to the directory, e.g. `../1`).
    pub fn set_parent(&mut self, target: &Path) -> Result<(), ImageError> {
        let link = self.tmp.path().join(PARENT_LINK);
        std::os::unix::fs::symlink(target, &link).map_err(|e| ImageError::io(&link, e))
    }

    /// Adds a file that is not page data (inventory, core, mm, ...).
    pub fn add_file(&mut self, name: &str, data: &[u8]) -> Result<(), ImageError> {
        let mut file = self.create_file(name)?;
        file.write(data)?;
        file.finish()
    }

    /// Starts a file that is not page data, to be written in pieces; refuses names that are not a
    /// plain file name or that belong to page data, the parent link or the commit marker.
    pub fn create_file(&mut self, name: &str) -> Result<ImageFileWriter, ImageError> {
        check_extra_file_name(name).map_err(|msg| ImageError::file(self.tmp.path(), ImageErrorKind::Invalid(msg)))?;
        let path = self.tmp.path().join(name);
        let file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| ImageError::io(&path, e))?;
        Ok(ImageFileWriter { path, file: BufWriter::with_capacity(256 << 10, file), written: 0 })
    }

    /// Writes the [`CommitMarker`] (call last, just before [`commit`](Self::commit)).
    pub fn mark_complete(&mut self, marker: &CommitMarker) -> Result<(), ImageError> {
        write_synced(&self.tmp.path().join(MARKER_NAME), &marker.to_bytes())
    }

    /// Finishes every pagemap, fsyncs, and renames the directory into place; returns its path.
    pub fn commit(mut self) -> Result<PathBuf, ImageError> {
        for (_, pm) in std::mem::take(&mut self.pagemaps) {
            pm.finish(self.tmp.path())?;
        }
        sync_dir(self.tmp.path())?;
        // rename(2) onto an existing non-empty directory fails, so a concurrent writer of the
        // same destination cannot be clobbered; an empty one would be replaced.
        if fs::symlink_metadata(&self.final_path).is_ok() {
            return Err(ImageError::file(
                &self.final_path,
                ImageErrorKind::Invalid("destination appeared while writing".into()),
            ));
        }
        fs::rename(self.tmp.path(), &self.final_path).map_err(|e| ImageError::io(&self.final_path, e))?;
        self.committed = true;
        if let Some(parent) = self.final_path.parent() {
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            sync_dir(parent)?;
        }
        Ok(self.final_path.clone())
    }
}

impl Drop for ImageDirWriter {
    fn drop(&mut self) {
        if !self.committed {
            self.pagemaps.clear();
            if let Err(e) = fs::remove_dir_all(self.tmp.path()) {
                tracing::warn!(path = %self.tmp.path().display(), error = %e, "could not remove uncommitted image directory");
            }
        }
    }
}

/// Why `name` may not be an image file added by [`ImageDirWriter::create_file`], if so.
pub fn check_extra_file_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+:@".contains(&b));
    let reserved = PagemapId::from_file_name(name).is_some()
        || (name.starts_with("pages-") && name.ends_with(".img"))
        || name == PARENT_LINK
        || name == MARKER_NAME;
    match (plain, reserved) {
        (true, false) => Ok(()),
        (false, _) => Err(format!("refusing file name {name:?}: not a plain image file name")),
        (true, true) => {
            Err(format!("refusing file name {name:?}: reserved for page data, the parent link or the marker"))
        }
    }
}

/// A file being added to an [`ImageDirWriter`]'s directory.
pub struct ImageFileWriter {
    path: PathBuf,
    file: BufWriter<File>,
    written: u64,
}

impl ImageFileWriter {
    /// Appends `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.file.write_all(data).map_err(|e| ImageError::io(&self.path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and fsyncs the file.
    pub fn finish(mut self) -> Result<(), ImageError> {
        self.file.flush().map_err(|e| ImageError::io(&self.path, e))?;
        self.file.get_ref().sync_all().map_err(|e| ImageError::io(&self.path, e))
    }
}

pub(super) fn write_synced(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| ImageError::io(path, e))?;
    f.write_all(data).map_err(|e| ImageError::io(path, e))?;
    f.sync_all().map_err(|e| ImageError::io(path, e))
}

fn sync_dir(path: &Path) -> Result<(), ImageError> {
    File::open(path).and_then(|d| d.sync_all()).map_err(|e| ImageError::io(path, e))
}
