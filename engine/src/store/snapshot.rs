//! [`Snapshots`]: parent images of a [`PageStore`](super::PageStore) written by a background
//! thread while later pre-copy rounds arrive, so that the commit, made while the source is
//! frozen, writes only the pages that changed since the newest snapshot (as `criu dump
//! --prev-images-dir` does after `criu pre-dump`).
//!
//! A snapshot of round `r` holds every page whose newest copy, when it was planned, was from
//! round `r` or earlier: as data, or as `PE_PARENT` where the previous snapshot already holds
//! it unchanged. Each stored page carries the store's write sequence number, and a snapshot
//! counts as holding a page only if that page was stored before it was planned: a page
//! rewritten in place later (it may land torn in the snapshot) is taken by the next image (a
//! snapshot or the commit) whole, whatever round it came with.
//!
//! Each snapshot is a complete, fsynced image directory under a hidden name next to the
//! destination, its `parent` link reading `../pre-<k-1>`. The commit moves them into the image
//! directory as `pre-1`, `pre-2`, ... and links the image to the newest, so the committed
//! directory is one self-contained pre-dump chain. A store dropped without commit stops a
//! running snapshot and removes them all.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::image_out::{write_pages, Staged};
use super::page_store::StoreError;
use super::snapshot_owner::SnapshotOwner;
use crate::criu::{ImageDirWriter, PagemapId};
use crate::sys::direct_io::{refused, DIRECT_MIN_BYTES};
use crate::PageRunSet;

/// The most snapshots one store writes (each is a level of the committed pre-dump chain).
pub const MAX_SNAPSHOTS: usize = 8;

/// A finished snapshot.
pub(crate) struct Snapshot {
    /// Its (hidden) directory.
    path: PathBuf,
    /// The newest round it holds.
    pub(crate) upto_round: u32,
    /// The store's write sequence when it was planned: it holds no page stored later.
    upto_seq: u64,
    /// The pages it holds.
    pub(crate) pages: HashMap<PagemapId, PageRunSet>,
}

impl Snapshot {
    /// Whether it holds page `vaddr` of `id` as stored in round `round` at write sequence `seq`.
    pub(crate) fn holds(&self, id: PagemapId, vaddr: u64, round: u32, seq: u64) -> bool {
        round <= self.upto_round && seq <= self.upto_seq && self.pages.get(&id).is_some_and(|s| s.contains(vaddr))
    }
}

struct Running {
    snapshot: Snapshot,
    /// Page bytes it writes.
    bytes: u64,
    cancel: Arc<AtomicBool>,
    /// Page bytes written and synced so far.
    synced: Arc<AtomicU64>,
    /// When `synced` was last updated (µs since the start): the rate is judged at the syncs,
    /// so that it does not sag between them.
    synced_at_us: Arc<AtomicU64>,
    /// The thread's result: how long writing and syncing took.
    handle: JoinHandle<Result<Duration, StoreError>>,
}

/// The snapshots of one store; see the module documentation.
pub(crate) struct Snapshots {
    page_size: u64,
    done: Vec<Snapshot>,
    running: Option<Running>,
    /// Page bytes of the finished snapshots and the time they took (write and fsync): the rate
    /// the commit's own writes are estimated with.
    written: (u64, Duration),
    // Declared last: its lock file goes after the directories `Drop` removes.
    owner: SnapshotOwner,
    next_seq: u64,
}

impl Snapshots {
    /// Snapshots in hidden directories under `dir` (next to the destination); those a
    /// receiver that is gone left there are removed first ([`SnapshotOwner`]).
    pub(crate) fn new(dir: &Path, page_size: u64) -> std::io::Result<Self> {
        let owner = SnapshotOwner::new(dir)?;
        Ok(Self { owner, next_seq: 0, page_size, done: Vec::new(), running: None, written: (0, Duration::ZERO) })
    }

    /// Whether another snapshot may start now (none running, fewer than [`MAX_SNAPSHOTS`]).
    pub(crate) fn can_start(&mut self) -> bool {
        if self.running.as_ref().is_some_and(|r| r.handle.is_finished()) {
            self.settle();
        }
        self.running.is_none() && self.done.len() < MAX_SNAPSHOTS
    }

    /// The newest finished snapshot.
    pub(crate) fn newest(&self) -> Option<&Snapshot> {
        self.done.last()
    }

    /// The snapshot being written.
    pub(crate) fn running(&self) -> Option<&Snapshot> {
        self.running.as_ref().map(|r| &r.snapshot)
    }

    /// Starts writing `plan` (sorted by pagemap and address; `Staged::Data` offsets into
    /// the staging file, given as its direct and its buffered descriptor) as a snapshot of
    /// rounds up to `upto_round`, planned at write sequence `upto_seq`, holding `pages`; around
    /// the page cache if it copies `direct_min` bytes or more.
    pub(crate) fn start(
        &mut self,
        upto_round: u32,
        upto_seq: u64,
        pages: HashMap<PagemapId, PageRunSet>,
        plan: Vec<(PagemapId, u64, Staged)>,
        (direct, cached): (File, File),
        direct_min: u64,
    ) -> Result<(), StoreError> {
        let path = self.owner.path(self.next_seq);
        self.next_seq += 1;
        let mut w = ImageDirWriter::create(&path, self.page_size, 1)?;
        if !self.done.is_empty() {
            w.set_parent(Path::new(&format!("../pre-{}", self.done.len())))?;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let synced = Arc::new(AtomicU64::new(0));
        let synced_at_us = Arc::new(AtomicU64::new(0));
        let (stop, count, at) = (cancel.clone(), synced.clone(), synced_at_us.clone());
        let ps = self.page_size;
        let bytes = plan.iter().filter(|(_, _, s)| matches!(s, Staged::Data(_))).count() as u64 * ps;
        let handle = std::thread::Builder::new().name("pagestream-snapshot".into()).spawn(move || {
            let t0 = Instant::now();
            let mut direct_ok = bytes >= direct_min;
            let mut read = |buf: &mut [u8], off: u64| {
                if direct_ok && buf.len() >= DIRECT_MIN_BYTES {
                    match direct.read_exact_at(buf, off) {
                        Err(e) if refused(&e) => direct_ok = false,
                        other => return Ok(other?),
                    }
                }
                Ok(cached.read_exact_at(buf, off)?)
            };
            let synced = |bytes| {
                at.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                count.store(bytes, Ordering::Relaxed);
            };
            let cancelled = || stop.load(Ordering::Relaxed);
            write_pages(&mut w, ps, plan.into_iter(), &mut read, &cancelled, Some(&synced), direct_min)?;
            w.commit()?;
            Ok(t0.elapsed())
        })?;
        let snapshot = Snapshot { path, upto_round, upto_seq, pages };
        self.running = Some(Running { snapshot, bytes, cancel, synced, synced_at_us, handle });
        Ok(())
    }

    /// Waits for the running snapshot, if any; a failed one is logged and forgotten (the next
    /// image then holds its pages).
    pub(crate) fn settle(&mut self) {
        let Some(running) = self.running.take() else { return };
        match running.handle.join() {
            Ok(Ok(took)) => {
                let bytes = running.synced.load(Ordering::Relaxed);
                tracing::debug!(
                    round = running.snapshot.upto_round,
                    bytes,
                    ms = took.as_millis() as u64,
                    "snapshot written"
                );
                self.written = (self.written.0 + bytes, self.written.1 + took);
                self.done.push(running.snapshot);
            }
            Ok(Err(StoreError::Cancelled)) => {}
            Ok(Err(e)) => {
                tracing::warn!(round = running.snapshot.upto_round, "background snapshot failed: {e}");
                // It may have failed after its directory was moved into place.
                let _ = std::fs::remove_dir_all(&running.snapshot.path);
            }
            Err(_) => tracing::warn!(round = running.snapshot.upto_round, "background snapshot thread panicked"),
        }
    }

    /// How long a commit would take now: waiting for the running snapshot to write and sync
    /// what it has not synced yet, then writing `own` page bytes no snapshot holds. At the rate
    /// snapshots make bytes durable (the finished ones, else the running one once it synced a
    /// first piece), else at a quarter of `disk_rate` (a cautious guess: each byte is read
    /// back, written and synced). `None` when no rate is known.
    pub(crate) fn estimate(&self, own: u64, disk_rate: Option<f64>) -> Option<Duration> {
        let synced = self.running.as_ref().map_or(0, |r| r.synced.load(Ordering::Relaxed));
        let rate = match (self.written, &self.running) {
            ((b, t), _) if b > 0 => b as f64 / t.as_secs_f64().max(1e-6),
            (_, Some(r)) if synced > 0 => {
                let at = Duration::from_micros(r.synced_at_us.load(Ordering::Relaxed));
                synced as f64 / at.as_secs_f64().max(1e-6)
            }
            _ => disk_rate.filter(|r| *r > 0.0)? / 4.0,
        };
        let running_left = self.running.as_ref().map_or(0, |r| r.bytes.saturating_sub(synced));
        Some(Duration::from_secs_f64((running_left + own) as f64 / rate))
    }

    /// Before a commit whose newest round is `last_round`: stops a snapshot that started after
    /// that round (the commit writes the same pages itself, without the wait), else waits for
    /// the running one (its work shrinks what the commit writes).
    pub(crate) fn settle_for_commit(&mut self, last_round: Option<u32>) {
        if let Some(running) = &self.running {
            if last_round.is_some_and(|last| running.snapshot.upto_round >= last) {
                running.cancel.store(true, Ordering::Relaxed);
            }
        }
        self.settle();
    }

    /// Moves every finished snapshot into `w`'s directory as `pre-1`, `pre-2`, ... and links
    /// `w` to the newest; returns how many.
    pub(crate) fn adopt_into(&mut self, w: &mut ImageDirWriter) -> Result<usize, StoreError> {
        for (k, snap) in self.done.iter().enumerate() {
            let to = w.tmp_path().join(format!("pre-{}", k + 1));
            std::fs::rename(&snap.path, &to)?;
        }
        if !self.done.is_empty() {
            w.set_parent(Path::new(&format!("pre-{}", self.done.len())))?;
        }
        // They belong to `w` now (which removes them if it is not committed).
        let n = self.done.len();
        self.done.clear();
        Ok(n)
    }
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.cancel.store(true, Ordering::Relaxed);
        }
        self.settle();
        for snap in &self.done {
            if let Err(e) = std::fs::remove_dir_all(&snap.path) {
                tracing::warn!(path = %snap.path.display(), "could not remove a snapshot: {e}");
            }
        }
    }
}
