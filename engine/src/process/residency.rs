//! Which pages of an area hold data: present or swapped, not the shared zero page, and for private
//! file mappings only pages written since mapping (now anonymous). Uses `PAGEMAP_SCAN` where the
//! kernel has it, else `/proc/PID/pagemap` in large reads; the same reader gives soft-dirty bits.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use super::maps::{MemoryLayout, Vma, VmaKind};
use crate::runset::PageRunSet;
use crate::sys::pagemap_scan::{self, PageRegion, ScanQuery};

/// `/proc/PID/pagemap` entry bits.
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;
pub const PM_SOFT_DIRTY: u64 = 1 << 55;

/// Whether any swap area is active. Without swap, a "swapped" page table entry can only be a
/// marker (userfaultfd write-protect on an unpopulated page shows up as one), which holds no data.
pub fn swap_active() -> bool {
    static ACTIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| std::fs::read_to_string("/proc/swaps").map(|s| s.lines().count() > 1).unwrap_or(true))
}

/// Entries per `pread` of the pagemap file (512 KiB of entries covers 256 MiB of address space).
const ENTRIES_PER_READ: usize = 65536;

/// Calls `f(vaddr, entry)` for each page of `[start, end)` from the raw pagemap file.
pub fn for_each_entry(
    pagemap: &File,
    start: u64,
    end: u64,
    page_size: u64,
    mut f: impl FnMut(u64, u64),
) -> io::Result<()> {
    let mut buf = vec![0u8; ENTRIES_PER_READ * 8];
    let mut vaddr = start;
    while vaddr < end {
        let n = (((end - vaddr) / page_size) as usize).min(ENTRIES_PER_READ);
        let bytes = &mut buf[..n * 8];
        pagemap.read_exact_at(bytes, vaddr / page_size * 8)?;
        for (i, e) in bytes.chunks_exact(8).enumerate() {
            let entry = u64::from_ne_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
            f(vaddr + i as u64 * page_size, entry);
        }
        vaddr += n as u64 * page_size;
    }
    Ok(())
}

/// How residency is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResidencyMethod {
    /// `PAGEMAP_SCAN` (Linux >= 6.7): ranges straight from the kernel, zero-PFN pages excluded.
    Scan,
    /// `/proc/PID/pagemap` entries (any kernel); the zero PFN is recognised only when the PFN is
    /// visible (CAP_SYS_ADMIN), otherwise such pages count as data and the reader elides them.
    PagemapFile,
}

impl ResidencyMethod {
    /// The best method the running kernel offers.
    pub fn probe() -> Self {
        if pagemap_scan::available() {
            Self::Scan
        } else {
            Self::PagemapFile
        }
    }
}

/// The pages of `vma` that hold data, per the migration policy (see module docs).
pub fn populated(pagemap: &File, vma: &Vma, page_size: u64, method: ResidencyMethod) -> io::Result<PageRunSet> {
    let file_private = vma.kind() == VmaKind::FilePrivate;
    let mut set = PageRunSet::new(page_size);
    let swapped = if swap_active() { pagemap_scan::PAGE_IS_SWAPPED } else { 0 };
    let pm_swap = if swap_active() { PM_SWAP } else { 0 };
    match method {
        ResidencyMethod::Scan => {
            let mut q = ScanQuery {
                category_inverted: pagemap_scan::PAGE_IS_PFNZERO,
                category_mask: pagemap_scan::PAGE_IS_PFNZERO,
                category_anyof_mask: pagemap_scan::PAGE_IS_PRESENT | swapped,
                return_mask: pagemap_scan::PAGE_IS_PRESENT | pagemap_scan::PAGE_IS_SWAPPED,
                flags: 0,
            };
            if file_private {
                q.category_inverted |= pagemap_scan::PAGE_IS_FILE;
                q.category_mask |= pagemap_scan::PAGE_IS_FILE;
            }
            scan_into(pagemap, vma.start, vma.end, &q, &mut set)?;
        }
        ResidencyMethod::PagemapFile => {
            for_each_entry(pagemap, vma.start, vma.end, page_size, |vaddr, e| {
                let data = e & (PM_PRESENT | pm_swap) != 0 && !(file_private && e & PM_FILE != 0);
                if data {
                    set.insert_page(vaddr);
                }
            })?;
        }
    }
    Ok(set)
}

/// The pages of every migrated area of `layout` that hold data ([`populated`] over all of them).
pub fn populated_in(
    pagemap: &File,
    layout: &MemoryLayout,
    page_size: u64,
    method: ResidencyMethod,
) -> io::Result<PageRunSet> {
    let mut set = PageRunSet::new(page_size);
    for vma in layout.migrated() {
        set.union_with(&populated(pagemap, vma, page_size, method)?);
    }
    Ok(set)
}

/// Runs `PAGEMAP_SCAN` over `[start, end)` to completion, adding every reported region to `set`.
pub fn scan_into(pagemap: &File, start: u64, end: u64, q: &ScanQuery, set: &mut PageRunSet) -> io::Result<()> {
    let mut out = vec![PageRegion::default(); 4096];
    let mut at = start;
    while at < end {
        let (n, walk_end) = pagemap_scan::scan(pagemap.as_fd(), at, end, q, &mut out)?;
        for r in &out[..n] {
            set.insert(crate::PageRun::new(r.start, (r.end - r.start) / set.page_size()));
        }
        if walk_end <= at {
            break;
        }
        at = walk_end;
    }
    Ok(())
}
