//! [`PageStore`]'s background snapshots: turning them on, starting one after a round, and the
//! commit estimate senders fold into their downtime estimate.

use std::collections::HashMap;
use std::time::Duration;

use super::{Content, PageStore, Slot, StoreError};
use crate::criu::PagemapId;
use crate::store::image_out::Staged;
use crate::store::snapshot::{Snapshot, Snapshots};
use crate::PageRunSet;

/// Fewer new bytes than this since the last snapshot are not worth another level of the chain.
const MIN_SNAPSHOT_BYTES: u64 = 4 << 20;

/// Data pages whose newest copy no finished snapshot holds.
#[derive(Default)]
struct Unsnapshotted {
    /// All of them.
    outside_finished: u64,
    /// Those of the rounds a new snapshot would take.
    fresh: u64,
    /// Those the running snapshot does not hold either: the commit would write them itself.
    outside_snapshots: u64,
}

impl PageStore {
    /// [`enable_snapshots`](Self::enable_snapshots), or a warning that the commit will write
    /// the whole image (snapshots only make it shorter).
    pub fn enable_snapshots_or_warn(&mut self) {
        if let Err(e) = self.enable_snapshots() {
            tracing::warn!("no background snapshots (the whole image is written at commit): {e}");
        }
    }

    /// What a destination does once round `round` is complete: starts a background snapshot if
    /// one is worthwhile (a failure only makes the commit longer, so it is logged) and returns
    /// the commit estimate to report with the round's acknowledgement. One walk of the index
    /// serves both.
    pub fn round_complete(&mut self, round: u32) -> Option<Duration> {
        self.snapshots.as_ref()?;
        // First: it collects a snapshot that finished, which the counts must see.
        let may = self.may_snapshot(round);
        let counts = self.unsnapshotted(round);
        let started = if may { self.start_snapshot(round, counts.fresh) } else { Ok(false) };
        let commit_writes = match started {
            Ok(true) => {
                tracing::debug!(round, "background snapshot started");
                // The new snapshot takes the fresh pages; the commit would write the rest.
                counts.outside_finished - counts.fresh
            }
            Ok(false) => counts.outside_snapshots,
            Err(e) => {
                tracing::warn!(round, "no background snapshot: {e}");
                counts.outside_snapshots
            }
        };
        self.estimate_for(commit_writes)
    }

    /// Lets [`snapshot`](Self::snapshot) write background parent images (in `staging_dir`, which
    /// must be on the destination's file system); the commit then makes a pre-dump chain.
    pub fn enable_snapshots(&mut self) -> Result<(), StoreError> {
        if self.snapshots.is_none() {
            self.snapshots = Some(Snapshots::new(&self.staging_dir, self.page_size)?);
        }
        Ok(())
    }

    /// Starts a background snapshot of every page whose newest round is `upto_round` or
    /// earlier, as stored now (a page stored again later, in any round, is not taken from it).
    /// Meant for once round `upto_round` is complete; correct whenever called. Returns whether
    /// one started: not when snapshots are off, one is still being written, the chain is at
    /// its longest, or too little changed since the previous one.
    pub fn snapshot(&mut self, upto_round: u32) -> Result<bool, StoreError> {
        // Checked before the index is walked: most calls (small later rounds) stop here.
        if !self.may_snapshot(upto_round) {
            return Ok(false);
        }
        let fresh = self.unsnapshotted(upto_round).fresh;
        self.start_snapshot(upto_round, fresh)
    }

    /// How long a commit would take now beyond the final round's own pages: finishing the
    /// running snapshot (it waits for it) and writing the pages in no snapshot, at the rate
    /// snapshots make bytes durable (before one has synced anything, a guess from the
    /// staging's direct writes; `None` without snapshots or any rate). Senders fold it into
    /// their downtime estimate.
    pub fn commit_estimate(&self) -> Option<Duration> {
        self.snapshots.as_ref()?;
        self.estimate_for(self.unsnapshotted(u32::MAX).outside_snapshots)
    }

    /// Whether a snapshot of rounds up to `upto_round` may start: snapshots are on, none is
    /// being written (a finished one is collected here), the chain has room, and the newest
    /// does not already reach that round.
    fn may_snapshot(&mut self, upto_round: u32) -> bool {
        self.snapshots.as_mut().is_some_and(|s| s.can_start() && s.newest().is_none_or(|n| n.upto_round < upto_round))
    }

    /// Counts the data pages the newest finished snapshot does not hold (one walk of the index).
    fn unsnapshotted(&self, upto_round: u32) -> Unsnapshotted {
        let snaps = self.snapshots.as_ref();
        let newest = snaps.and_then(Snapshots::newest);
        let running = snaps.and_then(Snapshots::running);
        let mut counts = Unsnapshotted::default();
        for (&(id, vaddr), slot) in &self.index {
            if matches!(slot.staged_over(newest, id, vaddr), Staged::Data(_)) {
                counts.outside_finished += 1;
                counts.fresh += u64::from(slot.round <= upto_round);
                let in_running = running.is_some_and(|r| r.holds(id, vaddr, slot.round, slot.seq));
                counts.outside_snapshots += u64::from(!in_running);
            }
        }
        counts
    }

    /// Starts the snapshot of rounds up to `upto_round` if its `fresh` pages are worth another
    /// level of the chain.
    fn start_snapshot(&mut self, upto_round: u32, fresh: u64) -> Result<bool, StoreError> {
        let ps = self.page_size;
        if fresh * ps < MIN_SNAPSHOT_BYTES {
            return Ok(false);
        }
        let newest = self.snapshots.as_ref().and_then(Snapshots::newest);
        let mut pages: HashMap<PagemapId, PageRunSet> = HashMap::new();
        let mut plan = Vec::new();
        for (&(id, vaddr), slot) in self.index.iter().filter(|(_, s)| s.round <= upto_round) {
            pages.entry(id).or_insert_with(|| PageRunSet::new(ps)).insert_page(vaddr);
            plan.push((id, vaddr, slot.staged_over(newest, id, vaddr)));
        }
        self.flush_pending()?;
        // Both of the staging's descriptors: the snapshot reads long pieces through the direct
        // one (where the file system allows it) without filling the page cache, and short ones
        // (pages rewritten in place, scattered) through the buffered one, since a direct read
        // waits for the disk. Direct reads see the pages rewritten through the buffered one
        // (the kernel writes those back first).
        let staging = (self.staging.try_clone()?, self.cached.try_clone()?);
        match self.snapshots.as_mut() {
            Some(s) => s.start(upto_round, self.writes, pages, plan, staging, self.direct_min_bytes).map(|()| true),
            None => Ok(false),
        }
    }

    /// The commit estimate when the commit itself would write `pages` data pages.
    fn estimate_for(&self, pages: u64) -> Option<Duration> {
        let snaps = self.snapshots.as_ref()?;
        // The disk's write rate as the staging's direct writes saw it.
        let (bytes, took) = self.staged_io;
        let disk_rate = (bytes > 0).then(|| bytes as f64 / took.as_secs_f64().max(1e-6));
        snaps.estimate(pages * self.page_size, disk_rate)
    }
}

impl Slot {
    /// Where this page (`vaddr` of `id`) comes from in an image over `parent`.
    pub(super) fn staged_over(&self, parent: Option<&Snapshot>, id: PagemapId, vaddr: u64) -> Staged {
        match self.content {
            _ if parent.is_some_and(|p| p.holds(id, vaddr, self.round, self.seq)) => Staged::Parent,
            Content::Data(off) => Staged::Data(off),
            Content::Zero => Staged::Zero,
        }
    }
}
