//! The `PAGEMAP_SCAN` ioctl on `/proc/PID/pagemap` (Linux >= 6.7), from `include/uapi/linux/fs.h`.
//!
//! One call reports page ranges by category (written since write-protect, present, swapped,
//! zero-PFN, soft-dirty) and, with [`PM_SCAN_WP_MATCHING`], write-protects what it reports: scan
//! and re-arm of uffd-wp dirty tracking in one atomic step.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u64 = 0xC060_6610;

pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;

/// Write-protect the pages that match.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail (EPERM) on a page without userfaultfd async write-protect.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct page_region`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg` (12 u64).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// What to ask one scan for.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanQuery {
    pub flags: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// Runs `PAGEMAP_SCAN` over `[start, end)` into `out`; returns the regions filled and the
/// address the walk stopped at (`end` when the whole range was covered).
pub fn scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    q: &ScanQuery,
    out: &mut [PageRegion],
) -> io::Result<(usize, u64)> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: q.flags,
        start,
        end,
        walk_end: 0,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        max_pages: 0,
        category_inverted: q.category_inverted,
        category_mask: q.category_mask,
        category_anyof_mask: q.category_anyof_mask,
        return_mask: q.return_mask,
    };
    // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `out.len()` writable regions that
    // outlive the call; the kernel writes at most `vec_len` of them and fills `walk_end`.
    let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, arg.walk_end))
}

/// Whether the running kernel has `PAGEMAP_SCAN` (probed on our own pagemap).
pub fn available() -> bool {
    let Ok(f) = std::fs::File::open("/proc/self/pagemap") else { return false };
    let mut out = [PageRegion::default(); 1];
    let q = ScanQuery { return_mask: PAGE_IS_PRESENT, category_anyof_mask: PAGE_IS_PRESENT, ..Default::default() };
    let probe = &out as *const _ as u64 & !4095;
    use std::os::fd::AsFd;
    scan(f.as_fd(), probe, probe + 4096, &q, &mut out).is_ok()
}
