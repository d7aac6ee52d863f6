//! [`PageStore`]: stages received pages in an unnamed temporary file next to the destination
//! (so memory stays flat however large the process is) with an index of where each page's
//! newest copy is, and writes the CRIU image directory on commit.
//!
//! Pages may arrive in any order across rounds (several streams): each carries its round, and
//! an older round never overwrites a newer one. A page re-sent in a later round overwrites its
//! slot in place, so the staging file never grows past the migrated memory. Zero pages take no
//! staging space and become holes in `pages-<id>.img` (CRIU reads holes as zeros).
//!
//! New pages are gathered in a reused, page-aligned buffer and written in large pieces; where the
//! file system allows it the staging file is opened `O_DIRECT`, so staged pages never take
//! fresh page-cache memory (on this kind of virtual machine first-touching memory costs about
//! 0.8 s per GiB, more than copying the pages). Reads see the pages still in the buffer.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::criu::{ImageDirWriter, ImageError, PageFlags, PagemapEntry, PagemapId};
use crate::PageRun;

/// Why storing or committing failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("staging file: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("run {run:?} carries {got} bytes, expected {want}")]
    BadLength { run: PageRun, got: usize, want: u64 },
    #[error("run {0:?} is not page aligned or wraps")]
    BadRun(PageRun),
}

/// Pages copied from staging to the image per read at commit.
const COPY_PAGES: usize = 256;

/// Bytes of new pages gathered before one write to the staging file.
const PENDING_BYTES: usize = 4 << 20;

/// Alignment of buffers and offsets for `O_DIRECT` I/O.
const DIRECT_ALIGN: usize = 4096;

/// A zeroed buffer of `len` bytes whose start is aligned to [`DIRECT_ALIGN`].
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let misalign = raw.as_ptr() as usize % DIRECT_ALIGN;
        let start = if misalign == 0 { 0 } else { DIRECT_ALIGN - misalign };
        Self { raw, start, len }
    }

    fn get(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Data(u64),
    Zero,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    round: u32,
    content: Content,
    /// Staging offset owned by this page, kept when it turns zero so it can be reused.
    offset: Option<u64>,
}

/// Pages received so far, staged on disk.
pub struct PageStore {
    page_size: u64,
    staging: File,
    /// Logical length of the staging file, pages still in `pending` included.
    staging_len: u64,
    /// Whether `staging` is open with `O_DIRECT` (aligned buffers, offsets and lengths only).
    direct: bool,
    /// New pages not yet written: they belong at `pending_from ..`.
    pending: AlignedBuf,
    pending_used: usize,
    pending_from: u64,
    /// One aligned page, to rewrite a staged page with `O_DIRECT`.
    one_page: AlignedBuf,
    index: BTreeMap<(PagemapId, u64), Slot>,
    per_round: HashMap<u32, u64>,
}

impl PageStore {
    /// A store whose staging file lives (unnamed, removed automatically) in `staging_dir`.
    pub fn new(staging_dir: &Path, page_size: u64) -> Result<Self, StoreError> {
        let staging = tempfile::tempfile_in(staging_dir)?;
        let ps = page_size as usize;
        let direct = ps >= DIRECT_ALIGN && ps % DIRECT_ALIGN == 0 && set_direct(&staging, true);
        let pending_pages = (PENDING_BYTES / ps.max(1)).max(1);
        Ok(Self {
            page_size,
            staging,
            staging_len: 0,
            direct,
            pending: AlignedBuf::new(pending_pages * ps),
            pending_used: 0,
            pending_from: 0,
            one_page: AlignedBuf::new(ps),
            index: BTreeMap::new(),
            per_round: HashMap::new(),
        })
    }

    /// Writes `data` at `off` of the staging file; if the file system refuses `O_DIRECT` I/O,
    /// falls back to buffered I/O for good.
    fn write_staging(staging: &File, direct: &mut bool, data: &[u8], off: u64) -> Result<(), StoreError> {
        match staging.write_all_at(data, off) {
            Err(e) if *direct && e.raw_os_error() == Some(libc::EINVAL) => {
                *direct = false;
                set_direct(staging, false);
                staging.write_all_at(data, off)?;
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// Writes the gathered new pages to the staging file.
    fn flush_pending(&mut self) -> Result<(), StoreError> {
        if self.pending_used > 0 {
            let data = &self.pending.get()[..self.pending_used];
            Self::write_staging(&self.staging, &mut self.direct, data, self.pending_from)?;
            self.pending_from += self.pending_used as u64;
            self.pending_used = 0;
        }
        Ok(())
    }

    /// Appends one new page; returns its staging offset.
    fn append_page(&mut self, page: &[u8]) -> Result<u64, StoreError> {
        if self.pending_used + page.len() > self.pending.len {
            self.flush_pending()?;
        }
        let off = self.pending_from + self.pending_used as u64;
        self.pending.get_mut()[self.pending_used..self.pending_used + page.len()].copy_from_slice(page);
        self.pending_used += page.len();
        self.staging_len += page.len() as u64;
        Ok(off)
    }

    /// Rewrites the staged page at `off`.
    fn rewrite_page(&mut self, page: &[u8], off: u64) -> Result<(), StoreError> {
        if off >= self.pending_from {
            let at = (off - self.pending_from) as usize;
            self.pending.get_mut()[at..at + page.len()].copy_from_slice(page);
            return Ok(());
        }
        if self.direct {
            self.one_page.get_mut().copy_from_slice(page);
            return Self::write_staging(&self.staging, &mut self.direct, self.one_page.get(), off);
        }
        Self::write_staging(&self.staging, &mut self.direct, page, off)
    }

    /// Reads staged bytes at `off` into `out` (`out` aligned and page-sized pieces when direct).
    fn read_staged(&self, out: &mut [u8], off: u64) -> Result<(), StoreError> {
        let end = off + out.len() as u64;
        let in_file = end.min(self.pending_from).saturating_sub(off) as usize;
        if in_file > 0 {
            self.staging.read_exact_at(&mut out[..in_file], off)?;
        }
        if in_file < out.len() {
            let from = (off + in_file as u64 - self.pending_from) as usize;
            let n = out.len() - in_file;
            out[in_file..].copy_from_slice(&self.pending.get()[from..from + n]);
        }
        Ok(())
    }

    fn check(&self, run: PageRun) -> Result<(), StoreError> {
        PageRun::checked(run.vaddr, run.nr_pages, self.page_size).map(|_| ()).ok_or(StoreError::BadRun(run))
    }

    /// Stores `run` of `id` from round `round` with its data.
    pub fn put_pages(&mut self, round: u32, id: PagemapId, run: PageRun, data: &[u8]) -> Result<(), StoreError> {
        self.check(run)?;
        let want = run.len_bytes(self.page_size);
        if data.len() as u64 != want {
            return Err(StoreError::BadLength { run, got: data.len(), want });
        }
        let ps = self.page_size as usize;
        // Pages seen before are rewritten in their slot; new pages get consecutive slots at the
        // end of the file, gathered in the pending buffer and written in large pieces.
        for (i, page) in data.chunks_exact(ps).enumerate() {
            let key = (id, run.vaddr + i as u64 * self.page_size);
            let old = self.index.get(&key).copied();
            if old.is_some_and(|s| s.round > round) {
                continue; // a newer round already delivered this page
            }
            let offset = match old.and_then(|s| s.offset) {
                Some(off) => {
                    self.rewrite_page(page, off)?;
                    off
                }
                None => self.append_page(page)?,
            };
            self.index.insert(key, Slot { round, content: Content::Data(offset), offset: Some(offset) });
        }
        *self.per_round.entry(round).or_default() += run.nr_pages;
        Ok(())
    }

    /// Stores `run` of `id` from round `round` as zero pages.
    pub fn put_zero(&mut self, round: u32, id: PagemapId, run: PageRun) -> Result<(), StoreError> {
        self.check(run)?;
        for i in 0..run.nr_pages {
            let key = (id, run.vaddr + i * self.page_size);
            let old = self.index.get(&key).copied();
            if old.is_some_and(|s| s.round > round) {
                continue;
            }
            self.index.insert(key, Slot { round, content: Content::Zero, offset: old.and_then(|s| s.offset) });
        }
        *self.per_round.entry(round).or_default() += run.nr_pages;
        Ok(())
    }

    /// Forgets `run` of `id` (the source unmapped it), unless a newer round re-sent it.
    pub fn discard(&mut self, round: u32, id: PagemapId, run: PageRun) -> Result<(), StoreError> {
        self.check(run)?;
        for i in 0..run.nr_pages {
            let key = (id, run.vaddr + i * self.page_size);
            if self.index.get(&key).is_some_and(|s| s.round <= round) {
                // The staging slot is simply abandoned; a later page of the same address gets a
                // new one.
                self.index.remove(&key);
            }
        }
        Ok(())
    }

    /// Pages (data and zero) received for `round`.
    pub fn pages_in_round(&self, round: u32) -> u64 {
        self.per_round.get(&round).copied().unwrap_or(0)
    }

    /// The page size of the store.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Distinct pages held.
    pub fn len_pages(&self) -> u64 {
        self.index.len() as u64
    }

    /// Bytes of staging file in use.
    pub fn staging_bytes(&self) -> u64 {
        self.staging_len
    }

    /// The newest content of one page: `Some(data)` (zeros for a zero page), `None` if absent.
    pub fn page(&self, id: PagemapId, vaddr: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self.index.get(&(id, vaddr & !(self.page_size - 1))) {
            None => Ok(None),
            Some(Slot { content: Content::Zero, .. }) => Ok(Some(vec![0u8; self.page_size as usize])),
            Some(Slot { content: Content::Data(off), .. }) => {
                let mut buf = AlignedBuf::new(self.page_size as usize);
                self.read_staged(buf.get_mut(), *off)?;
                Ok(Some(buf.get().to_vec()))
            }
        }
    }

    /// Writes the CRIU image directory `final_path` (which must not exist): one pagemap per id,
    /// consecutive pages merged into `PE_PRESENT` entries, zero pages as holes. Atomic: nothing
    /// appears at `final_path` unless everything was written and synced.
    pub fn commit(&self, final_path: &Path, pages_id_base: u32) -> Result<PathBuf, StoreError> {
        let ps = self.page_size;
        let mut w = ImageDirWriter::create(final_path, ps, pages_id_base)?;
        if self.direct {
            // Pages are read in address order, scattered over the file: let the page cache's
            // read-ahead gather them instead of one uncached read per stretch.
            set_direct(&self.staging, false);
        }
        let mut buf = AlignedBuf::new(COPY_PAGES * ps as usize);
        let mut iter = self.index.iter().peekable();
        while let Some((&(id, first), _)) = iter.peek() {
            let (id, first) = (id, first);
            let pm = w.open_pagemap(id)?;
            // Collect one maximal run of consecutive pages of this id.
            let mut run_start = first;
            let mut slots: Vec<Slot> = Vec::new();
            let mut expect = first;
            loop {
                let next = iter.peek().map(|(&(i, v), s)| (i, v, **s));
                match next {
                    Some((i, v, s)) if i == id && v == expect => {
                        slots.push(s);
                        expect += ps;
                        iter.next();
                    }
                    _ => {
                        if !slots.is_empty() {
                            pm.push_entry(PagemapEntry {
                                vaddr: run_start,
                                nr_pages: slots.len() as u64,
                                flags: PageFlags::PRESENT,
                            })?;
                            // Neighbouring pages usually sit next to each other in staging
                            // too: copy such stretches with one read and one write.
                            let mut k = 0;
                            while k < slots.len() {
                                match slots[k].content {
                                    Content::Zero => {
                                        pm.write_zeros(ps)?;
                                        k += 1;
                                    }
                                    Content::Data(off) => {
                                        let mut n = 1;
                                        while k + n < slots.len()
                                            && n < COPY_PAGES
                                            && slots[k + n].content == Content::Data(off + n as u64 * ps)
                                        {
                                            n += 1;
                                        }
                                        let chunk = &mut buf.get_mut()[..n * ps as usize];
                                        self.read_staged(chunk, off)?;
                                        pm.write_data(chunk)?;
                                        k += n;
                                    }
                                }
                            }
                            slots.clear();
                        }
                        match next {
                            Some((i, v, _)) if i == id => {
                                run_start = v;
                                expect = v;
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
        Ok(w.commit()?)
    }
}

/// Turns `O_DIRECT` on or off for `file`; `false` when the system refuses.
fn set_direct(file: &File, on: bool) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let Ok(flags) = fcntl(file, FcntlArg::F_GETFL) else { return false };
    let mut flags = OFlag::from_bits_truncate(flags);
    flags.set(OFlag::O_DIRECT, on);
    fcntl(file, FcntlArg::F_SETFL(flags)).is_ok()
}
