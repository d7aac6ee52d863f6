//! The receiver's store worker: one OS thread that owns the [`PageStore`] and applies, in
//! arrival order, the decoded runs every data stream sends it, so file I/O never blocks the
//! async side and the store needs no lock.
//!
//! The control loop asks it, through the same channel, to tell when a round is complete
//! ([`StoreOp::AwaitRound`]: when `pages_in_round` reaches the count the sender announced) and to
//! commit once every page of the session arrived ([`StoreOp::Commit`]). More pages than
//! announced is a protocol violation. The worker ends when every sender of its channel is gone;
//! dropping the store removes its unnamed staging file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use pagestream_engine::round_digest::RoundDigest;
use pagestream_engine::store::{CommittedImage, PageStore};
use tokio::sync::{mpsc, oneshot};

use super::error::TransportError;
use super::session::Fault;
use crate::wire::{DataRun, RunContent};

/// Where a commit landed.
#[derive(Debug)]
pub struct Committed {
    /// The image directory, its snapshots and what the commit wrote.
    pub image: CommittedImage,
    /// Distinct pages it holds.
    pub pages: u64,
}

/// Work for the store worker.
pub enum StoreOp {
    /// Store decoded runs, in order.
    Runs(Vec<DataRun>),
    /// Answer ([`RoundHeld`]) once round `round` holds `pages` pages (data and
    /// zero) whose digest is `digest` (a different digest fails the session).
    AwaitRound {
        /// The round.
        round: u32,
        /// Pages announced for it.
        pages: u64,
        /// The sender's digest of the round.
        digest: u64,
        /// Where the answer goes.
        done: RoundDone,
    },
    /// Once `total_pages` pages arrived over all rounds, write the image directory `dir`.
    Commit {
        /// Pages announced over the whole session.
        total_pages: u64,
        /// The image directory to create.
        dir: PathBuf,
        /// Where the answer goes.
        done: CommitDone,
    },
}

/// What the store says once a round is complete.
#[derive(Debug, Clone, Copy)]
pub struct RoundHeld {
    /// Distinct pages held.
    pub pages: u64,
    /// How long a commit would take now beyond the final round's pages
    /// ([`PageStore::commit_estimate`]).
    pub commit_estimate: Option<std::time::Duration>,
}

/// Where the answer to [`StoreOp::AwaitRound`] goes.
type RoundDone = oneshot::Sender<Result<RoundHeld, TransportError>>;
/// Where the answer to [`StoreOp::Commit`] goes.
type CommitDone = oneshot::Sender<Result<Committed, TransportError>>;

struct Worker {
    store: PageStore,
    received: u64,
    announced: HashMap<u32, u64>,
    /// The digest of what each round delivered so far.
    digests: HashMap<u32, RoundDigest>,
    round_waiter: Option<(u32, u64, u64, RoundDone)>,
    commit_waiter: Option<(u64, PathBuf, CommitDone)>,
}

/// Starts the worker thread.
pub fn spawn(
    store: PageStore,
    ops: mpsc::Receiver<StoreOp>,
    fault: Arc<Fault>,
) -> Result<JoinHandle<()>, TransportError> {
    let worker = Worker {
        store,
        received: 0,
        announced: HashMap::new(),
        digests: HashMap::new(),
        round_waiter: None,
        commit_waiter: None,
    };
    std::thread::Builder::new()
        .name("pagestream-store".into())
        .spawn(move || worker.run(ops, &fault))
        .map_err(|e| TransportError::io("starting the store thread", e))
}

impl Worker {
    fn run(mut self, mut ops: mpsc::Receiver<StoreOp>, fault: &Fault) {
        while let Some(op) = ops.blocking_recv() {
            if let Err(e) = self.apply(op) {
                fault.raise(e);
                // Keep draining (and dropping) so senders never block on a dead worker.
                while ops.blocking_recv().is_some() {}
                return;
            }
        }
    }

    fn apply(&mut self, op: StoreOp) -> Result<(), TransportError> {
        match op {
            StoreOp::Runs(runs) => {
                for run in runs {
                    self.put(run)?;
                }
            }
            StoreOp::AwaitRound { round, pages, digest, done } => {
                self.announced.insert(round, pages);
                self.round_waiter = Some((round, pages, digest, done));
            }
            StoreOp::Commit { total_pages, dir, done } => self.commit_waiter = Some((total_pages, dir, done)),
        }
        self.answer_round();
        self.answer_commit();
        Ok(())
    }

    fn put(&mut self, run: DataRun) -> Result<(), TransportError> {
        let ps = self.store.page_size();
        let digest = self.digests.entry(run.round).or_insert_with(|| RoundDigest::new(ps));
        match &run.content {
            RunContent::Data(data) => {
                digest.add_pages(run.run.vaddr, data);
                self.store.put_pages(run.round, run.pagemap, run.run, data)?
            }
            RunContent::Zero => {
                digest.add_zero(run.run.vaddr, run.run.nr_pages);
                self.store.put_zero(run.round, run.pagemap, run.run)?
            }
            RunContent::Discard => {
                // Not a page of the round: no digest, no count.
                self.store.discard(run.round, run.pagemap, run.run)?;
                return Ok(());
            }
        }
        self.received += run.run.nr_pages;
        if let Some(&announced) = self.announced.get(&run.round) {
            let held = self.store.pages_in_round(run.round);
            if held > announced {
                return Err(TransportError::Violation(format!(
                    "round {} carried {held} pages, more than the {announced} announced",
                    run.round
                )));
            }
        }
        Ok(())
    }

    fn answer_round(&mut self) {
        let Some((round, pages, digest, _)) = &self.round_waiter else { return };
        let held = self.store.pages_in_round(*round);
        let ours = self.digests.get(round).map_or(0, RoundDigest::value);
        let answer = if held == *pages && ours == *digest {
            let round = *round;
            self.digests.remove(&round);
            // Every round up to this one is complete (the control loop awaits them in order).
            let commit_estimate = self.store.round_complete(round);
            Ok(RoundHeld { pages: self.store.len_pages(), commit_estimate })
        } else if held == *pages {
            Err(TransportError::Violation(format!(
                "round {round}: the pages received do not match the sender's digest ({ours:#018x} here, \
                 {digest:#018x} sent)"
            )))
        } else if held > *pages {
            Err(TransportError::Violation(format!(
                "round {round} carried {held} pages, more than the {pages} announced"
            )))
        } else {
            return;
        };
        if let Some((_, _, _, done)) = self.round_waiter.take() {
            let _ = done.send(answer);
        }
    }

    fn answer_commit(&mut self) {
        let Some((total, _, _)) = &self.commit_waiter else { return };
        let answer = if self.received == *total {
            None
        } else if self.received > *total {
            Some(Err(TransportError::Violation(format!(
                "the session carried {} pages, more than the {total} announced",
                self.received
            ))))
        } else {
            return;
        };
        if let Some((_, dir, done)) = self.commit_waiter.take() {
            let answer = answer.unwrap_or_else(|| {
                let pages = self.store.len_pages();
                self.store.commit(&dir, 1).map(|image| Committed { image, pages }).map_err(TransportError::from)
            });
            if let Err(Ok(orphan)) = done.send(answer) {
                // Nobody is left to acknowledge it: a failed session leaves no directory.
                tracing::warn!(
                    "removing {}: the session ended while it was being committed",
                    orphan.image.dir.display()
                );
                let _ = std::fs::remove_dir_all(&orphan.image.dir);
            }
        }
    }
}
