//! Writing staged pages as the pagemaps of one image directory: consecutive pages merged into
//! `PE_PRESENT` entries (zero pages as holes in the pages file, which CRIU reads as zeros) and,
//! for an image over a parent, `PE_PARENT` entries for the pages the parent already holds.
//! Shared by [`PageStore::commit`](super::PageStore::commit) and the background
//! [`snapshots`](super::snapshot).

use std::collections::HashMap;
use std::io::IoSlice;

use crate::criu::{ImageDirWriter, PageFlags, PagemapEntry, PagemapId};
use crate::sys::aligned::AlignedBuf;
use crate::{PageRun, PageRunSet};

use super::page_store::StoreError;

/// Pages read from staging at once (consecutive staging offsets).
const COPY_PAGES: usize = 1024;

/// Where one page of the image comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Staged {
    /// Its data at this offset of the staging file.
    Data(u64),
    /// All zero.
    Zero,
    /// The parent image holds it unchanged.
    Parent,
}

/// Fills a buffer from the staging file at an offset.
pub(crate) type StagingRead<'a> = dyn FnMut(&mut [u8], u64) -> Result<(), StoreError> + 'a;

/// One page to copy: from a staging offset to an offset of a pages file.
#[derive(Clone, Copy)]
struct PageCopy {
    from: u64,
    id: PagemapId,
    to: u64,
}

/// Page bytes between two syncs of a paced write.
const SYNC_BYTES: u64 = 128 << 20;

/// The most zero pages written out as zeros to join two pieces of data into one direct write.
const MAX_ZERO_FILL: usize = 16;

/// Page data a copy must reach to go around the page cache, unless the store is told otherwise
/// ([`PageStore::set_direct_min_bytes`](super::PageStore::set_direct_min_bytes)). Direct writes wait for the disk one
/// at a time, so they only pay where first-touching page-cache memory costs more: the first
/// snapshot of a large process (1 GiB: the receiver's CPU per GB halves). With the 256 MiB
/// demo's first snapshot (~190 MB) direct too, its downtime at `--downtime-ms 100` was ~15 ms
/// longer (medians of 10 runs); later snapshots and commits are small.
pub(crate) const DIRECT_MIN_JOB_BYTES: u64 = 256 << 20;

/// Pieces in one vectored write (below the kernel's `IOV_MAX` of 1024).
const MAX_PIECES: usize = 512;

/// Writes `pages` (sorted by pagemap, then address) into `w`. `read(buf, offset)` fills `buf`
/// from the staging file; `cancelled` is asked between copies and stops the write with
/// [`StoreError::Cancelled`]. With `synced`, the data is made durable every [`SYNC_BYTES`] and
/// at the end, and `synced` is told how many bytes are durable so far: the writer's progress
/// then measures the disk, not the page cache. Returns the page bytes copied.
///
/// First every pagemap is laid out in address order (entries, and the pages files' data as
/// holes); then the data is copied in staging order, so staging is read in large sequential
/// pieces however the pages arrived, and each page is written into its place. Pages that
/// follow each other in the image go in one write. A copy of `direct_min` bytes and more
/// (default [`DIRECT_MIN_JOB_BYTES`]) goes around the page cache (`O_DIRECT`, where the file system allows: first-touching
/// page-cache memory is what buffered writes cost most here) in writes made long by also
/// joining pages with a few zero pages between them (written as zeros instead of holes).
pub(crate) fn write_pages(
    w: &mut ImageDirWriter,
    page_size: u64,
    pages: impl Iterator<Item = (PagemapId, u64, Staged)>,
    read: &mut StagingRead<'_>,
    cancelled: &dyn Fn() -> bool,
    synced: Option<&dyn Fn(u64)>,
    direct_min: u64,
) -> Result<u64, StoreError> {
    let ps = page_size;
    let mut copies = Vec::new();
    // Per pagemap, the pages file's offsets of zero pages (holes), as pages of a run set.
    let mut zeros: HashMap<PagemapId, PageRunSet> = HashMap::new();
    let mut pages = pages.peekable();
    let mut group: Vec<Staged> = Vec::new();
    while let Some(&(id, _, _)) = pages.peek() {
        let pm = w.open_pagemap(id)?;
        while let Some((_, start, first)) = pages.next_if(|p| p.0 == id) {
            if cancelled() {
                return Err(StoreError::Cancelled);
            }
            // One maximal stretch of consecutive pages that are all in the parent or all not.
            let parent = first == Staged::Parent;
            group.clear();
            group.push(first);
            let mut expect = start + ps;
            while let Some((_, _, s)) =
                pages.next_if(|&(i, v, s)| i == id && v == expect && (s == Staged::Parent) == parent)
            {
                group.push(s);
                expect += ps;
            }
            let run = PageRun::new(start, group.len() as u64);
            if parent {
                pm.push_hole(run, PageFlags::PARENT)?;
                continue;
            }
            pm.push_entry(PagemapEntry { vaddr: start, nr_pages: run.nr_pages, flags: PageFlags::PRESENT })?;
            let at = pm.laid_out();
            for (k, s) in group.iter().enumerate() {
                let to = at + k as u64 * ps;
                match *s {
                    Staged::Data(from) => copies.push(PageCopy { from, id, to }),
                    Staged::Zero => zeros.entry(id).or_insert_with(|| PageRunSet::new(ps)).insert_page(to),
                    Staged::Parent => {}
                }
            }
            pm.write_zeros(run.nr_pages * ps)?;
        }
    }
    copies.sort_unstable_by_key(|c| c.from);
    // A large copy goes around the page cache in long writes; a small one through it, holes
    // kept, and one sync at the end then writes it all back at a deep queue.
    let direct = copies.len() as u64 * ps >= direct_min;
    w.set_direct_data(direct)?;
    let max_fill = if direct { MAX_ZERO_FILL } else { 0 };
    let zero_fill = AlignedBuf::new(max_fill * ps as usize)?;
    let mut buf = AlignedBuf::new(COPY_PAGES * ps as usize)?;
    let (mut written, mut since_sync) = (0u64, 0u64);
    let mut i = 0;
    while i < copies.len() {
        if cancelled() {
            return Err(StoreError::Cancelled);
        }
        let first = copies[i].from;
        let n = copies[i..]
            .iter()
            .take(COPY_PAGES)
            .enumerate()
            .take_while(|(k, c)| c.from == first + *k as u64 * ps)
            .count();
        let chunk = &mut buf.as_mut_slice()[..n * ps as usize];
        read(chunk, first)?;
        let chunk = &*chunk;
        let page = |k: usize| &chunk[k * ps as usize..(k + 1) * ps as usize];
        let mut pieces: Vec<IoSlice<'_>> = Vec::with_capacity(MAX_PIECES);
        let mut k = 0;
        while k < n {
            // Pages of the chunk from k on whose places follow each other in the image, with
            // at most `max_fill` zero pages between two of them.
            let c = copies[i + k];
            let holes = zeros.get(&c.id);
            pieces.clear();
            pieces.push(IoSlice::new(page(k)));
            let (mut m, mut end) = (1, c.to + ps);
            while k + m < n && pieces.len() + 2 <= MAX_PIECES {
                let d = copies[i + k + m];
                let gap = d.to.saturating_sub(end) / ps;
                let fill = d.id == c.id
                    && d.to >= end
                    && gap as usize <= max_fill
                    && (gap == 0 || holes.is_some_and(|z| z.covers(PageRun::new(end, gap))));
                if !fill {
                    break;
                }
                if gap > 0 {
                    pieces.push(IoSlice::new(&zero_fill.as_slice()[..(gap * ps) as usize]));
                }
                pieces.push(IoSlice::new(page(k + m)));
                (m, end) = (m + 1, d.to + ps);
            }
            let pm = w.pagemap(c.id).ok_or_else(|| std::io::Error::other(format!("pagemap {} not open", c.id)))?;
            pm.write_data_vectored_at(&pieces, c.to)?;
            k += m;
        }
        i += n;
        written += n as u64 * ps;
        since_sync += n as u64 * ps;
        if let Some(report) = synced.filter(|_| since_sync >= SYNC_BYTES || i == copies.len()) {
            w.sync_pages()?;
            report(written);
            since_sync = 0;
        }
    }
    w.set_direct_data(false)?;
    Ok(written)
}
