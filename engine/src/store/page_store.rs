//! [`PageStore`]: stages received pages in an unnamed temporary file next to the destination
//! (so memory stays flat however large the process is) with an index of where each page's
//! newest copy is, and writes the CRIU image directory on commit.
//!
//! Pages may arrive in any order across rounds (several streams): each carries its round, and
//! an older round never overwrites a newer one. A page re-sent in a later round overwrites its
//! slot in place, so the staging file never grows past the migrated memory. Zero pages take no
//! staging space and become holes in `pages-<id>.img` (CRIU reads holes as zeros).

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
    staging_len: u64,
    index: BTreeMap<(PagemapId, u64), Slot>,
    per_round: HashMap<u32, u64>,
}

impl PageStore {
    /// A store whose staging file lives (unnamed, removed automatically) in `staging_dir`.
    pub fn new(staging_dir: &Path, page_size: u64) -> Result<Self, StoreError> {
        Ok(Self {
            page_size,
            staging: tempfile::tempfile_in(staging_dir)?,
            staging_len: 0,
            index: BTreeMap::new(),
            per_round: HashMap::new(),
        })
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
        // end of the file and go out in one write.
        let fresh_from = self.staging_len;
        let mut fresh: Vec<u8> = Vec::new();
        for (i, page) in data.chunks_exact(ps).enumerate() {
            let key = (id, run.vaddr + i as u64 * self.page_size);
            let old = self.index.get(&key).copied();
            if old.is_some_and(|s| s.round > round) {
                continue; // a newer round already delivered this page
            }
            let offset = match old.and_then(|s| s.offset) {
                Some(off) => {
                    self.staging.write_all_at(page, off)?;
                    off
                }
                None => {
                    let off = fresh_from + fresh.len() as u64;
                    fresh.extend_from_slice(page);
                    off
                }
            };
            self.index.insert(key, Slot { round, content: Content::Data(offset), offset: Some(offset) });
        }
        if !fresh.is_empty() {
            self.staging.write_all_at(&fresh, fresh_from)?;
            self.staging_len += fresh.len() as u64;
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
        let mut buf = vec![0u8; self.page_size as usize];
        match self.index.get(&(id, vaddr & !(self.page_size - 1))) {
            None => Ok(None),
            Some(Slot { content: Content::Zero, .. }) => Ok(Some(buf)),
            Some(Slot { content: Content::Data(off), .. }) => {
                self.staging.read_exact_at(&mut buf, *off)?;
                Ok(Some(buf))
            }
        }
    }

    /// Writes the CRIU image directory `final_path` (which must not exist): one pagemap per id,
    /// consecutive pages merged into `PE_PRESENT` entries, zero pages as holes. Atomic: nothing
    /// appears at `final_path` unless everything was written and synced.
    pub fn commit(&self, final_path: &Path, pages_id_base: u32) -> Result<PathBuf, StoreError> {
        let ps = self.page_size;
        let mut w = ImageDirWriter::create(final_path, ps, pages_id_base)?;
        let mut buf = vec![0u8; COPY_PAGES * ps as usize];
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
                                        let chunk = &mut buf[..n * ps as usize];
                                        self.staging.read_exact_at(chunk, off)?;
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
