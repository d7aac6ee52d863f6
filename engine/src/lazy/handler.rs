//! [`TaskUffd`]: one restored address space's userfaultfd and its lazy pages — fault resolution
//! (batched `UFFDIO_COPY` of the faulting page and its lazy neighbours in the direction the
//! process walks, `UFFDIO_ZEROPAGE` for holes), the non-cooperative events, and one step
//! of the background push.

use std::time::Instant;

use super::ranges::{LazyExtent, LazyRanges};
use super::source::{PageSource, SourceError};
use super::stats::LazyStats;
use crate::criu::PagemapId;
use crate::page::PageRun;
use crate::sys::uffd_fill::{FillOutcome, LazyUffd, UffdEvent};

/// Pages installed together for one fault (the faulting page and its lazy successors).
pub const FAULT_BATCH_PAGES: u64 = 16;
/// Pages installed by one background push step.
pub const PUSH_BATCH_PAGES: u64 = 16;

/// Why serving a task failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The source could not supply pages.
    #[error("task {pid}: {source}")]
    Source { pid: i32, source: SourceError },
    /// A userfaultfd operation failed in a way that is not the process's doing.
    #[error("task {pid}: {op} at {addr:#x}: {err}")]
    Uffd { pid: i32, op: &'static str, addr: u64, err: std::io::Error },
}

/// How pages got installed (for the statistics).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InstallCause {
    /// A page fault.
    Fault,
    /// The background push.
    Push,
}

/// What became of an install request.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The pages are resident.
    Done,
    /// The address space is changing: read the events, then try again.
    Again,
    /// The process is gone (`ESRCH`).
    ProcessGone,
}

/// What a background push step did.
#[derive(Debug, PartialEq, Eq)]
pub enum PushStep {
    /// It installed pages (or dropped some that were no longer lazy); more remain.
    Installed,
    /// Nothing was ready and the source's own push is still delivering: wait for it.
    Waiting,
    /// Nothing is left (or the process is gone).
    Done,
}

/// One address space being restored lazily.
pub struct TaskUffd {
    /// The pid it was handed over as (for a forked child, its parent's).
    pub pid: i32,
    /// The pagemap its data is read from.
    pub pagemap: PagemapId,
    /// Its userfaultfd.
    pub uffd: LazyUffd,
    /// Pages still lazy.
    pub lazy: LazyRanges,
    /// Where the background push goes on (just after the last fault).
    pub push_cursor: u64,
    /// Faults that met `EAGAIN` and must be retried after the pending events: (address, read at).
    pub retry: Vec<(u64, Instant)>,
    /// Whether the process has gone away.
    pub gone: bool,
    /// The lowest page the last lazy fault installed (a fault on the page below it means the
    /// process walks memory downwards).
    last_fault_start: Option<u64>,
}

/// Reusable page buffers of one batch.
pub struct Buffers {
    data: Vec<u8>,
    zero: Vec<bool>,
}

impl Buffers {
    /// Room for `pages` pages.
    pub fn new(pages: u64, page_size: u64) -> Self {
        Self { data: vec![0; (pages * page_size) as usize], zero: vec![false; pages as usize] }
    }
}

impl TaskUffd {
    /// A task with its lazy pages.
    pub fn new(pid: i32, pagemap: PagemapId, uffd: LazyUffd, lazy: LazyRanges) -> Self {
        Self { pid, pagemap, uffd, lazy, push_cursor: 0, retry: Vec::new(), gone: false, last_fault_start: None }
    }

    /// Applies the events other than page faults in order, then serves the faults (so a REMOVE
    /// is applied before faults read in the same batch). Returns the children of FORK events.
    pub fn handle_events(
        &mut self,
        events: Vec<UffdEvent>,
        source: &mut dyn PageSource,
        bufs: &mut Buffers,
        stats: &mut LazyStats,
        read_at: Instant,
    ) -> Result<Vec<TaskUffd>, HandlerError> {
        let mut faults = Vec::new();
        let mut children = Vec::new();
        for ev in events {
            match ev {
                UffdEvent::Pagefault { addr, .. } => faults.push(addr),
                UffdEvent::Remove { start, end } | UffdEvent::Unmap { start, end } => {
                    stats.pages_dropped += self.lazy.forget(start, end);
                }
                UffdEvent::Remap { from, to, len } => stats.pages_dropped += self.lazy.remap(from, to, len),
                UffdEvent::Fork(uffd) => {
                    stats.forks += 1;
                    stats.lazy_pages += self.lazy.len_pages();
                    children.push(TaskUffd::new(self.pid, self.pagemap, uffd, self.lazy.clone()));
                }
            }
        }
        stats.faults += faults.len() as u64;
        let retries = std::mem::take(&mut self.retry);
        for (addr, at) in retries.into_iter().chain(faults.into_iter().map(|a| (a, read_at))) {
            self.serve_fault(addr, at, source, bufs, stats)?;
        }
        Ok(children)
    }

    fn serve_fault(
        &mut self,
        addr: u64,
        read_at: Instant,
        source: &mut dyn PageSource,
        bufs: &mut Buffers,
        stats: &mut LazyStats,
    ) -> Result<(), HandlerError> {
        if self.gone {
            return Ok(());
        }
        let ps = source.page_size();
        let page = addr & !(ps - 1);
        let outcome = match self.lazy.lookup(page) {
            Some(e) => {
                // Batch forwards, or backwards when the previous fault's batch began on the next
                // page up.
                let descending = self.last_fault_start == Some(page + ps);
                let (start, end) = if descending {
                    (e.start.max(page.saturating_sub((FAULT_BATCH_PAGES - 1) * ps)), page + ps)
                } else {
                    (page, e.end.min(page + FAULT_BATCH_PAGES * ps))
                };
                self.last_fault_start = Some(start);
                self.push_cursor = end;
                let piece = LazyExtent { start, end, src: e.src_of(start) };
                self.install(piece, InstallCause::Fault, source, bufs, stats)?
            }
            None => self.zero_fault(page, ps, stats)?,
        };
        match outcome {
            Installed::Done => stats.record_fault_latency(read_at.elapsed()),
            Installed::Again => self.retry.push((addr, read_at)),
            Installed::ProcessGone => self.gone = true,
        }
        Ok(())
    }

    fn zero_fault(&mut self, page: u64, ps: u64, stats: &mut LazyStats) -> Result<Installed, HandlerError> {
        match self.uffd.zeropage(page, ps) {
            FillOutcome::Done | FillOutcome::Partial(_) => {
                stats.zero_faults += 1;
                Ok(Installed::Done)
            }
            FillOutcome::Exists => {
                stats.faults_already_resolved += 1;
                self.wake(page, ps)
            }
            FillOutcome::Again => Ok(Installed::Again),
            FillOutcome::Failed(err) => self.failed("UFFDIO_ZEROPAGE", page, err),
        }
    }

    fn wake(&self, page: u64, ps: u64) -> Result<Installed, HandlerError> {
        match self.uffd.wake(page, ps) {
            Ok(()) => Ok(Installed::Done),
            Err(err) => self.failed("UFFDIO_WAKE", page, err),
        }
    }

    fn failed(&self, op: &'static str, addr: u64, err: std::io::Error) -> Result<Installed, HandlerError> {
        match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(Installed::ProcessGone),
            // The range went away under us (unmapped): its UNMAP event follows; nothing to wake.
            Some(libc::ENOENT) => Ok(Installed::Done),
            _ => Err(HandlerError::Uffd { pid: self.pid, op, addr, err }),
        }
    }

    /// One background push step: up to [`PUSH_BATCH_PAGES`] lazy pages, those the source
    /// already holds first, else from the cursor on (unless `may_wait` and the source's push is
    /// still delivering: then the step waits for it rather than ask).
    pub fn push_step(
        &mut self,
        source: &mut dyn PageSource,
        bufs: &mut Buffers,
        stats: &mut LazyStats,
        may_wait: bool,
    ) -> Result<PushStep, HandlerError> {
        if self.gone || self.lazy.is_empty() {
            return Ok(PushStep::Done);
        }
        let ps = source.page_size();
        let lazy = &self.lazy;
        let ready = source.next_ready(self.pagemap, &mut |src| lazy.lookup(src).is_some_and(|e| e.src_of(src) == src));
        let from = match ready {
            Some(src) => src,
            None if may_wait && source.push_pending() => return Ok(PushStep::Waiting),
            None => self.push_cursor,
        };
        let Some(e) = self.lazy.next_from(from) else { return Ok(PushStep::Done) };
        let end = e.end.min(e.start + PUSH_BATCH_PAGES * ps);
        self.push_cursor = end;
        let piece = LazyExtent { start: e.start, end, src: e.src };
        if self.install(piece, InstallCause::Push, source, bufs, stats)? == Installed::ProcessGone {
            self.gone = true;
        }
        Ok(if self.gone || self.lazy.is_empty() { PushStep::Done } else { PushStep::Installed })
    }

    /// Reads `piece` from the source and installs it: data with `UFFDIO_COPY`, zero pages with
    /// `UFFDIO_ZEROPAGE`; pages found present are counted and skipped.
    fn install(
        &mut self,
        piece: LazyExtent,
        cause: InstallCause,
        source: &mut dyn PageSource,
        bufs: &mut Buffers,
        stats: &mut LazyStats,
    ) -> Result<Installed, HandlerError> {
        let ps = source.page_size();
        let n = ((piece.end - piece.start) / ps) as usize;
        let (data, zero) = (&mut bufs.data[..n * ps as usize], &mut bufs.zero[..n]);
        source
            .read_run(self.pagemap, PageRun::new(piece.src, n as u64), data, zero)
            .map_err(|source| HandlerError::Source { pid: self.pid, source })?;
        let mut i = 0;
        while i < n {
            let is_zero = zero[i];
            let j = (i..n).find(|&k| zero[k] != is_zero).unwrap_or(n);
            let dst = piece.start + i as u64 * ps;
            let res = if is_zero {
                self.uffd.zeropage(dst, (j - i) as u64 * ps)
            } else {
                self.uffd.copy(dst, &data[i * ps as usize..j * ps as usize])
            };
            let done_pages = match res {
                FillOutcome::Done => (j - i) as u64,
                FillOutcome::Partial(bytes) => bytes / ps,
                FillOutcome::Exists => {
                    stats.pages_already_present += 1;
                    self.lazy.forget(dst, dst + ps);
                    i += 1;
                    continue;
                }
                FillOutcome::Again => return Ok(Installed::Again),
                FillOutcome::Failed(err) => {
                    let op = if is_zero { "UFFDIO_ZEROPAGE" } else { "UFFDIO_COPY" };
                    let outcome = self.failed(op, dst, err)?;
                    if outcome == Installed::Done {
                        // ENOENT: no longer mapped; forget the rest of the piece.
                        let end = piece.end;
                        stats.pages_dropped += self.lazy.forget(dst, end);
                    }
                    return Ok(outcome);
                }
            };
            if done_pages == 0 {
                return Ok(Installed::Again);
            }
            let done_end = dst + done_pages * ps;
            let installed = self.lazy.forget(dst, done_end);
            match cause {
                InstallCause::Fault => {
                    stats.pages_faulted += installed;
                    let src = piece.src + i as u64 * ps;
                    stats.working_set.record(self.pagemap, PageRun::new(src, done_pages), ps);
                }
                InstallCause::Push => stats.pages_pushed += installed,
            }
            if is_zero {
                stats.pages_zero += installed;
            }
            i += done_pages as usize;
        }
        Ok(Installed::Done)
    }
}
