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
    /// the commit estimate to report with the round's acknowledgement.
    pub fn round_complete(&mut self, round: u32) -> Option<Duration> {
        match self.snapshot(round) {
            Ok(true) => tracing::debug!(round, "background snapshot started"),
            Ok(false) => {}
            Err(e) => tracing::warn!(round, "no background snapshot: {e}"),
        }
        self.commit_estimate()
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
        let Some(s) = self.snapshots.as_mut() else { return Ok(false) };
        if !s.can_start() || s.newest().is_some_and(|n| n.upto_round >= upto_round) {
            return Ok(false);
        }
        let ps = self.page_size;
        let newest = self.snapshots.as_ref().and_then(Snapshots::newest);
        let held = self.index.iter().filter(|(_, s)| s.round <= upto_round);
        // Counted before anything is built: most calls (small later rounds) stop here.
        let fresh =
            held.clone().filter(|(&(id, v), s)| matches!(s.staged_over(newest, id, v), Staged::Data(_))).count();
        if fresh as u64 * ps < MIN_SNAPSHOT_BYTES {
            return Ok(false);
        }
        let mut pages: HashMap<PagemapId, PageRunSet> = HashMap::new();
        let mut plan = Vec::new();
        for (&(id, vaddr), slot) in held {
            pages.entry(id).or_insert_with(|| PageRunSet::new(ps)).insert_page(vaddr);
            plan.push((id, vaddr, slot.staged_over(newest, id, vaddr)));
        }
        self.flush_pending()?;
        let staging = self.cached.try_clone()?;
        match self.snapshots.as_mut() {
            Some(s) => s.start(upto_round, self.writes, pages, plan, staging).map(|()| true),
            None => Ok(false),
        }
    }

    /// How long a commit would take now beyond the final round's own pages: the page bytes not
    /// in the newest finished snapshot at the rate snapshots make them durable (before one
    /// has synced anything, a guess from the staging's direct writes; `None` without snapshots
    /// or any rate). Senders fold it into their downtime estimate.
    pub fn commit_estimate(&self) -> Option<Duration> {
        let snaps = self.snapshots.as_ref()?;
        let newest = snaps.newest();
        let backlog = self
            .index
            .iter()
            .filter(|(&(id, vaddr), slot)| {
                matches!(slot.content, Content::Data(_))
                    && !newest.is_some_and(|n| n.holds(id, vaddr, slot.round, slot.seq))
            })
            .count() as u64
            * self.page_size;
        // The disk's write rate as the staging's direct writes saw it.
        let (bytes, took) = self.staged_io;
        let disk_rate = (bytes > 0).then(|| bytes as f64 / took.as_secs_f64().max(1e-6));
        snaps.estimate(backlog, disk_rate)
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
