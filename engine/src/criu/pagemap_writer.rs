//! [`PagemapWriter`]: one pagemap of an image directory being written and its pages file, entry
//! by entry, the data in order or (once laid out as holes) at any offset, buffered or around the
//! page cache. [`ImageDirWriter`](super::ImageDirWriter) opens them and finishes them on commit.

use std::fs::File;
use std::io::{BufWriter, IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::{ImageError, ImageErrorKind};
use super::flags::PageFlags;
use super::magic::PagemapId;
use super::pagemap::{check_entry, Pagemap, PagemapEntry};
use super::writer::write_synced;
use crate::page::PageRun;
use crate::sys::direct_io::{refused, set_direct, write_all_vectored_at, DIRECT_MIN_BYTES};

/// Writes one pagemap and its pages file, entry by entry; data may arrive in chunks.
pub struct PagemapWriter {
    id: PagemapId,
    page_size: u64,
    pagemap: Pagemap,
    pages_path: PathBuf,
    pages: BufWriter<File>,
    prev_end: u64,
    /// Bytes of data still owed to the last present entry.
    owed: u64,
    /// Whether the file ends in a hole (its length must then be set explicitly).
    hole_at_end: bool,
    /// Bytes of the pages file laid out (data written and holes).
    laid_out: u64,
    /// Whether [`write_data_at`](Self::write_data_at) may write `O_DIRECT`.
    direct_allowed: bool,
    /// Whether the pages file is `O_DIRECT` now.
    fd_direct: bool,
}

impl PagemapWriter {
    /// A writer of pagemap `id` whose pages file (`pages_id`) is the new, empty `file` at
    /// `pages_path`.
    pub(super) fn new(id: PagemapId, page_size: u64, pages_id: u32, pages_path: PathBuf, file: File) -> PagemapWriter {
        PagemapWriter {
            id,
            page_size,
            pagemap: Pagemap { pages_id, entries: Vec::new() },
            pages_path,
            pages: BufWriter::with_capacity(1 << 20, file),
            prev_end: 0,
            laid_out: 0,
            owed: 0,
            hole_at_end: false,
            direct_allowed: false,
            fd_direct: false,
        }
    }

    /// Which pagemap this writes.
    pub fn id(&self) -> PagemapId {
        self.id
    }

    /// The pages id in the pagemap head.
    pub fn pages_id(&self) -> u32 {
        self.pagemap.pages_id
    }

    /// The entries written so far.
    pub fn entries(&self) -> &[PagemapEntry] {
        &self.pagemap.entries
    }

    /// Appends an entry. If it is `PE_PRESENT`, its `nr_pages * page_size` bytes of data must
    /// follow through [`write_data`](Self::write_data) before the next entry.
    pub fn push_entry(&mut self, entry: PagemapEntry) -> Result<(), ImageError> {
        let path = self.pages_path.with_file_name(self.id.file_name());
        if self.owed != 0 {
            let msg = format!(
                "entry {:#x} started with {} bytes of data still owed to the previous one",
                entry.vaddr, self.owed
            );
            return Err(ImageError::file(path, ImageErrorKind::Invalid(msg)));
        }
        check_entry(&entry, self.prev_end, self.page_size).map_err(|k| ImageError::file(path, k))?;
        self.prev_end = entry.vaddr + entry.nr_pages * self.page_size;
        self.owed = entry.data_len(self.page_size);
        self.pagemap.entries.push(entry);
        Ok(())
    }

    /// Writes (part of) the data of the current present entry.
    pub fn write_data(&mut self, data: &[u8]) -> Result<(), ImageError> {
        if data.len() as u64 > self.owed {
            let msg = format!("{} bytes of page data but only {} owed", data.len(), self.owed);
            return Err(ImageError::file(&self.pages_path, ImageErrorKind::Invalid(msg)));
        }
        self.pages.write_all(data).map_err(|e| ImageError::io(&self.pages_path, e))?;
        self.owed -= data.len() as u64;
        self.laid_out += data.len() as u64;
        self.hole_at_end &= data.is_empty();
        Ok(())
    }

    /// Writes `len` zero bytes of the current present entry's data as a hole (the pages file is
    /// sparse there; CRIU reads holes as zeros).
    pub fn write_zeros(&mut self, len: u64) -> Result<(), ImageError> {
        if len > self.owed {
            let msg = format!("{len} zero bytes of page data but only {} owed", self.owed);
            return Err(ImageError::file(&self.pages_path, ImageErrorKind::Invalid(msg)));
        }
        let off = i64::try_from(len)
            .map_err(|_| ImageError::file(&self.pages_path, ImageErrorKind::Invalid("hole too large".into())))?;
        self.pages.seek(SeekFrom::Current(off)).map_err(|e| ImageError::io(&self.pages_path, e))?;
        self.owed -= len;
        self.laid_out += len;
        self.hole_at_end = true;
        Ok(())
    }

    /// Bytes of the pages file laid out so far (data written and holes).
    pub fn laid_out(&self) -> u64 {
        self.laid_out
    }

    /// Writes `data` at byte `offset` of the pages file, inside what is already laid out (for
    /// example as holes by [`write_zeros`](Self::write_zeros)): fills page data in any order.
    pub fn write_data_at(&mut self, data: &[u8], offset: u64) -> Result<(), ImageError> {
        self.write_data_vectored_at(&[IoSlice::new(data)], offset)
    }

    /// [`write_data_at`](Self::write_data_at) of `pieces`, one after the other, in one call.
    pub fn write_data_vectored_at(&mut self, pieces: &[IoSlice<'_>], offset: u64) -> Result<(), ImageError> {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let end = self.laid_out;
        if offset.checked_add(len as u64).is_none_or(|e| e > end) {
            let msg = format!("{len} bytes at {offset} lie beyond the {end} bytes laid out");
            return Err(ImageError::file(&self.pages_path, ImageErrorKind::Invalid(msg)));
        }
        if !self.pages.buffer().is_empty() {
            self.pages.flush().map_err(|e| ImageError::io(&self.pages_path, e))?;
        }
        let file = self.pages.get_ref();
        let direct = self.direct_allowed && len >= DIRECT_MIN_BYTES;
        if direct != self.fd_direct {
            if set_direct(file, direct) {
                self.fd_direct = direct;
            } else {
                self.direct_allowed = false;
            }
        }
        match write_all_vectored_at(file, pieces, offset) {
            // Refused direct: all of it again, buffered (rewriting a part already written is harmless).
            Err(e) if self.fd_direct && refused(&e) => {
                self.direct_allowed = false;
                self.fd_direct = !set_direct(file, false);
                write_all_vectored_at(file, pieces, offset)
            }
            other => other,
        }
        .map_err(|e| ImageError::io(&self.pages_path, e))
    }

    /// Lets [`write_data_at`](Self::write_data_at) write pieces of at least
    /// [`DIRECT_MIN_BYTES`] around the page cache (`O_DIRECT`: `data` and `offset` page-aligned),
    /// or makes every write go through it again. Short writes stay buffered: a direct one waits
    /// for the disk. A file system that refuses gets buffered writes; so does a write it finds
    /// misaligned, from then on.
    pub fn set_direct_data(&mut self, on: bool) -> Result<(), ImageError> {
        self.pages.flush().map_err(|e| ImageError::io(&self.pages_path, e))?;
        self.direct_allowed = on;
        if !on && self.fd_direct {
            self.fd_direct = !set_direct(self.pages.get_ref(), false);
        }
        Ok(())
    }

    /// Makes the page data written so far durable (`fdatasync`), e.g. to pace a long write.
    pub fn sync_data(&mut self) -> Result<(), ImageError> {
        self.pages.flush().map_err(|e| ImageError::io(&self.pages_path, e))?;
        self.pages.get_ref().sync_data().map_err(|e| ImageError::io(&self.pages_path, e))
    }

    /// Appends a `PE_PRESENT` entry (plus `extra` flags such as `PE_LAZY`) with all its data.
    pub fn push_present(&mut self, vaddr: u64, data: &[u8], extra: PageFlags) -> Result<(), ImageError> {
        let nr_pages = data.len() as u64 / self.page_size;
        if data.len() as u64 % self.page_size != 0 {
            let msg = format!("{} bytes of data at {vaddr:#x} is not a whole number of pages", data.len());
            return Err(ImageError::file(&self.pages_path, ImageErrorKind::Invalid(msg)));
        }
        self.push_entry(PagemapEntry { vaddr, nr_pages, flags: PageFlags::PRESENT | extra })?;
        self.write_data(data)
    }

    /// Appends an entry without data (`PE_PARENT`, `PE_LAZY`).
    pub fn push_hole(&mut self, run: PageRun, flags: PageFlags) -> Result<(), ImageError> {
        if flags.is_present() {
            let msg = format!("hole at {:#x} cannot be PE_PRESENT", run.vaddr);
            return Err(ImageError::file(&self.pages_path, ImageErrorKind::Invalid(msg)));
        }
        self.push_entry(PagemapEntry::new(run, flags))
    }

    pub(super) fn finish(mut self, dir: &Path) -> Result<(), ImageError> {
        if self.owed != 0 {
            let msg = format!("closed with {} bytes of page data missing", self.owed);
            return Err(ImageError::file(&self.pages_path, ImageErrorKind::Invalid(msg)));
        }
        self.pages.flush().map_err(|e| ImageError::io(&self.pages_path, e))?;
        if self.hole_at_end {
            self.pages.get_ref().set_len(self.laid_out).map_err(|e| ImageError::io(&self.pages_path, e))?;
        }
        self.pages.get_ref().sync_all().map_err(|e| ImageError::io(&self.pages_path, e))?;
        write_synced(&dir.join(self.id.file_name()), &self.pagemap.encode())
    }
}
