//! [`UffdWpTracker`]: userfaultfd async write-protect + `PAGEMAP_SCAN` (Linux >= 6.7).
//!
//! A userfaultfd is created inside the target by syscall injection ([`super::inject`]) and used
//! from here: `UFFDIO_API` with `WP_ASYNC | WP_UNPOPULATED`, areas registered in WP mode and
//! write-protected; each round one `PAGEMAP_SCAN` per area reports `PAGE_IS_WRITTEN` pages and
//! write-protects them again in the same call. Areas that appear are registered in the round they
//! appear; an area replaced or moved since registration (the scan fails with EPERM under
//! `PM_SCAN_CHECK_WPASYNC`) is registered again and reported whole. Dropping the tracker closes
//! the last copy of the userfaultfd, which ends tracking; the target carries on unaffected.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use super::{split_new, DirtyTracker, TrackError, TrackerKind};
use crate::process::maps::MemoryLayout;
use crate::process::residency::{populated, scan_into, ResidencyMethod};
use crate::process::target::Target;
use crate::runset::PageRunSet;
use crate::sys::pagemap_scan::{self, ScanQuery};
use crate::sys::uffd;
use crate::{page_size, PageRun};

/// Whether this kernel has async uffd-wp and `PAGEMAP_SCAN`.
pub fn probe() -> Result<(), String> {
    if !pagemap_scan::available() {
        return Err("PAGEMAP_SCAN is missing (needs Linux >= 6.7)".into());
    }
    // Ask a userfaultfd of our own which features the kernel grants.
    let fd = crate::sys::uffd_self::create().map_err(|e| format!("userfaultfd: {e}"))?;
    let want = uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED;
    match uffd::api(fd.as_fd(), want) {
        Ok(got) if got & want == want => Ok(()),
        Ok(got) => Err(format!("userfaultfd lacks WP_ASYNC/WP_UNPOPULATED (features {got:#x})")),
        Err(e) => Err(format!("UFFDIO_API with WP_ASYNC|WP_UNPOPULATED: {e}")),
    }
}

/// Async uffd-wp tracking of one process.
pub struct UffdWpTracker {
    target: Target,
    pagemap: File,
    uffd: OwnedFd,
    page_size: u64,
    /// Areas registered and write-protected.
    tracked: PageRunSet,
    /// Areas the kernel refused to register: reported whole every round.
    untrackable: PageRunSet,
}

impl UffdWpTracker {
    /// Injects a userfaultfd into `target` and enables async write-protect on it. Nothing is
    /// registered until the first [`collect`](DirtyTracker::collect).
    pub fn attach(target: Target) -> Result<Self, TrackError> {
        let pagemap = target.open_pagemap()?;
        let uffd = super::inject::inject_userfaultfd(&target)?;
        let want = uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED;
        let got = uffd::api(uffd.as_fd(), want).map_err(|e| TrackError::io("UFFDIO_API", e))?;
        if got & want != want {
            return Err(TrackError::Unavailable { backend: TrackerKind::UffdWp, reason: format!("features {got:#x}") });
        }
        let ps = page_size();
        Ok(Self {
            target,
            pagemap,
            uffd,
            page_size: ps,
            tracked: PageRunSet::new(ps),
            untrackable: PageRunSet::new(ps),
        })
    }

    /// Registers and write-protects the parts of `layout`'s areas inside `new`; returns the
    /// ranges that could not be registered.
    fn arm(&mut self, layout: &MemoryLayout, new: &PageRunSet) -> PageRunSet {
        let mut refused = PageRunSet::new(self.page_size);
        for vma in layout.migrated() {
            for r in new.range(vma.start, vma.end).collect::<Vec<_>>() {
                let len = r.len_bytes(self.page_size);
                let res = uffd::register_wp(self.uffd.as_fd(), r.vaddr, len)
                    .and_then(|()| uffd::writeprotect(self.uffd.as_fd(), r.vaddr, len, true));
                if let Err(e) = res {
                    tracing::warn!(pid = self.target.pid(), vaddr = r.vaddr, path = %vma.path, error = %e,
                        "cannot write-protect area; it is reported dirty every round");
                    refused.insert(r);
                }
            }
        }
        refused
    }

    fn populated_in(&self, layout: &MemoryLayout, set: &PageRunSet) -> Result<PageRunSet, TrackError> {
        let mut out = PageRunSet::new(self.page_size);
        for vma in layout.migrated() {
            if set.range(vma.start, vma.end).next().is_none() {
                continue;
            }
            let p = populated(&self.pagemap, vma, self.page_size, ResidencyMethod::Scan)
                .map_err(|e| TrackError::io(format!("residency of {:#x}", vma.start), e))?;
            out.union_with(&p.intersection(set));
        }
        Ok(out)
    }
}

impl DirtyTracker for UffdWpTracker {
    fn kind(&self) -> TrackerKind {
        TrackerKind::UffdWp
    }

    fn pid(&self) -> i32 {
        self.target.pid()
    }

    fn collect(&mut self, layout: &MemoryLayout) -> Result<PageRunSet, TrackError> {
        let ps = self.page_size;
        let (current, new) = split_new(layout, &self.tracked, ps);
        let mut old = current.clone();
        old.subtract(&new);
        old.subtract(&self.untrackable);

        // Arm new areas first, then read what they hold: a write after arming shows up next round.
        let refused = self.arm(layout, &new);
        let mut dirty = self.populated_in(layout, &new)?;

        let q = ScanQuery {
            flags: pagemap_scan::PM_SCAN_WP_MATCHING | pagemap_scan::PM_SCAN_CHECK_WPASYNC,
            category_mask: pagemap_scan::PAGE_IS_WRITTEN,
            return_mask: pagemap_scan::PAGE_IS_WRITTEN,
            ..Default::default()
        };
        let mut rearm = PageRunSet::new(ps);
        for vma in layout.migrated() {
            for r in old.range(vma.start, vma.end).collect::<Vec<PageRun>>() {
                match scan_into(&self.pagemap, r.vaddr, r.end(ps), &q, &mut dirty) {
                    Ok(()) => {}
                    // The area lost its registration (replaced or moved): register it again.
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => rearm.insert(r),
                    Err(e) => return Err(TrackError::io(format!("PAGEMAP_SCAN of {:#x}", r.vaddr), e)),
                }
            }
        }
        if !rearm.is_empty() {
            tracing::debug!(pid = self.target.pid(), ranges = rearm.run_count(), "re-registering replaced areas");
            let refused_again = self.arm(layout, &rearm);
            dirty.union_with(&self.populated_in(layout, &rearm)?);
            self.untrackable.union_with(&refused_again);
        }
        self.untrackable.union_with(&refused);
        self.untrackable = self.untrackable.intersection(&current);
        let always = self.populated_in(layout, &self.untrackable)?;
        dirty.union_with(&always);
        self.tracked = current;
        Ok(dirty)
    }
}
