//! [`PageSource`]: where a lazy restore gets the pages of a run, and [`ImageSource`], the local
//! implementation over an image directory and its parent chain.
//!
//! The handler asks by dump-time address (what the pagemap says), never by socket: a network
//! source implements the same trait.

use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use super::ranges::LazyRanges;
use crate::criu::{ImageChain, ImageDir, ImageError, PagemapId};
use crate::page::PageRun;

/// Why a source could not supply pages.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the images failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The page is `PE_LAZY` without data here: this source cannot supply it.
    #[error("{id:?} page {vaddr:#x} is lazy without data in {dir}: a local source cannot supply it")]
    NoData { id: PagemapId, vaddr: u64, dir: String },
    /// A caller error: buffers that do not match the run.
    #[error("buffer of {have} bytes for a run of {nr_pages} pages")]
    BadBuffer { have: usize, nr_pages: u64 },
    /// Any other failure of a source (network sources report theirs here).
    #[error("{0}")]
    Other(String),
}

/// Gives the pages of a run of a pagemap, by dump-time address.
pub trait PageSource {
    /// The page size the source works in.
    fn page_size(&self) -> u64;

    /// Fills `out` (`run.nr_pages * page_size` bytes) with the pages of `run` of pagemap `id`
    /// and sets `zero[i]` for each page that is zero (absent in the images, or known zero); the
    /// bytes of such pages in `out` are unspecified.
    fn read_run(&mut self, id: PagemapId, run: PageRun, out: &mut [u8], zero: &mut [bool]) -> Result<(), SourceError>;

    /// The bytes of `run` of pagemap `id`, zero pages as zeros (for sources that re-serve pages).
    fn read_run_bytes(&mut self, id: PagemapId, run: PageRun) -> Result<Vec<u8>, SourceError> {
        let ps = self.page_size() as usize;
        let n = run.nr_pages as usize;
        let mut data = vec![0u8; n * ps];
        let mut zero = vec![false; n];
        self.read_run(id, run, &mut data, &mut zero)?;
        for (page, z) in data.chunks_exact_mut(ps).zip(zero) {
            if z {
                page.fill(0);
            }
        }
        Ok(data)
    }

    /// The lowest dump-time address of pagemap `id` whose page the source can supply at once
    /// (already received from a network source's push) and that `wanted` accepts, so the
    /// background push installs that before what would need a round trip. Held pages below it
    /// that `wanted` refuses (not lazy at that address any more) are dropped. `None`: nothing
    /// held (local sources: no preference).
    fn next_ready(&mut self, _id: PagemapId, _wanted: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        None
    }

    /// No task needs pages of pagemap `id` any more (all installed, or the tasks are gone): a
    /// source may drop what it holds for it.
    fn release(&mut self, _id: PagemapId) {}

    /// Whether more pages are on their way without being asked for (a network source's push is
    /// still running and has room): a background push step that finds nothing ready then waits
    /// for them rather than requesting pages, which would queue faults behind it.
    fn push_pending(&self) -> bool {
        false
    }

    /// Waits until one of `fds` (the daemon's userfaultfds and handoff socket) is readable or
    /// hung up, for at most `timeout_ms` (-1: forever, 0: just look), and sets `ready` per
    /// descriptor, as `poll(2)`; a source with pages on their way also returns when some arrive.
    /// The daemon waits only here, so a network source can drive its connection on the daemon's
    /// thread meanwhile (replies and pushed pages then need no other thread to be scheduled).
    /// The default just polls.
    fn wait_readable(&mut self, fds: &[BorrowedFd<'_>], timeout_ms: i32, ready: &mut Vec<bool>) -> io::Result<()> {
        crate::sys::scm_rights::poll_readable(fds, timeout_ms, ready)
    }
}

/// Pages from a local image directory and its parents: `Data` becomes bytes, `Absent` zero,
/// and a lazy page without data anywhere in the chain is an error.
pub struct ImageSource {
    chain: ImageChain,
    page_size: u64,
}

/// What the chain holds for a span of pages starting at a given address.
enum Span<'a> {
    Data { pm: &'a crate::criu::PagemapFile, offset: u64 },
    Zero,
}

impl ImageSource {
    /// Opens `dir` (parent links confined to `root`, default: `dir`'s parent).
    pub fn open(dir: &Path, root: Option<&Path>, page_size: u64) -> Result<Self, SourceError> {
        let chain = ImageChain::open(dir, root, page_size)?;
        chain.verify()?;
        Ok(Self { chain, page_size })
    }

    /// The newest image directory of the chain.
    pub fn dir(&self) -> Option<&ImageDir> {
        self.chain.levels().first()
    }

    /// The lazy pages of task `pid` in the newest directory (see [`lazy_ranges_of`]).
    pub fn lazy_ranges(&self, pid: i32) -> Result<(PagemapId, LazyRanges), SourceError> {
        match self.dir() {
            Some(d) => lazy_ranges_of(d, pid),
            None => Ok((PagemapId::Task(u64::from(pid.unsigned_abs())), LazyRanges::new(self.page_size))),
        }
    }

    /// Resolves `[at, limit)` down the chain: how the pages from `at` are held, and up to where.
    fn resolve(&self, id: PagemapId, at: u64, mut limit: u64) -> Result<(Span<'_>, u64), SourceError> {
        let ps = self.page_size;
        for (depth, level) in self.chain.levels().iter().enumerate() {
            let Some(pm) = level.pagemap(id) else {
                return self.absent_below(depth, id, at, limit);
            };
            let entries = &pm.pagemap.entries;
            let Some(i) = pm.pagemap.find(at, ps) else {
                let next = entries.get(entries.partition_point(|e| e.vaddr <= at)).map_or(u64::MAX, |e| e.vaddr);
                return self.absent_below(depth, id, at, limit.min(next));
            };
            let e = entries[i];
            limit = limit.min(e.vaddr + e.nr_pages * ps);
            if let Some(base) = pm.data_offsets[i] {
                return Ok((Span::Data { pm, offset: base + (at - e.vaddr) }, limit));
            }
            if e.flags.is_parent() {
                continue;
            }
            if e.flags.is_lazy() {
                return Err(SourceError::NoData { id, vaddr: at, dir: level.path().display().to_string() });
            }
            return Ok((Span::Zero, limit));
        }
        Err(SourceError::Other(format!("{id:?} page {at:#x} is PE_PARENT but the chain ends")))
    }

    fn absent_below(&self, depth: usize, id: PagemapId, at: u64, limit: u64) -> Result<(Span<'_>, u64), SourceError> {
        if depth == 0 {
            return Ok((Span::Zero, limit));
        }
        Err(SourceError::Other(format!(
            "{id:?} page {at:#x} is PE_PARENT but {} does not hold it",
            self.chain.levels()[depth].path().display()
        )))
    }
}

/// The lazy pages of task `pid` in `dir`: its pagemap's `PE_LAZY` entries, split at the VMA
/// boundaries of `mm-<pid>.img` when the directory has one (CRIU's entries can run across VMAs;
/// userfaultfd fills one VMA at a time, so no batch may cross a boundary). Zombies (`-pid`)
/// have none.
pub fn lazy_ranges_of(dir: &ImageDir, pid: i32) -> Result<(PagemapId, LazyRanges), SourceError> {
    let task = u64::from(pid.unsigned_abs());
    let id = PagemapId::Task(task);
    let ps = dir.page_size();
    let mut ranges = LazyRanges::new(ps);
    let Some(pm) = dir.pagemap(id) else { return Ok((id, ranges)) };
    let vmas = crate::criu::mm::read_vmas(dir.path(), task)?.unwrap_or_default();
    for e in pm.pagemap.entries.iter().filter(|e| e.flags.is_lazy()) {
        let (start, end) = (e.vaddr, e.vaddr + e.nr_pages * ps);
        let mut at = start;
        for &(_, vma_end) in vmas.iter().filter(|(s, t)| *s < end && *t > start) {
            if vma_end > at && vma_end < end {
                ranges.insert(at, vma_end, at);
                at = vma_end;
            }
        }
        ranges.insert(at, end, at);
    }
    Ok((id, ranges))
}

impl PageSource for ImageSource {
    fn page_size(&self) -> u64 {
        self.page_size
    }

    fn read_run(&mut self, id: PagemapId, run: PageRun, out: &mut [u8], zero: &mut [bool]) -> Result<(), SourceError> {
        let ps = self.page_size;
        let n = run.nr_pages as usize;
        if out.len() as u64 != run.nr_pages * ps || zero.len() != n {
            return Err(SourceError::BadBuffer { have: out.len(), nr_pages: run.nr_pages });
        }
        let end = run.end(ps);
        let mut at = run.vaddr;
        while at < end {
            let (span, upto) = self.resolve(id, at, end)?;
            let (from, to) = (((at - run.vaddr) / ps) as usize, ((upto - run.vaddr) / ps) as usize);
            match span {
                Span::Data { pm, offset } => {
                    pm.read_data(offset, &mut out[from * ps as usize..to * ps as usize])?;
                    zero[from..to].fill(false);
                }
                Span::Zero => zero[from..to].fill(true),
            }
            at = upto;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::{ImageDirWriter, PageFlags};

    #[test]
    fn data_zero_parent_and_lazy_without_data() {
        let ps = crate::page_size();
        let tmp = tempfile::tempdir().unwrap();
        let id = PagemapId::Task(7);
        let mut w = ImageDirWriter::create(&tmp.path().join("1"), ps, 1).unwrap();
        let pm = w.open_pagemap(id).unwrap();
        pm.push_present(0x10000, &vec![1u8; 2 * ps as usize], PageFlags::LAZY).unwrap();
        pm.push_present(0x20000, &vec![9u8; ps as usize], PageFlags(0)).unwrap();
        w.commit().unwrap();
        let mut w = ImageDirWriter::create(&tmp.path().join("2"), ps, 1).unwrap();
        w.set_parent(Path::new("../1")).unwrap();
        let pm = w.open_pagemap(id).unwrap();
        pm.push_present(0x10000, &vec![2u8; ps as usize], PageFlags::LAZY).unwrap();
        pm.push_hole(PageRun::new(0x10000 + ps, 1), PageFlags::PARENT | PageFlags::LAZY).unwrap();
        pm.push_hole(PageRun::new(0x30000, 1), PageFlags::LAZY).unwrap();
        pm.push_hole(PageRun::new(0x20000, 1), PageFlags::PARENT).unwrap_err(); // unsorted: refused
        w.commit().unwrap();

        let mut src = ImageSource::open(&tmp.path().join("2"), None, ps).unwrap();
        let run = PageRun::new(0x10000, 3);
        let mut out = vec![0xEEu8; 3 * ps as usize];
        let mut zero = vec![false; 3];
        src.read_run(id, run, &mut out, &mut zero).unwrap();
        assert_eq!(zero, [false, false, true]);
        assert!(out[..ps as usize].iter().all(|b| *b == 2));
        assert!(out[ps as usize..2 * ps as usize].iter().all(|b| *b == 1));
        let err = src.read_run(id, PageRun::new(0x30000, 1), &mut out[..ps as usize], &mut zero[..1]).unwrap_err();
        assert!(err.to_string().contains("lazy without data"), "{err}");
        let err = src.read_run(id, run, &mut out[..ps as usize], &mut zero).unwrap_err();
        assert!(matches!(err, SourceError::BadBuffer { .. }));
        let (pm, lazy) = src.lazy_ranges(7).unwrap();
        assert_eq!(pm, id);
        assert_eq!(lazy.len_pages(), 3);
        assert_eq!(src.lazy_ranges(8).unwrap().1.len_pages(), 0);
    }
}

#[cfg(test)]
mod vma_split_tests {
    use super::*;
    use crate::criu::mm::{MmEntryPb, VmaEntryPb, MM_MAGIC};
    use crate::criu::record::{write_magics, write_message};
    use crate::criu::{ImageDirWriter, PageFlags};

    #[test]
    fn lazy_entries_are_split_at_vma_boundaries() {
        let ps = crate::page_size();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("1");
        let mut w = ImageDirWriter::create(&dir, ps, 1).unwrap();
        // One entry of 8 pages across three VMAs: [0, 2) [2, 7) [7, 10) pages from 0x100000.
        let base = 0x10_0000;
        w.open_pagemap(PagemapId::Task(5))
            .unwrap()
            .push_present(base, &vec![1u8; 8 * ps as usize], PageFlags::LAZY)
            .unwrap();
        let mut mm = Vec::new();
        write_magics(&mut mm, MM_MAGIC);
        let vma = |a: u64, b: u64| VmaEntryPb { start: Some(base + a * ps), end: Some(base + b * ps) };
        write_message(&mut mm, &MmEntryPb { vmas: vec![vma(0, 2), vma(2, 7), vma(7, 10)] });
        w.add_file("mm-5.img", &mm).unwrap();
        w.commit().unwrap();
        let d = ImageDir::open(&dir, ps).unwrap();
        let (_, lazy) = lazy_ranges_of(&d, 5).unwrap();
        let pieces: Vec<(u64, u64)> = lazy.iter().map(|e| ((e.start - base) / ps, (e.end - base) / ps)).collect();
        assert_eq!(pieces, [(0, 2), (2, 7), (7, 8)]);
        assert_eq!(lazy.len_pages(), 8);
    }
}
