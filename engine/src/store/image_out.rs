//! Writing staged pages as the pagemaps of one image directory: consecutive pages merged into
//! `PE_PRESENT` entries (zero pages as holes in the pages file, which CRIU reads as zeros) and,
//! for an image over a parent, `PE_PARENT` entries for the pages the parent already holds.
//! Shared by [`PageStore::commit`](super::PageStore::commit) and the background
//! [`snapshots`](super::snapshot).

use crate::criu::{ImageDirWriter, PageFlags, PagemapEntry, PagemapId};
use crate::sys::aligned::AlignedBuf;
use crate::PageRun;

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

/// Writes `pages` (sorted by pagemap, then address) into `w`. `read(buf, offset)` fills `buf`
/// from the staging file; `cancelled` is asked between copies and stops the write with
/// [`StoreError::Cancelled`]. With `synced`, the data is made durable every [`SYNC_BYTES`] and
/// at the end, and `synced` is told how many bytes are durable so far: the writer's progress
/// then measures the disk, not the page cache. Returns the page bytes copied.
///
/// First every pagemap is laid out in address order (entries, and the pages files' data as
/// holes); then the data is copied in staging order, so staging is read in large sequential
/// pieces however the pages arrived, and each page is written into its place.
pub(crate) fn write_pages(
    w: &mut ImageDirWriter,
    page_size: u64,
    pages: impl Iterator<Item = (PagemapId, u64, Staged)>,
    read: &mut StagingRead<'_>,
    cancelled: &dyn Fn() -> bool,
    synced: Option<&dyn Fn(u64)>,
) -> Result<u64, StoreError> {
    let ps = page_size;
    let mut copies = Vec::new();
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
                if let Staged::Data(from) = *s {
                    copies.push(PageCopy { from, id, to: at + k as u64 * ps });
                }
            }
            pm.write_zeros(run.nr_pages * ps)?;
        }
    }
    copies.sort_unstable_by_key(|c| c.from);
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
        // Pages next to each other in the image too go in one write.
        let mut k = 0;
        while k < n {
            let c = copies[i + k];
            let m = copies[i + k..i + n]
                .iter()
                .enumerate()
                .take_while(|(j, d)| d.id == c.id && d.to == c.to + *j as u64 * ps)
                .count();
            let pm = w.pagemap(c.id).ok_or_else(|| std::io::Error::other(format!("pagemap {} not open", c.id)))?;
            pm.write_data_at(&chunk[k * ps as usize..(k + m) * ps as usize], c.to)?;
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
    Ok(written)
}
