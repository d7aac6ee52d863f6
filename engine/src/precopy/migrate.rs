//! [`migrate`]: the pre-copy round loop.
//!
//! Round 0 sends every page that holds data; each later live round sends what the tracker saw
//! dirtied since. After each round the policy looks at the next dirty set; when it stops the
//! loop, the source is frozen, the final dirty set (plus whatever was dirtied meanwhile) is sent,
//! and the sink commits. The source stays frozen in the returned [`CommittedMigration`] until the
//! caller stops it for good or resumes it; on every error path it is thawed and the destination
//! told to abort, so the source is never lost.

use std::io;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::policy::{PreCopyPolicy, RoundMeasure, StopReason, Verdict};
use crate::criu::PagemapId;
use crate::page::is_zero;
use crate::process::freeze::{FreezeMethod, Frozen};
use crate::process::maps::MemoryLayout;
use crate::process::residency::{populated_in, ResidencyMethod};
use crate::process::target::{Target, TargetError};
use crate::read::PageReader;
use crate::runset::PageRunSet;
use crate::sink::{CommitReceipt, PageSink, RoundSummary, SinkError};
use crate::track::{DirtyTracker, TrackError};
use crate::{page_size, PageRun};

/// Why a migration failed (the source is running again and the destination was told to abort).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Track(#[from] TrackError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("freezing the source: {0}")]
    Freeze(io::Error),
    #[error("reading the memory map: {0}")]
    Maps(io::Error),
}

/// How to migrate.
#[derive(Clone, Debug)]
pub struct MigrationConfig {
    pub policy: PreCopyPolicy,
    pub freeze: FreezeMethod,
    pub freeze_timeout: Duration,
    /// No live rounds: freeze at once and send everything in one (final) round.
    pub stop_and_copy: bool,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            policy: PreCopyPolicy::default(),
            freeze: FreezeMethod::Signal,
            freeze_timeout: Duration::from_secs(10),
            stop_and_copy: false,
        }
    }
}

/// One round as reported to the user.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RoundRecord {
    pub round: u32,
    pub final_round: bool,
    pub dirty_pages: u64,
    pub zero_pages: u64,
    /// Pages the destination held that the source no longer has (unmapped: dropped).
    pub discarded_pages: u64,
    pub sent_pages: u64,
    pub missing_pages: u64,
    pub raw_bytes: u64,
    pub wire_bytes: u64,
    pub duration_ms: f64,
    /// The policy's estimate for sending the next dirty set (after this round), if any.
    pub est_downtime_ms: Option<f64>,
}

/// The whole migration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MigrationReport {
    pub rounds: Vec<RoundRecord>,
    pub stop_reason: StopReason,
    pub total_ms: f64,
    /// Freeze to the destination's durable commit.
    pub downtime_ms: f64,
    /// Pages the destination holds, in bytes.
    pub memory_bytes: u64,
    pub wire_bytes: u64,
    pub receipt: CommitReceipt,
}

/// A migration the destination confirmed durable; the source is still frozen.
#[derive(Debug)]
pub struct CommittedMigration {
    pub report: MigrationReport,
    frozen: Frozen,
    pid: i32,
}

impl CommittedMigration {
    /// The frozen source (to verify its memory before releasing it).
    pub fn frozen(&self) -> &Frozen {
        &self.frozen
    }

    /// Stops the source for good (SIGKILL to the frozen tree, or `cgroup.kill`).
    pub fn stop_source(self) -> io::Result<()> {
        let CommittedMigration { frozen, pid, .. } = self;
        let result = match frozen.method() {
            FreezeMethod::Cgroup(dir) => std::fs::write(dir.join("cgroup.kill"), "1"),
            FreezeMethod::Signal => {
                let mut r = Ok(());
                for p in frozen.stopped().iter().copied().chain(std::iter::once(pid)) {
                    if let Err(e) = kill(Pid::from_raw(p), Signal::SIGKILL) {
                        if e != nix::errno::Errno::ESRCH {
                            r = Err(io::Error::from(e));
                        }
                    }
                }
                r
            }
        };
        match &result {
            Ok(()) => frozen.keep_frozen(),
            Err(_) => drop(frozen), // could not kill: at least do not leave it frozen
        }
        result
    }

    /// Resumes the source (`--leave-running`): the destination has a copy, the source goes on.
    pub fn resume_source(self) -> io::Result<()> {
        self.frozen.thaw()
    }
}

/// Tracks what the destination holds and corrects it when the source drops memory behind the
/// tracker's back: pages the destination holds that are no longer resident become zero (they
/// were discarded, e.g. freed with MADV_DONTNEED), and pages outside every migrated area now are
/// dropped (the area was unmapped or shrunk).
struct Holdings {
    pagemap: std::fs::File,
    method: ResidencyMethod,
    held: PageRunSet,
}

impl Holdings {
    /// (pages to send as zero, pages to discard) given the current layout.
    fn reconcile(&self, layout: &MemoryLayout) -> Result<(PageRunSet, PageRunSet), MigrateError> {
        let ps = page_size();
        if self.held.is_empty() {
            return Ok((PageRunSet::new(ps), PageRunSet::new(ps)));
        }
        let areas = layout.migrated_set(ps);
        let resident = populated_in(&self.pagemap, layout, ps, self.method).map_err(MigrateError::Maps)?;
        let mut gone = self.held.clone();
        gone.subtract(&resident);
        let zero = gone.intersection(&areas);
        gone.subtract(&areas);
        Ok((zero, gone))
    }
}

/// Everything a round needs on the source side.
struct RoundSender<'t> {
    reader: PageReader,
    tracker: &'t mut dyn DirtyTracker,
    holdings: Holdings,
    id: PagemapId,
}

impl RoundSender<'_> {
    /// Reads `set` and sends it as round `round`: zero pages as zero runs, the rest as data.
    fn send_set(&mut self, sink: &mut dyn PageSink, set: &PageRunSet, round: u32) -> Result<RoundRecord, MigrateError> {
        let (reader, tracker, id) = (&mut self.reader, &mut *self.tracker, self.id);
        let ps = page_size();
        let mut rec = RoundRecord { round, dirty_pages: set.len_pages(), ..Default::default() };
        let mut failure: Option<SinkError> = None;
        let report = reader.read(set.iter(), |run, bytes| {
            if failure.is_some() {
                return;
            }
            tracker.note_sent(run, bytes);
            let pages: Vec<&[u8]> = bytes.chunks_exact(ps as usize).collect();
            let mut i = 0;
            while i < pages.len() {
                let zero = is_zero(pages[i]);
                let mut j = i + 1;
                while j < pages.len() && is_zero(pages[j]) == zero {
                    j += 1;
                }
                let sub = PageRun::new(run.vaddr + i as u64 * ps, (j - i) as u64);
                let r = if zero {
                    rec.zero_pages += sub.nr_pages;
                    sink.send_zero(id, sub)
                } else {
                    rec.sent_pages += sub.nr_pages;
                    sink.send_pages(id, sub, &bytes[i * ps as usize..j * ps as usize])
                };
                if let Err(e) = r {
                    failure = Some(e);
                    return;
                }
                i = j;
            }
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        rec.missing_pages = report.missing.len_pages();
        Ok(rec)
    }

    /// One round: reconcile holdings, send `set`, end the round; returns what it did.
    fn run_round(
        &mut self,
        sink: &mut dyn PageSink,
        set: &PageRunSet,
        round: u32,
        layout: &MemoryLayout,
    ) -> Result<(RoundRecord, RoundMeasure), MigrateError> {
        let id = self.id;
        let before = sink.stats();
        let t0 = Instant::now();
        let (zero, discard) = self.holdings.reconcile(layout)?;
        sink.begin_round(round)?;
        let mut rec = self.send_set(sink, set, round)?;
        let mut zero = zero;
        zero.subtract(set);
        for r in zero.iter() {
            sink.send_zero(id, r)?;
        }
        rec.zero_pages += zero.len_pages();
        for r in discard.iter() {
            sink.discard(id, r)?;
        }
        rec.discarded_pages = discard.len_pages();
        self.holdings.held.union_with(set);
        self.holdings.held.subtract(&discard);
        sink.end_round(&RoundSummary { round, data_pages: rec.sent_pages, zero_pages: rec.zero_pages })?;
        let after = sink.stats();
        let duration = t0.elapsed();
        rec.raw_bytes = after.raw_bytes - before.raw_bytes;
        rec.wire_bytes = after.wire_bytes - before.wire_bytes;
        rec.duration_ms = duration.as_secs_f64() * 1e3;
        let measure = RoundMeasure {
            pages: rec.sent_pages + rec.zero_pages,
            raw_bytes: rec.raw_bytes,
            wire_bytes: rec.wire_bytes,
            duration,
            commit: after.commit_estimate,
        };
        Ok((rec, measure))
    }
}

/// Migrates the memory of `target` (as pagemap `Task(pid)`) into `sink` with pre-copy rounds.
pub fn migrate(
    target: &Target,
    tracker: &mut dyn DirtyTracker,
    sink: &mut dyn PageSink,
    cfg: &MigrationConfig,
    mut on_round: impl FnMut(&RoundRecord),
) -> Result<CommittedMigration, MigrateError> {
    let result = migrate_inner(target, tracker, sink, cfg, &mut on_round);
    if let Err(e) = &result {
        sink.abort(&e.to_string());
    }
    result
}

fn migrate_inner(
    target: &Target,
    tracker: &mut dyn DirtyTracker,
    sink: &mut dyn PageSink,
    cfg: &MigrationConfig,
    on_round: &mut dyn FnMut(&RoundRecord),
) -> Result<CommittedMigration, MigrateError> {
    let start = Instant::now();
    let pid = target.pid();
    let id = PagemapId::Task(pid as u64);
    let reader = PageReader::new(target, page_size())?;
    let holdings = Holdings {
        pagemap: target.open_pagemap()?,
        method: ResidencyMethod::probe(),
        held: PageRunSet::new(page_size()),
    };
    let read_layout = || MemoryLayout::read(pid).map_err(MigrateError::Maps);

    let mut records = Vec::new();
    let mut measures = Vec::new();
    let mut sender = RoundSender { reader, tracker, holdings, id };
    let mut round = 0u32;
    // Stop-and-copy: nothing collected before the freeze, so the final collect (the tracker's
    // first) is every populated page.
    let mut dirty = PageRunSet::new(page_size());
    let stop_reason = if cfg.stop_and_copy {
        StopReason::StopAndCopy
    } else {
        let mut layout = read_layout()?;
        dirty = sender.tracker.collect(&layout)?;
        loop {
            let (mut rec, m) = sender.run_round(sink, &dirty, round, &layout)?;
            measures.push(m);
            layout = read_layout()?;
            dirty = sender.tracker.collect(&layout)?;
            let (verdict, est) = cfg.policy.decide(&measures, round, dirty.len_pages(), start.elapsed());
            rec.est_downtime_ms = est.map(|d| d.as_secs_f64() * 1e3);
            on_round(&rec);
            records.push(rec);
            round += 1;
            match verdict {
                Verdict::Continue => {}
                Verdict::Wait(pause) => {
                    tracing::debug!(round, ?pause, "the destination is still writing; another round after a pause");
                    std::thread::sleep(pause);
                    // What the process dirtied meanwhile joins the next round.
                    layout = read_layout()?;
                    dirty.union_with(&sender.tracker.collect(&layout)?);
                }
                Verdict::Stop(reason) => break reason,
            }
        }
    };

    // Final round: frozen. Whatever was dirtied since the last collect joins the pending set.
    let frozen_at = Instant::now();
    let frozen = Frozen::freeze(pid, cfg.freeze.clone(), cfg.freeze_timeout).map_err(MigrateError::Freeze)?;
    let layout = read_layout()?;
    let last = sender.tracker.collect(&layout)?;
    dirty.union_with(&last);
    let collected = frozen_at.elapsed();
    let (mut rec, _) = sender.run_round(sink, &dirty, round, &layout)?;
    rec.final_round = true;
    let sent = frozen_at.elapsed();
    let receipt = sink.commit()?;
    let downtime = frozen_at.elapsed();
    tracing::debug!(
        freeze_and_collect_ms = collected.as_millis() as u64,
        final_round_ms = (sent - collected).as_millis() as u64,
        final_round_pages = rec.dirty_pages,
        commit_ms = (downtime - sent).as_millis() as u64,
        "downtime"
    );
    rec.est_downtime_ms = None;
    on_round(&rec);
    records.push(rec);
    let report = MigrationReport {
        wire_bytes: records.iter().map(|r| r.wire_bytes).sum(),
        rounds: records,
        stop_reason,
        total_ms: start.elapsed().as_secs_f64() * 1e3,
        downtime_ms: downtime.as_secs_f64() * 1e3,
        memory_bytes: receipt.pages * page_size(),
        receipt,
    };
    Ok(CommittedMigration { report, frozen, pid })
}
