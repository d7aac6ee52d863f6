//! [`PushCache`]: the pages the source pushed that the daemon has not installed yet, filled by
//! the push reader ([`super::push_reader`]) and emptied by the daemon's faults and push steps.
//!
//! The source pushes in address order from where the process last faulted (upwards, or
//! downwards behind a process walking memory downwards; a recorded working set comes first, in
//! the order it was touched), so the cache also knows where the push stands in each pagemap:
//! its last run and direction. A fault just ahead of the push is best served by waiting for it:
//! its pages are in flight or next in line, and a fetch's answer would queue behind the same
//! push data. That holds only while a push stream is being read and the cache has room.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pagestream_engine::criu::PagemapId;
use pagestream_engine::{PageRun, PageRunSet};
use tokio::sync::Notify;

use super::frame::MAX_RUN_PAGES;

#[derive(Default)]
struct Inner {
    pages: BTreeMap<(PagemapId, u64), Bytes>,
    bytes: usize,
    /// Runs the daemon has taken (pushed copies arriving later are dropped).
    served: HashMap<PagemapId, PageRunSet>,
    /// Pagemaps no task needs any more (their pages are dropped on arrival).
    released: HashSet<PagemapId>,
    /// Per pagemap, the last pushed run received and whether the push goes downwards.
    last: HashMap<PagemapId, (PageRun, bool)>,
    received: u64,
    dropped: u64,
    /// Push streams being read (a new one may start before an aborted one is gone).
    readers: u32,
    /// Counts arrivals (batches of pushed pages).
    generation: u64,
    /// The most bytes held before the reader pauses.
    limit: usize,
}

impl Inner {
    fn pending(&self) -> bool {
        self.readers > 0 && self.bytes < self.limit
    }

    /// Whether every page of `run` (pages of `ps` bytes) is held.
    fn holds(&self, id: PagemapId, run: PageRun, ps: u64) -> bool {
        (0..run.nr_pages).all(|i| self.pages.contains_key(&(id, run.vaddr + i * ps)))
    }

    /// Records that `run` is installed: later pushed copies of it are dropped.
    fn mark_served(&mut self, id: PagemapId, run: PageRun, ps: u64) {
        self.served.entry(id).or_insert_with(|| PageRunSet::new(ps)).insert(run);
    }

    fn remove(&mut self, id: PagemapId, addr: u64) -> Option<Bytes> {
        let page = self.pages.remove(&(id, addr))?;
        self.bytes -= page.len();
        Some(page)
    }
}

/// Pushed pages waiting to be installed; cheap to clone (shared with the push reader).
#[derive(Clone)]
pub struct PushCache {
    inner: Arc<Mutex<Inner>>,
    /// Notified when pushed pages arrive or the push stops.
    arrived: Arc<Notify>,
    /// Notified when pages leave the cache (a paused reader may go on).
    room: Arc<Notify>,
    page_size: u64,
}

/// Where the push stands in a pagemap relative to a run.
#[derive(Debug, PartialEq, Eq)]
enum Position {
    /// The run lies ahead of the push, this many bytes away.
    Ahead(u64),
    /// The push has gone past the run (or never goes there).
    Past,
}

impl PushCache {
    /// An empty cache of pages of `page_size` bytes that holds at most about `limit` bytes
    /// (the push reader pauses there).
    pub fn new(page_size: u64, limit: usize) -> PushCache {
        let inner = Inner { limit, ..Inner::default() };
        PushCache { inner: Arc::new(Mutex::new(inner)), arrived: Arc::default(), room: Arc::default(), page_size }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Notified whenever pushed pages arrive or the push stops.
    pub fn arrivals(&self) -> &Notify {
        &self.arrived
    }

    /// Changes with every arrival (compare two readings to learn whether pages came between).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Whether pages are on their way: a push stream is being read and the cache has room.
    pub fn pending(&self) -> bool {
        self.lock().pending()
    }

    /// Pushed pages received, and of those dropped as already installed or not needed.
    pub fn counts(&self) -> (u64, u64) {
        let c = self.lock();
        (c.received, c.dropped)
    }

    fn position(&self, c: &Inner, id: PagemapId, run: PageRun) -> Position {
        let ps = self.page_size;
        let Some(&(last, down)) = c.last.get(&id) else { return Position::Past };
        let (last_end, run_end) = (last.end(ps), run.end(ps));
        match down {
            false if run.vaddr >= last_end => Position::Ahead(run.vaddr - last_end),
            true if run_end <= last.vaddr => Position::Ahead(last.vaddr - run_end),
            false if last.vaddr < run_end => Position::Ahead(0),
            true if last_end > run.vaddr => Position::Ahead(0),
            _ => Position::Past,
        }
    }

    /// The lowest address of pagemap `id` held that `wanted` accepts; the ones below it that
    /// `wanted` refuses are dropped.
    pub fn first_wanted(&self, id: PagemapId, wanted: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let mut c = self.lock();
        let mut freed = false;
        let found = loop {
            let Some(addr) = c.pages.range((id, 0)..=(id, u64::MAX)).next().map(|((_, addr), _)| *addr) else {
                break None;
            };
            if wanted(addr) {
                break Some(addr);
            }
            c.remove(id, addr);
            c.dropped += 1;
            freed = true;
        };
        drop(c);
        if freed {
            self.room.notify_waiters();
        }
        found
    }

    /// Copies `run` into `out` and drops it from the cache if every page of it is held.
    pub fn take(&self, id: PagemapId, run: PageRun, out: &mut [u8]) -> bool {
        let ps = self.page_size as usize;
        if out.len() != run.nr_pages as usize * ps {
            return false;
        }
        let mut c = self.lock();
        if !c.holds(id, run, self.page_size) {
            return false;
        }
        for (i, dst) in out.chunks_exact_mut(ps).enumerate() {
            if let Some(page) = c.remove(id, run.vaddr + (i * ps) as u64) {
                dst.copy_from_slice(&page);
            }
        }
        c.mark_served(id, run, self.page_size);
        drop(c);
        self.room.notify_waiters();
        true
    }

    /// Marks `run` installed from elsewhere (a fetch): drops held copies and later arrivals.
    pub fn served_elsewhere(&self, id: PagemapId, run: PageRun) {
        let ps = self.page_size;
        let mut c = self.lock();
        for i in 0..run.nr_pages {
            c.remove(id, run.vaddr + i * ps);
        }
        c.mark_served(id, run, ps);
        drop(c);
        self.room.notify_waiters();
    }

    /// No task needs pages of `id` any more: drops those held and those still to come.
    pub fn release(&self, id: PagemapId) {
        let mut c = self.lock();
        let held: Vec<u64> = c.pages.range((id, 0)..=(id, u64::MAX)).map(|((_, a), _)| *a).collect();
        c.dropped += held.len() as u64;
        for addr in held {
            c.remove(id, addr);
        }
        c.served.remove(&id);
        c.released.insert(id);
        drop(c);
        self.room.notify_waiters();
    }

    /// Whether `run` lies less than `lookahead` bytes ahead of the push in `id`, with the push
    /// still going: it is about to deliver the run.
    pub fn expects(&self, id: PagemapId, run: PageRun, lookahead: u64) -> bool {
        let c = self.lock();
        c.pending() && matches!(self.position(&c, id, run), Position::Ahead(d) if d < lookahead)
    }

    /// Waits (up to `limit`) until every page of `run` is held; false when the push went past
    /// the run without all of it, stopped or paused, or the time ran out. Must run on the push
    /// reader's runtime.
    pub async fn wait_for(&self, id: PagemapId, run: PageRun, limit: Duration) -> bool {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                {
                    let c = self.lock();
                    if c.holds(id, run, self.page_size) {
                        return true;
                    }
                    if !c.pending() || self.position(&c, id, run) == Position::Past {
                        return false;
                    }
                }
                arrived.await;
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    /// Stores a pushed run (pages already taken, or of a released pagemap, are dropped).
    pub(super) fn insert(&self, id: PagemapId, run: PageRun, data: &Bytes) {
        let ps = self.page_size;
        let mut c = self.lock();
        let released = c.released.contains(&id);
        for i in 0..run.nr_pages {
            let addr = run.vaddr + i * ps;
            c.received += 1;
            let taken = released || c.served.get(&id).is_some_and(|s| s.contains(addr));
            if taken || c.pages.contains_key(&(id, addr)) {
                c.dropped += 1;
                continue;
            }
            let page = data.slice((i * ps) as usize..((i + 1) * ps) as usize);
            c.bytes += page.len();
            c.pages.insert((id, addr), page);
        }
        // Downwards only when the run lies just below the previous one (as the source's downward
        // push sends them); any other jump starts an upward push from the new run.
        let down = c.last.get(&id).is_some_and(|(prev, _)| {
            let end = run.end(ps);
            end <= prev.vaddr && prev.vaddr - end <= MAX_RUN_PAGES * ps
        });
        c.last.insert(id, (run, down));
    }

    /// Tells waiters that pushed pages arrived.
    pub(super) fn announce_arrival(&self) {
        self.lock().generation += 1;
        self.arrived.notify_waiters();
    }

    /// A push reader starts (the push's position is learnt anew from its runs).
    pub(super) fn reader_started(&self) {
        let mut c = self.lock();
        c.readers += 1;
        c.last.clear();
    }

    /// A push reader ended (or was aborted with its link).
    pub(super) fn reader_stopped(&self) {
        let mut c = self.lock();
        c.readers = c.readers.saturating_sub(1);
        if c.readers == 0 {
            c.last.clear();
        }
        drop(c);
        // A step waiting for the push learns that it must ask now.
        self.announce_arrival();
    }

    /// Waits until the cache has room for more pushed pages.
    pub(super) async fn wait_for_room(&self) {
        loop {
            let room = self.room.notified();
            {
                let c = self.lock();
                if c.bytes < c.limit {
                    return;
                }
            }
            room.await;
        }
    }
}

#[cfg(test)]
#[path = "push_cache_tests.rs"]
mod tests;
