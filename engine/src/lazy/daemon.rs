//! The lazy-pages daemon's event loop: accepts the restorer on `lazy-pages.socket`, takes each
//! task's userfaultfd, serves faults as they come and, once the restore has finished, pushes every
//! remaining lazy page in the background (faults always first: the loop polls before each push
//! step) until all are resident. Then it closes the userfaultfds, which detaches the processes.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use userfaultfd::EventBuffer;

use super::handler::{Buffers, HandlerError, PushStep, TaskUffd, FAULT_BATCH_PAGES, PUSH_BATCH_PAGES};
use super::handoff::{HandoffError, HandoffEvent, HandoffListener};
use super::ranges::LazyRanges;
use super::source::{PageSource, SourceError};
use super::stats::LazyStats;
use crate::criu::PagemapId;
use crate::sys::uffd_fill::LazyUffd;

/// Events read from one userfaultfd at a time.
const EVENT_BATCH: usize = 64;
/// The longest wait for the source's push when every task is waiting for it (the source also
/// ends the wait when pages arrive; this bounds a source that does not).
const PUSH_IDLE_WAIT_MS: i32 = 10;

/// Why the daemon stopped without completing the restore.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The handoff failed (including a hangup before the finish marker).
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    /// Serving a task failed.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// The lazy ranges of a task could not be read.
    #[error("task {pid}: {source}")]
    Ranges { pid: i32, source: SourceError },
    /// A userfaultfd could not be polled or read.
    #[error("userfaultfd of task {pid}: {err}")]
    Uffd { pid: i32, err: std::io::Error },
    /// poll(2) failed.
    #[error("poll: {0}")]
    Poll(std::io::Error),
}

/// The lazy pages of task `pid`, as `(pagemap, ranges)`.
pub type RangesOf<'a> = dyn FnMut(i32) -> Result<(PagemapId, LazyRanges), SourceError> + 'a;

/// Serves one lazy restore: accepts the restorer's connection on `listener` and runs until every
/// lazy page of every task is resident (after the finish marker). `ranges_of` gives each task's
/// lazy pages; `source` their data.
pub fn serve(
    listener: &HandoffListener,
    source: &mut dyn PageSource,
    ranges_of: &mut RangesOf<'_>,
) -> Result<LazyStats, DaemonError> {
    let mut ready = Vec::new();
    // Waited for through the source, so that a network source keeps its connection alive (and
    // its push going) until the restorer comes.
    while !ready.first().copied().unwrap_or(false) {
        source.wait_readable(&[listener.as_fd()], -1, &mut ready).map_err(DaemonError::Poll)?;
    }
    let mut conn = Some(listener.accept().map_err(HandoffError::Io)?);
    let mut stats = LazyStats::new();
    let mut tasks: Vec<TaskUffd> = Vec::new();
    let mut finished_at: Option<Instant> = None;
    let mut bufs = Buffers::new(FAULT_BATCH_PAGES.max(PUSH_BATCH_PAGES), source.page_size());
    let mut evbuf = EventBuffer::new(EVENT_BATCH);
    ready.clear();
    let mut handoff_events = Vec::new();
    let mut next_push = 0usize;
    // Consecutive push steps that found nothing ready (every task waiting for the source's push).
    let mut push_waits = 0usize;
    // Pagemaps whose pages no task needs any more (the source was told it may drop them).
    let mut released: Vec<PagemapId> = Vec::new();
    loop {
        for t in tasks.iter().filter(|t| t.gone || t.lazy.is_empty()) {
            let needed = |o: &TaskUffd| o.pagemap == t.pagemap && !o.gone && !o.lazy.is_empty();
            if !released.contains(&t.pagemap) && !tasks.iter().any(needed) {
                source.release(t.pagemap);
                released.push(t.pagemap);
            }
        }
        tasks.retain(|t| !t.gone);
        let retrying = tasks.iter().any(|t| !t.retry.is_empty());
        let pushing = finished_at.is_some() && tasks.iter().any(|t| !t.lazy.is_empty());
        if let (Some(at), false, false) = (finished_at, pushing, retrying) {
            stats.time_to_full_residency = Some(at.elapsed());
            break;
        }
        let mut fds: Vec<BorrowedFd<'_>> = tasks.iter().map(|t| t.uffd.as_fd()).collect();
        if let Some(c) = &conn {
            fds.push(c.as_fd());
        }
        let push_idle = pushing && push_waits >= tasks.len();
        let timeout = match (retrying, pushing, push_idle) {
            (true, _, _) | (false, true, false) => 0,
            (false, true, true) => PUSH_IDLE_WAIT_MS,
            (false, false, _) => -1,
        };
        source.wait_readable(&fds, timeout, &mut ready).map_err(DaemonError::Poll)?;
        drop(fds);
        if push_idle {
            // Pages may have arrived (or the wait timed out): every task looks again.
            push_waits = 0;
        }
        let read_at = Instant::now();
        let conn_ready = conn.is_some() && ready.last().copied().unwrap_or(false);
        let mut any_uffd = false;
        let mut children = Vec::new();
        for (i, task) in tasks.iter_mut().enumerate() {
            let mut events = Vec::new();
            if ready[i] {
                any_uffd = true;
                task.uffd
                    .read_events(&mut evbuf, &mut events)
                    .map_err(|err| DaemonError::Uffd { pid: task.pid, err })?;
            }
            if !events.is_empty() || !task.retry.is_empty() {
                children.extend(task.handle_events(events, source, &mut bufs, &mut stats, read_at)?);
            }
        }
        tasks.extend(children);
        if conn_ready {
            if let Some(c) = conn.as_mut() {
                c.read_events(&mut handoff_events)?;
                if c.at_eof() {
                    conn = None;
                }
            }
            for ev in handoff_events.drain(..) {
                match ev {
                    HandoffEvent::Task { pid, uffd } => {
                        let uffd = LazyUffd::from_fd(uffd).map_err(|err| DaemonError::Uffd { pid, err })?;
                        let (pagemap, lazy) = ranges_of(pid).map_err(|source| DaemonError::Ranges { pid, source })?;
                        stats.tasks += 1;
                        stats.lazy_pages += lazy.len_pages();
                        tracing::info!(pid, lazy_pages = lazy.len_pages(), "task handed over");
                        tasks.push(TaskUffd::new(pid, pagemap, uffd, lazy));
                    }
                    HandoffEvent::Zombie { pid } => {
                        stats.zombies += 1;
                        tracing::info!(pid, "zombie announced");
                    }
                    HandoffEvent::Finished => {
                        tracing::info!("restore finished; pushing the remaining lazy pages");
                        finished_at = Some(Instant::now());
                    }
                }
            }
        }
        if pushing && !any_uffd && !tasks.is_empty() {
            let i = next_push % tasks.len();
            // Tasks sharing a pagemap (a fork) would each wait for pushed pages that only one
            // of them can take: they ask instead.
            let sole = tasks.iter().filter(|t| t.pagemap == tasks[i].pagemap).count() == 1;
            let task = &mut tasks[i];
            match task.push_step(source, &mut bufs, &mut stats, sole)? {
                PushStep::Installed => push_waits = 0,
                PushStep::Waiting => {
                    push_waits += 1;
                    next_push = next_push.wrapping_add(1);
                }
                PushStep::Done => next_push = next_push.wrapping_add(1),
            }
        }
    }
    Ok(stats)
}
