//! Byte-for-byte check of an image directory against the memory of a (frozen) process: every
//! page that holds data in the process must be in the image with the same bytes (or be zero and
//! absent), and every page the image holds must match the process.

use std::path::Path;

use crate::criu::{ImageChain, ImageError, PageLookup, PagemapId};
use crate::page::is_zero;
use crate::page_size;
use crate::process::maps::MemoryLayout;
use crate::process::residency::{populated_in, ResidencyMethod};
use crate::process::target::{Target, TargetError};
use crate::read::PageReader;

/// Why verification could not run (a mismatch is not an error: see [`VerifyReport`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("reading process memory layout: {0}")]
    Io(#[from] std::io::Error),
}

/// The outcome.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Pages compared.
    pub pages: u64,
    /// Pages whose bytes differ (first few addresses kept in `examples`).
    pub mismatched: u64,
    /// Pages holding non-zero data in the process but absent from the image.
    pub missing: u64,
    /// Non-zero pages in the image where the process has no data.
    pub stale: u64,
    /// Up to 10 addresses of problems.
    pub examples: Vec<u64>,
}

impl VerifyReport {
    /// Whether image and process agree on every page.
    pub fn is_equal(&self) -> bool {
        self.mismatched == 0 && self.missing == 0 && self.stale == 0
    }

    fn note(&mut self, addr: u64) {
        if self.examples.len() < 10 {
            self.examples.push(addr);
        }
    }
}

/// Compares `image_dir` (pagemap `Task(pid)`) with the memory of `target`.
pub fn verify_image(target: &Target, image_dir: &Path) -> Result<VerifyReport, VerifyError> {
    let ps = page_size();
    let pid = target.pid();
    let id = PagemapId::Task(pid as u64);
    let chain = ImageChain::open(image_dir, None, ps)?;
    chain.verify()?;
    let layout = MemoryLayout::read(pid)?;
    let pagemap = target.open_pagemap()?;
    let method = ResidencyMethod::probe();
    let resident = populated_in(&pagemap, &layout, ps, method)?;
    let mut report = VerifyReport::default();
    let mut reader = PageReader::new(target, ps)?;
    let mut failure = None;
    reader.read(resident.iter(), |run, bytes| {
        for (i, page) in bytes.chunks_exact(ps as usize).enumerate() {
            let addr = run.vaddr + i as u64 * ps;
            report.pages += 1;
            match chain.page_at(id, addr) {
                Ok(PageLookup::Data(d)) if d == page => {}
                Ok(PageLookup::Data(_)) => {
                    report.mismatched += 1;
                    report.note(addr);
                }
                Ok(_) if is_zero(page) => {}
                Ok(_) => {
                    report.missing += 1;
                    report.note(addr);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    // Image pages where the process holds nothing must be zero.
    if let Some(pm) = chain.levels().first().and_then(|l| l.pagemap(id)) {
        for e in &pm.pagemap.entries {
            for k in 0..e.nr_pages {
                let addr = e.vaddr + k * ps;
                if resident.contains(addr) {
                    continue;
                }
                if let PageLookup::Data(d) = chain.page_at(id, addr)? {
                    if !is_zero(&d) {
                        report.stale += 1;
                        report.note(addr);
                    }
                }
            }
        }
    }
    Ok(report)
}
