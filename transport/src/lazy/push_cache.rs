//! [`PushCache`]: the pages the source pushed that the daemon has not installed yet, filled by
//! [`read_push`] from the push stream and emptied by the daemon's faults and push steps.
//!
//! The source pushes in address order (upwards, or downwards behind a process walking memory
//! downwards), so the cache also knows where the push stands in each pagemap: its last run and
//! direction. A fault just ahead of the push is best served by waiting for it: its pages are
//! in flight or next in line, and a fetch's answer would queue behind the same push data.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pagestream_engine::criu::PagemapId;
use pagestream_engine::{PageRun, PageRunSet};
use quinn::RecvStream;
use tokio::sync::Notify;

use super::frame::{LazyDecoder, LazyFrame};

#[derive(Default)]
struct Inner {
    pages: BTreeMap<(PagemapId, u64), Bytes>,
    bytes: usize,
    /// Runs the daemon has taken (pushed copies arriving later are dropped).
    served: HashMap<PagemapId, PageRunSet>,
    /// Per pagemap, the last pushed run received and whether the push goes downwards.
    last: HashMap<PagemapId, (PageRun, bool)>,
    received: u64,
    dropped: u64,
    /// Whether a push stream is being read.
    open: bool,
    /// The most bytes held before the reader pauses.
    limit: usize,
}

/// Pushed pages waiting to be installed; cheap to clone (shared with the push reader).
#[derive(Clone)]
pub struct PushCache {
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
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
        PushCache { inner: Arc::new(Mutex::new(inner)), arrived: Arc::default(), page_size }
    }

    /// Notified whenever pushed pages arrive.
    pub fn arrivals(&self) -> &Notify {
        &self.arrived
    }

    /// Whether pages are on their way: a push stream is open and the cache has room.
    pub fn pending(&self) -> bool {
        let c = self.lock();
        c.open && c.bytes < c.limit
    }

    fn position(&self, c: &Inner, id: PagemapId, run: PageRun) -> Position {
        let ps = self.page_size;
        let Some(&(last, down)) = c.last.get(&id) else { return Position::Past };
        let (last_end, run_end) = (last.vaddr + last.nr_pages * ps, run.vaddr + run.nr_pages * ps);
        match down {
            false if run.vaddr >= last_end => Position::Ahead(run.vaddr - last_end),
            true if run_end <= last.vaddr => Position::Ahead(last.vaddr - run_end),
            false if last.vaddr < run_end => Position::Ahead(0),
            true if last_end > run.vaddr => Position::Ahead(0),
            _ => Position::Past,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pushed pages received, and of those dropped as already installed.
    pub fn counts(&self) -> (u64, u64) {
        let c = self.lock();
        (c.received, c.dropped)
    }

    fn full(&self) -> bool {
        let c = self.lock();
        c.bytes >= c.limit
    }

    /// The lowest address of pagemap `id` held that `wanted` accepts; the ones below it that
    /// `wanted` refuses are dropped.
    pub fn first_wanted(&self, id: PagemapId, wanted: &mut dyn FnMut(u64) -> bool) -> Option<u64> {
        let mut c = self.lock();
        loop {
            let addr = c.pages.range((id, 0)..=(id, u64::MAX)).next().map(|((_, addr), _)| *addr)?;
            if wanted(addr) {
                return Some(addr);
            }
            if let Some(page) = c.pages.remove(&(id, addr)) {
                c.bytes -= page.len();
                c.dropped += 1;
            }
        }
    }

    /// Copies `run` into `out` and drops it from the cache if every page of it is held.
    pub fn take(&self, id: PagemapId, run: PageRun, out: &mut [u8]) -> bool {
        let ps = self.page_size as usize;
        if out.len() != run.nr_pages as usize * ps {
            return false;
        }
        let mut c = self.lock();
        let addr = |i: u64| run.vaddr + i * ps as u64;
        if !(0..run.nr_pages).all(|i| c.pages.contains_key(&(id, addr(i)))) {
            return false;
        }
        for (i, dst) in out.chunks_exact_mut(ps).enumerate() {
            if let Some(page) = c.pages.remove(&(id, addr(i as u64))) {
                c.bytes -= page.len();
                dst.copy_from_slice(&page);
            }
        }
        c.served.entry(id).or_insert_with(|| PageRunSet::new(ps as u64)).insert(run);
        true
    }

    /// Marks `run` installed from elsewhere (a fetch): drops held copies and later arrivals.
    pub fn served_elsewhere(&self, id: PagemapId, run: PageRun) {
        let page_size = self.page_size;
        let mut c = self.lock();
        for i in 0..run.nr_pages {
            if let Some(page) = c.pages.remove(&(id, run.vaddr + i * page_size)) {
                c.bytes -= page.len();
            }
        }
        c.served.entry(id).or_insert_with(|| PageRunSet::new(page_size)).insert(run);
    }

    /// Whether `run` lies less than `lookahead` bytes ahead of the push in `id`: the push is
    /// about to deliver it.
    pub fn expects(&self, id: PagemapId, run: PageRun, lookahead: u64) -> bool {
        let c = self.lock();
        matches!(self.position(&c, id, run), Position::Ahead(d) if d < lookahead)
    }

    /// Waits (up to `limit`) until every page of `run` is held; false when the push went past
    /// the run without all of it, or the time ran out. Must run on the push reader's runtime.
    pub async fn wait_for(&self, id: PagemapId, run: PageRun, limit: Duration) -> bool {
        let page_size = self.page_size;
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                {
                    let c = self.lock();
                    if (0..run.nr_pages).all(|i| c.pages.contains_key(&(id, run.vaddr + i * page_size))) {
                        return true;
                    }
                    if self.position(&c, id, run) == Position::Past {
                        return false;
                    }
                }
                arrived.await;
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    fn insert(&self, id: PagemapId, run: PageRun, data: &Bytes) {
        let ps = self.page_size;
        let mut c = self.lock();
        for i in 0..run.nr_pages {
            let addr = run.vaddr + i * ps;
            c.received += 1;
            let taken = c.served.get(&id).is_some_and(|s| s.contains(addr));
            if taken || c.pages.contains_key(&(id, addr)) {
                c.dropped += 1;
                continue;
            }
            let page = data.slice((i * ps) as usize..((i + 1) * ps) as usize);
            c.bytes += page.len();
            c.pages.insert((id, addr), page);
        }
        let down = c.last.get(&id).is_some_and(|(prev, _)| run.vaddr + run.nr_pages * ps <= prev.vaddr);
        c.last.insert(id, (run, down));
    }
}

/// Reads the push stream into `cache`, pausing while it is full (QUIC flow control then holds
/// the source back).
pub async fn read_push(recv: RecvStream, cache: PushCache) {
    let open = PushOpen::new(cache);
    read_push_frames(recv, &open.0).await;
}

/// Marks the push open for as long as it lives: also when the reader is aborted (a broken
/// link), so that no push step keeps waiting for a push that no longer comes.
struct PushOpen(PushCache);

impl PushOpen {
    fn new(cache: PushCache) -> PushOpen {
        cache.lock().open = true;
        PushOpen(cache)
    }
}

impl Drop for PushOpen {
    fn drop(&mut self) {
        self.0.lock().open = false;
        // A step waiting for the push learns that it must ask now.
        self.0.arrived.notify_waiters();
    }
}

async fn read_push_frames(mut recv: RecvStream, cache: &PushCache) {
    let Ok(mut dec) = LazyDecoder::new(cache.page_size) else { return };
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        while cache.full() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
        let mut any = false;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(LazyFrame::Pages { req: 0, id, run, data })) => {
                    cache.insert(id, run, &data);
                    any = true;
                }
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => break,
            }
        }
        if any {
            cache.arrived.notify_waiters();
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u64 = 4096;
    const ID: PagemapId = PagemapId::Task(3);

    fn run(page: u64, n: u64) -> PageRun {
        PageRun::new(page * PS, n)
    }

    fn push(cache: &PushCache, page: u64, n: u64) {
        let data = Bytes::from((0..n * PS).map(|i| (page + i / PS) as u8).collect::<Vec<u8>>());
        cache.insert(ID, run(page, n), &data);
    }

    #[test]
    fn knows_what_the_push_brings_next_in_both_directions() {
        let c = PushCache::new(PS, 1 << 20);
        assert!(!c.expects(ID, run(0, 1), u64::MAX), "nothing pushed yet");
        push(&c, 0, 64);
        push(&c, 64, 64);
        assert!(c.expects(ID, run(128, 16), 64 * PS));
        assert!(c.expects(ID, run(140, 16), 64 * PS));
        assert!(!c.expects(ID, run(300, 16), 64 * PS), "too far ahead");
        assert!(!c.expects(ID, run(10, 16), 64 * PS), "behind the push");
        // Downwards: each run below the previous one.
        push(&c, 500, 64);
        push(&c, 436, 64);
        assert!(c.expects(ID, run(420, 16), 64 * PS));
        assert!(!c.expects(ID, run(600, 16), 64 * PS), "above a downward push");
    }

    #[test]
    fn takes_whole_runs_drops_unwanted_and_late_copies() {
        let c = PushCache::new(PS, 1 << 20);
        push(&c, 0, 8);
        let mut out = vec![0u8; (4 * PS) as usize];
        assert!(!c.take(ID, run(6, 4), &mut out), "pages 8 and 9 are missing");
        assert!(c.take(ID, run(2, 4), &mut out));
        assert!(out.chunks(PS as usize).enumerate().all(|(i, p)| p.iter().all(|&b| b == 2 + i as u8)));
        // Pages 0 and 1 are no longer wanted: dropped on the way to page 6.
        assert_eq!(c.first_wanted(ID, &mut |a| a >= 6 * PS), Some(6 * PS));
        assert_eq!(c.first_wanted(ID, &mut |_| true), Some(6 * PS));
        c.served_elsewhere(ID, run(6, 4));
        push(&c, 8, 2);
        assert_eq!(c.first_wanted(ID, &mut |_| true), None, "fetched pages are not kept");
        assert_eq!(c.counts(), (10, 4));
    }

    #[test]
    fn pending_only_while_a_reader_lives_and_the_cache_has_room() {
        let c = PushCache::new(PS, 4 * PS as usize);
        assert!(!c.pending());
        let open = PushOpen::new(c.clone());
        assert!(c.pending());
        push(&c, 0, 4);
        assert!(!c.pending(), "full: the push is paused");
        let mut out = vec![0u8; (4 * PS) as usize];
        assert!(c.take(ID, run(0, 4), &mut out));
        assert!(c.pending());
        // An aborted reader (a dropped future) closes it too.
        drop(open);
        assert!(!c.pending());
    }

    #[test]
    fn waits_for_the_push_until_it_arrives_or_passes() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let c = PushCache::new(PS, 1 << 20);
        push(&c, 0, 16);
        let (c2, arrives) = (
            c.clone(),
            rt.spawn({
                let c = c.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    push(&c, 16, 16);
                    c.arrived.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    push(&c, 40, 16);
                    c.arrived.notify_waiters();
                }
            }),
        );
        let long = Duration::from_secs(10);
        assert!(rt.block_on(c2.wait_for(ID, run(20, 4), long)), "the push brought it");
        // The push jumps past pages 32..40: waiting for them ends when it passes, not at the limit.
        let at = std::time::Instant::now();
        assert!(!rt.block_on(c2.wait_for(ID, run(34, 4), long)));
        assert!(at.elapsed() < long / 2);
        rt.block_on(arrives).expect("pusher");
        assert!(!rt.block_on(c2.wait_for(ID, run(100, 1), Duration::from_millis(1))), "times out");
    }
}
