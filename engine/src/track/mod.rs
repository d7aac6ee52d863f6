//! Dirty tracking: which pages of a live process changed since the last round.
//!
//! [`DirtyTracker`] has three backends, picked by probing the running kernel ([`TrackerKind::probe`])
//! or chosen explicitly:
//! * [`uffd_wp::UffdWpTracker`]: userfaultfd async write-protect + `PAGEMAP_SCAN` (Linux >= 6.7);
//!   scan and re-arm in one atomic call per area;
//! * [`soft_dirty::SoftDirtyTracker`]: `clear_refs` 4 + pagemap bit 55 (CONFIG_MEM_SOFT_DIRTY);
//! * [`digest::DigestTracker`]: a 64-bit digest per page compared with the last round (any kernel;
//!   drops pages written with unchanged content).
//!
//! Every backend yields all pages that hold data on the first round and for areas it sees for the
//! first time; never-touched and zero-PFN pages are not data.

pub mod digest;
pub mod inject;
pub mod soft_dirty;
pub mod uffd_wp;

use std::fmt;
use std::str::FromStr;

use crate::process::maps::MemoryLayout;
use crate::process::target::{Target, TargetError};
use crate::runset::PageRunSet;
use crate::PageRun;

/// Why tracking failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{backend} tracking is not available on this kernel: {reason}")]
    Unavailable { backend: TrackerKind, reason: String },
    #[error("{op}: {err}")]
    Io { op: String, err: std::io::Error },
}

impl TrackError {
    pub(crate) fn io(op: impl Into<String>, err: std::io::Error) -> Self {
        TrackError::Io { op: op.into(), err }
    }
}

/// The tracking backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackerKind {
    SoftDirty,
    UffdWp,
    Digest,
}

impl TrackerKind {
    /// All backends, best first.
    pub const ALL: [TrackerKind; 3] = [TrackerKind::UffdWp, TrackerKind::SoftDirty, TrackerKind::Digest];

    /// Whether the running kernel supports this backend; `Err` carries the reason.
    pub fn available(self) -> Result<(), String> {
        match self {
            TrackerKind::UffdWp => uffd_wp::probe(),
            TrackerKind::SoftDirty => soft_dirty::probe(),
            TrackerKind::Digest => Ok(()),
        }
    }

    /// The best backend the running kernel offers.
    pub fn probe() -> TrackerKind {
        Self::ALL.into_iter().find(|k| k.available().is_ok()).unwrap_or(TrackerKind::Digest)
    }

    /// Starts tracking `target` with this backend.
    pub fn open(self, target: Target) -> Result<Box<dyn DirtyTracker>, TrackError> {
        if let Err(reason) = self.available() {
            return Err(TrackError::Unavailable { backend: self, reason });
        }
        Ok(match self {
            TrackerKind::UffdWp => Box::new(uffd_wp::UffdWpTracker::attach(target)?),
            TrackerKind::SoftDirty => Box::new(soft_dirty::SoftDirtyTracker::new(target)?),
            TrackerKind::Digest => Box::new(digest::DigestTracker::new(target)?),
        })
    }
}

impl fmt::Display for TrackerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrackerKind::SoftDirty => "soft-dirty",
            TrackerKind::UffdWp => "uffd-wp",
            TrackerKind::Digest => "digest",
        })
    }
}

impl FromStr for TrackerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "soft-dirty" => Ok(TrackerKind::SoftDirty),
            "uffd-wp" => Ok(TrackerKind::UffdWp),
            "digest" => Ok(TrackerKind::Digest),
            other => Err(format!("unknown tracker {other:?} (soft-dirty, uffd-wp, digest)")),
        }
    }
}

/// Round-by-round dirty page tracking of one process.
pub trait DirtyTracker: Send {
    /// The backend.
    fn kind(&self) -> TrackerKind;

    /// The target's pid.
    fn pid(&self) -> i32;

    /// The pages of the migrated areas of `layout` (the process's current memory map) that hold
    /// data and changed since the previous call, re-arming tracking for the next round. The first
    /// call, and the first call that sees an area, report every page of it that holds data.
    fn collect(&mut self, layout: &MemoryLayout) -> Result<PageRunSet, TrackError>;

    /// Tells the tracker which bytes were actually sent for `run` (read after `collect`, so they
    /// may be newer than what `collect` saw). Content-based trackers must compare the next round
    /// against these bytes, or a page that changes and changes back between `collect` and the
    /// next round would never be re-sent. Write-tracking backends ignore it.
    fn note_sent(&mut self, _run: PageRun, _data: &[u8]) {}
}

/// The areas of `layout` that migration tracks, and the part of them not tracked before.
pub(crate) fn split_new(layout: &MemoryLayout, tracked: &PageRunSet, page_size: u64) -> (PageRunSet, PageRunSet) {
    let current = layout.migrated_set(page_size);
    let mut new = current.clone();
    new.subtract(tracked);
    (current, new)
}
