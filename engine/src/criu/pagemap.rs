//! [`Pagemap`]: a parsed and validated `pagemap-<id>.img` (or `pagemap-shmem-<id>.img`).
//!
//! Reading follows CRIU's compatibility rules (`init_compat_pagemap_entry`): field 5 `nr_pages`
//! over field 2, `in_parent` adds `PE_PARENT`, missing `flags` mean `PE_PRESENT`. Writing sets
//! both page-count fields (2 and 5) so CRIU 3.17 through 4.2 read the result.

use std::path::Path;

use super::error::{ImageError, ImageErrorKind};
use super::flags::PageFlags;
use super::magic::PAGEMAP_MAGIC;
use super::proto::{PagemapEntryPb, PagemapHeadPb};
use super::record::{write_magics, write_message, RecordReader};
use crate::page::PageRun;

/// One entry: a run of pages and what the image holds for them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
pub struct PagemapEntry {
    /// First page (virtual address, or offset for shmem).
    pub vaddr: u64,
    /// Number of pages (> 0).
    pub nr_pages: u64,
    /// `PE_*` bits.
    pub flags: PageFlags,
}

impl PagemapEntry {
    /// An entry for `run` with `flags`.
    pub fn new(run: PageRun, flags: PageFlags) -> Self {
        Self { vaddr: run.vaddr, nr_pages: run.nr_pages, flags }
    }
    /// The pages this entry covers.
    pub fn run(&self) -> PageRun {
        PageRun::new(self.vaddr, self.nr_pages)
    }
    /// Bytes of page data this entry contributes to the pages file (0 unless `PE_PRESENT`).
    pub fn data_len(&self, page_size: u64) -> u64 {
        if self.flags.is_present() {
            self.nr_pages * page_size
        } else {
            0
        }
    }

    fn to_pb(self) -> PagemapEntryPb {
        PagemapEntryPb {
            vaddr: Some(self.vaddr),
            compat_nr_pages: Some(u32::try_from(self.nr_pages).unwrap_or(0)),
            in_parent: None,
            flags: Some(self.flags.bits()),
            nr_pages: Some(self.nr_pages),
        }
    }

    fn from_pb(pb: &PagemapEntryPb) -> Result<Self, ImageErrorKind> {
        let vaddr = pb.vaddr.ok_or(ImageErrorKind::MissingField("vaddr"))?;
        let nr_pages = match (pb.nr_pages, pb.compat_nr_pages) {
            (Some(n), _) => n,
            (None, Some(n)) => u64::from(n),
            (None, None) => return Err(ImageErrorKind::MissingField("nr_pages")),
        };
        let mut flags = PageFlags(pb.flags.unwrap_or(PageFlags::PRESENT.bits()));
        if pb.in_parent == Some(true) {
            flags = flags | PageFlags::PARENT;
        }
        Ok(Self { vaddr, nr_pages, flags })
    }
}

/// A whole pagemap image: the id of its pages file and its entries in address order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Pagemap {
    /// `PagemapHead.pages_id`: the data is in `pages-<pages_id>.img`.
    pub pages_id: u32,
    /// Entries sorted by address, non-overlapping.
    pub entries: Vec<PagemapEntry>,
}

impl Pagemap {
    /// Parses and validates the bytes of the pagemap file at `path` (used in error messages).
    ///
    /// Refuses bad magic, truncated records, missing required fields, `nr_pages == 0`, unaligned
    /// or wrapping runs, unsorted or overlapping entries and unknown flag bits.
    pub fn parse(path: &Path, data: &[u8], page_size: u64) -> Result<Self, ImageError> {
        let mut rd = RecordReader::new(path, data);
        rd.expect_magics(PAGEMAP_MAGIC)?;
        let head_off = rd.offset();
        let (_, head) = rd
            .next_message::<PagemapHeadPb>()?
            .ok_or_else(|| ImageError::at(path, head_off, ImageErrorKind::NoHead))?;
        let pages_id =
            head.pages_id.ok_or_else(|| ImageError::at(path, head_off, ImageErrorKind::MissingField("pages_id")))?;
        let mut entries = Vec::new();
        let mut prev_end = 0u64;
        while let Some((off, pb)) = rd.next_message::<PagemapEntryPb>()? {
            let err = |kind| ImageError::at(path, off, kind);
            let e = PagemapEntry::from_pb(&pb).map_err(err)?;
            check_entry(&e, prev_end, page_size).map_err(err)?;
            prev_end = e.vaddr + e.nr_pages * page_size;
            entries.push(e);
        }
        Ok(Self { pages_id, entries })
    }

    /// The file's bytes: magics, head, one record per entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 24);
        write_magics(&mut out, PAGEMAP_MAGIC);
        write_message(&mut out, &PagemapHeadPb { pages_id: Some(self.pages_id) });
        for e in &self.entries {
            write_message(&mut out, &e.to_pb());
        }
        out
    }

    /// Bytes of page data the pages file must hold.
    pub fn data_len(&self, page_size: u64) -> u64 {
        self.entries.iter().map(|e| e.data_len(page_size)).sum()
    }

    /// Index of the entry containing `addr`.
    pub fn find(&self, addr: u64, page_size: u64) -> Option<usize> {
        let idx = self.entries.partition_point(|e| e.vaddr <= addr);
        let i = idx.checked_sub(1)?;
        self.entries[i].run().contains(addr, page_size).then_some(i)
    }
}

/// CRIU's `check_pagehole_in_parent`: walks the parent's sorted, non-overlapping `entries` (of
/// any flags) from `vaddr` and returns the first address of the `nr_pages` pages no entry covers.
pub fn first_uncovered(entries: &[PagemapEntry], vaddr: u64, nr_pages: u64, page_size: u64) -> Option<u64> {
    let end = vaddr.saturating_add(nr_pages.saturating_mul(page_size));
    let entry_end = |e: &PagemapEntry| e.vaddr.saturating_add(e.nr_pages.saturating_mul(page_size));
    let mut at = vaddr;
    let mut next = entries.partition_point(|e| entry_end(e) <= at);
    while at < end {
        match entries.get(next) {
            Some(e) if e.vaddr <= at => {
                at = entry_end(e);
                next += 1;
            }
            _ => return Some(at),
        }
    }
    None
}

/// Checks one entry against CRIU's rules, given the end of the previous entry.
pub fn check_entry(e: &PagemapEntry, prev_end: u64, page_size: u64) -> Result<(), ImageErrorKind> {
    let (vaddr, nr_pages) = (e.vaddr, e.nr_pages);
    if nr_pages == 0 {
        return Err(ImageErrorKind::ZeroPages { vaddr });
    }
    if vaddr % page_size != 0 {
        return Err(ImageErrorKind::Unaligned { vaddr });
    }
    if PageRun::checked(vaddr, nr_pages, page_size).is_none() {
        return Err(ImageErrorKind::Wraps { vaddr, nr_pages });
    }
    if vaddr < prev_end {
        return Err(ImageErrorKind::Unsorted { vaddr, prev_end });
    }
    if e.flags.unknown_bits() != 0 {
        return Err(ImageErrorKind::UnknownFlags { vaddr, flags: e.flags.bits() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PS: u64 = 4096;

    /// The example from the interop sheet, produced by pycriu 3.17 and checked with `crit show`.
    const PYCRIU_EXAMPLE: &[u8] = &[
        0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56, // magics
        0x04, 0, 0, 0, 0x08, 0x81, 0x80, 0x04, // head
        0x09, 0, 0, 0, 0x08, 0x80, 0x80, 0x80, 0x02, 0x10, 0x02, 0x20, 0x04, //
        0x0c, 0, 0, 0, 0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0xe0, 0x1f, 0x10, 0x03, 0x20, 0x06, //
        0x0c, 0, 0, 0, 0x08, 0x80, 0x80, 0x84, 0x80, 0x80, 0xe0, 0x1f, 0x10, 0x01, 0x20, 0x01,
    ];

    fn p() -> &'static Path {
        Path::new("pagemap-1.img")
    }

    #[test]
    fn reads_pycriu_bytes() {
        let pm = Pagemap::parse(p(), PYCRIU_EXAMPLE, PS).unwrap();
        assert_eq!(pm.pages_id, 65537);
        assert_eq!(
            pm.entries,
            vec![
                PagemapEntry { vaddr: 0x400000, nr_pages: 2, flags: PageFlags::PRESENT },
                PagemapEntry { vaddr: 0x7f00_0000_0000, nr_pages: 3, flags: PageFlags::LAZY | PageFlags::PRESENT },
                PagemapEntry { vaddr: 0x7f00_0001_0000, nr_pages: 1, flags: PageFlags::PARENT },
            ]
        );
        assert_eq!(pm.data_len(PS), 5 * PS);
        assert_eq!(pm.find(0x7f00_0000_2fff, PS), Some(1));
        assert_eq!(pm.find(0x7f00_0000_3000, PS), None);
    }

    #[test]
    fn writes_both_page_count_fields() {
        let pm = Pagemap {
            pages_id: 1,
            entries: vec![PagemapEntry { vaddr: 0x400000, nr_pages: 2, flags: PageFlags::PRESENT }],
        };
        let bytes = pm.encode();
        // entry: vaddr, field 2 = 2, flags = 4, field 5 = 2
        assert_eq!(&bytes[14..], &[11, 0, 0, 0, 0x08, 0x80, 0x80, 0x80, 0x02, 0x10, 0x02, 0x20, 0x04, 0x28, 0x02]);
    }

    #[test]
    fn compat_rules() {
        let mut out = Vec::new();
        write_magics(&mut out, PAGEMAP_MAGIC);
        write_message(&mut out, &PagemapHeadPb { pages_id: Some(3) });
        // CRIU 4.2 style: field 2 = 0, field 5 = 7; no flags => PE_PRESENT
        write_message(
            &mut out,
            &PagemapEntryPb { vaddr: Some(0), compat_nr_pages: Some(0), nr_pages: Some(7), ..Default::default() },
        );
        // legacy in_parent
        write_message(
            &mut out,
            &PagemapEntryPb {
                vaddr: Some(0x10000),
                compat_nr_pages: Some(1),
                in_parent: Some(true),
                flags: Some(0),
                ..Default::default()
            },
        );
        let pm = Pagemap::parse(p(), &out, PS).unwrap();
        assert_eq!(pm.entries[0], PagemapEntry { vaddr: 0, nr_pages: 7, flags: PageFlags::PRESENT });
        assert_eq!(pm.entries[1].flags, PageFlags::PARENT);
    }

    fn file_with(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        write_magics(&mut out, PAGEMAP_MAGIC);
        write_message(&mut out, &PagemapHeadPb { pages_id: Some(1) });
        for &(v, n, f) in entries {
            write_message(
                &mut out,
                &PagemapEntryPb {
                    vaddr: Some(v),
                    compat_nr_pages: Some(n as u32),
                    flags: Some(f),
                    nr_pages: Some(n),
                    ..Default::default()
                },
            );
        }
        out
    }

    fn err_of(data: &[u8]) -> String {
        Pagemap::parse(p(), data, PS).unwrap_err().to_string()
    }

    #[test]
    fn refuses_defects_with_file_and_offset() {
        assert_eq!(
            err_of(&file_with(&[(0x1000, 0, 4)])),
            "pagemap-1.img at offset 14: entry at 0x1000 has nr_pages == 0"
        );
        assert!(
            err_of(&file_with(&[(0x5000, 1, 4), (0x1000, 1, 4)])).contains("at offset 28: entry at 0x1000 is below")
        );
        assert!(err_of(&file_with(&[(0x1000, 2, 4), (0x2000, 1, 4)])).contains("unsorted or overlapping"));
        assert!(err_of(&file_with(&[(0x1001, 1, 4)])).contains("not page aligned"));
        assert!(err_of(&file_with(&[(0x1000, 1, 0x40)])).contains("unsupported flags 0x40"));
        let good = file_with(&[(0x1000, 1, 4)]);
        assert_eq!(
            err_of(&good[..good.len() - 1]),
            "pagemap-1.img at offset 14: truncated record: need 9 bytes, 8 left"
        );
        assert!(err_of(&good[..16]).contains("at offset 14: truncated record length: need 4 bytes, 2 left"));
        let mut bad = good.clone();
        bad[4] = 0;
        assert!(err_of(&bad).starts_with("pagemap-1.img at offset 4: bad magic: expected 0x56084025"));
        assert!(err_of(&good[..8]).contains("no head record"));
    }

    proptest! {
        #[test]
        fn round_trips(pages_id in any::<u32>(), raw in prop::collection::vec((0u64..1 << 20, 1u64..1 << 40, 0u32..8), 0..40)) {
            let mut entries = Vec::new();
            let mut next = 0u64;
            for (gap, nr, flags) in raw {
                let vaddr = next + gap * PS;
                let Some(run) = PageRun::checked(vaddr, nr, PS) else { break };
                next = run.end(PS);
                entries.push(PagemapEntry::new(run, PageFlags(flags)));
            }
            let pm = Pagemap { pages_id, entries };
            prop_assert_eq!(Pagemap::parse(p(), &pm.encode(), PS).unwrap(), pm);
        }

        #[test]
        fn never_panics_on_garbage(data in prop::collection::vec(any::<u8>(), 0..200), keep_magic in any::<bool>()) {
            let mut bytes = data;
            if keep_magic {
                let mut m = Vec::new();
                write_magics(&mut m, PAGEMAP_MAGIC);
                m.extend_from_slice(&bytes);
                bytes = m;
            }
            let _ = Pagemap::parse(p(), &bytes, PS);
        }
    }
}
