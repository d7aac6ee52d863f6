//! [`SoftDirtyTracker`]: `clear_refs` 4 + pagemap bit 55 (kernels with CONFIG_MEM_SOFT_DIRTY).
//!
//! Reading the bits and clearing them are two steps, so a write between them would be lost; the
//! tracker closes that window by stopping every thread with ptrace (invisible to the process)
//! for the read-and-clear, as CRIU does under its freeze. Bits are read with `PAGEMAP_SCAN` and
//! `PAGE_IS_SOFT_DIRTY` where the kernel has it (>= 6.7), else from `/proc/PID/pagemap`.

use std::fs::{self, File};
use std::io::Write;

use super::{split_new, DirtyTracker, TrackError, TrackerKind};
use crate::process::maps::{MemoryLayout, VmaKind};
use crate::process::residency::{
    for_each_entry, populated, scan_into, ResidencyMethod, PM_FILE, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP,
};
use crate::process::seize::SeizedThreads;
use crate::process::target::Target;
use crate::runset::PageRunSet;
use crate::sys::pagemap_scan::{self, ScanQuery};
use crate::{page_size, PageRun};

/// Writes "4" (reset soft-dirty bits) to `/proc/PID/clear_refs`.
pub fn clear_soft_dirty(pid: i32) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/clear_refs"))?;
    f.write_all(b"4")
}

/// Whether soft-dirty works here: the same check as CRIU's kerndat (clear our own bits, write a
/// page, read bit 55 of its pagemap entry).
pub fn probe() -> Result<(), String> {
    let me = std::process::id() as i32;
    let mut page = crate::sys::aligned::AlignedBuf::new(page_size() as usize).map_err(|e| e.to_string())?;
    page.as_mut_slice()[0] = 1;
    clear_soft_dirty(me).map_err(|e| format!("clear_refs: {e} (no CONFIG_MEM_SOFT_DIRTY?)"))?;
    let p = page.as_mut_slice();
    p[0] = std::hint::black_box(2);
    let addr = p.as_ptr() as u64;
    let pagemap = File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
    let mut bit = false;
    for_each_entry(&pagemap, addr, addr + page_size(), page_size(), |_, e| bit = e & PM_SOFT_DIRTY != 0)
        .map_err(|e| e.to_string())?;
    if bit {
        Ok(())
    } else {
        Err("pagemap bit 55 stays clear after a write (kernel built without CONFIG_MEM_SOFT_DIRTY)".into())
    }
}

/// Soft-dirty tracking of one process.
pub struct SoftDirtyTracker {
    target: Target,
    pagemap: File,
    method: ResidencyMethod,
    page_size: u64,
    tracked: PageRunSet,
}

impl SoftDirtyTracker {
    /// Starts tracking `target` (the first collect clears the bits).
    pub fn new(target: Target) -> Result<Self, TrackError> {
        let pagemap = target.open_pagemap()?;
        let ps = page_size();
        Ok(Self { target, pagemap, method: ResidencyMethod::probe(), page_size: ps, tracked: PageRunSet::new(ps) })
    }

    /// Uses `/proc/PID/pagemap` reads even where `PAGEMAP_SCAN` exists (as on kernels < 6.7).
    pub fn force_pagemap_file(&mut self) {
        self.method = ResidencyMethod::PagemapFile;
    }

    fn soft_dirty_in(&self, vma: &crate::process::maps::Vma, r: PageRun, out: &mut PageRunSet) -> std::io::Result<()> {
        let file_private = vma.kind() == VmaKind::FilePrivate;
        let ps = self.page_size;
        match self.method {
            ResidencyMethod::Scan => {
                let mut q = ScanQuery {
                    category_mask: pagemap_scan::PAGE_IS_SOFT_DIRTY,
                    category_anyof_mask: pagemap_scan::PAGE_IS_PRESENT | pagemap_scan::PAGE_IS_SWAPPED,
                    return_mask: pagemap_scan::PAGE_IS_SOFT_DIRTY,
                    ..Default::default()
                };
                if file_private {
                    q.category_inverted = pagemap_scan::PAGE_IS_FILE;
                    q.category_mask |= pagemap_scan::PAGE_IS_FILE;
                }
                scan_into(&self.pagemap, r.vaddr, r.end(ps), &q, out)
            }
            ResidencyMethod::PagemapFile => for_each_entry(&self.pagemap, r.vaddr, r.end(ps), ps, |vaddr, e| {
                let data = e & (PM_PRESENT | PM_SWAP) != 0 && !(file_private && e & PM_FILE != 0);
                if data && e & PM_SOFT_DIRTY != 0 {
                    out.insert_page(vaddr);
                }
            }),
        }
    }
}

impl DirtyTracker for SoftDirtyTracker {
    fn kind(&self) -> TrackerKind {
        TrackerKind::SoftDirty
    }

    fn pid(&self) -> i32 {
        self.target.pid()
    }

    fn collect(&mut self, layout: &MemoryLayout) -> Result<PageRunSet, TrackError> {
        let ps = self.page_size;
        let (current, new) = split_new(layout, &self.tracked, ps);
        let mut dirty = PageRunSet::new(ps);
        // Read and clear with every thread stopped, so no write falls between the two.
        let stopped = SeizedThreads::stop_all(&self.target)?;
        for vma in layout.migrated() {
            let io = |e| TrackError::io(format!("pagemap of {:#x}", vma.start), e);
            if new.range(vma.start, vma.end).next().is_some() {
                let p = populated(&self.pagemap, vma, ps, self.method).map_err(io)?;
                dirty.union_with(&p.intersection(&new));
            }
            for r in current.range(vma.start, vma.end).collect::<Vec<_>>() {
                if !new.covers(r) {
                    self.soft_dirty_in(vma, r, &mut dirty).map_err(io)?;
                }
            }
        }
        clear_soft_dirty(self.target.pid()).map_err(|e| TrackError::io("clear_refs", e))?;
        drop(stopped);
        self.tracked = current;
        Ok(dirty)
    }
}
