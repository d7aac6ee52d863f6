//! [`DigestTracker`]: dirty pages by content. Each round reads every page that holds data,
//! computes a 64-bit XXH3 digest and compares it with the previous round's. Works on any kernel;
//! costs a full read per round; drops pages that were written with unchanged content. A page that
//! held data and no longer does (unmapped inside a kept area, or discarded) is reported too, so
//! the destination learns that it became zero.

use std::collections::HashMap;
use std::fs::File;

use super::{DirtyTracker, TrackError, TrackerKind};
use crate::page_size;
use crate::process::maps::MemoryLayout;
use crate::process::residency::{populated, ResidencyMethod};
use crate::process::target::Target;
use crate::read::PageReader;
use crate::runset::PageRunSet;

/// Content-digest tracking of one process.
pub struct DigestTracker {
    target: Target,
    pagemap: File,
    method: ResidencyMethod,
    reader: PageReader,
    page_size: u64,
    digests: HashMap<u64, u64>,
    first: bool,
}

impl DigestTracker {
    /// Starts tracking `target`.
    pub fn new(target: Target) -> Result<Self, TrackError> {
        let ps = page_size();
        let pagemap = target.open_pagemap()?;
        let reader = PageReader::new(&target, ps)?;
        Ok(Self {
            target,
            pagemap,
            method: ResidencyMethod::probe(),
            reader,
            page_size: ps,
            digests: HashMap::new(),
            first: true,
        })
    }
}

impl DirtyTracker for DigestTracker {
    fn kind(&self) -> TrackerKind {
        TrackerKind::Digest
    }

    fn pid(&self) -> i32 {
        self.target.pid()
    }

    fn note_sent(&mut self, run: crate::PageRun, data: &[u8]) {
        let ps = self.page_size;
        for (i, page) in data.chunks_exact(ps as usize).enumerate() {
            self.digests.insert(run.vaddr + i as u64 * ps, xxhash_rust::xxh3::xxh3_64(page));
        }
    }

    fn collect(&mut self, layout: &MemoryLayout) -> Result<PageRunSet, TrackError> {
        let ps = self.page_size;
        let mut resident = PageRunSet::new(ps);
        for vma in layout.migrated() {
            let p = populated(&self.pagemap, vma, ps, self.method)
                .map_err(|e| TrackError::io(format!("residency of {:#x}", vma.start), e))?;
            resident.union_with(&p);
        }
        let mut next = HashMap::with_capacity(resident.len_pages() as usize);
        let mut dirty = PageRunSet::new(ps);
        let old = &self.digests;
        let first = self.first;
        self.reader.read(resident.iter(), |run, bytes| {
            for (i, page) in bytes.chunks_exact(ps as usize).enumerate() {
                let addr = run.vaddr + i as u64 * ps;
                let d = xxhash_rust::xxh3::xxh3_64(page);
                if first || old.get(&addr) != Some(&d) {
                    dirty.insert_page(addr);
                }
                next.insert(addr, d);
            }
        })?;
        // Pages that held data last round, are still inside a migrated area, and hold none now.
        let areas = layout.migrated_set(ps);
        for addr in self.digests.keys() {
            if !next.contains_key(addr) && areas.contains(*addr) {
                dirty.insert_page(*addr);
            }
        }
        self.digests = next;
        self.first = false;
        Ok(dirty)
    }
}
