//! [`PushOrder`]: which lazy pages a session's background push sends next.
//!
//! Every page is sent once per session (a fetched page is never pushed). The order:
//! 1. after a Fetch, the pages following its run, up to [`FOLLOW_PAGES`] (the process is likely
//!    to touch them next): upwards from the run's end, or downwards from its start when the
//!    fetches walk downwards (each run just below the previous one, as a stack or a backwards
//!    scan does);
//! 2. the recorded working set, in the order it was touched;
//! 3. everything else from the cursor on (downwards while the walk goes downwards, then upwards
//!    through the cursor's pagemap and the following ones, wrapping once).

use std::collections::{HashMap, VecDeque};

use pagestream_engine::criu::PagemapId;
use pagestream_engine::{PageRun, PageRunSet};

use super::frame::MAX_RUN_PAGES;

/// Pages pushed after a fetched run before the working set resumes.
pub const FOLLOW_PAGES: u64 = 4 * MAX_RUN_PAGES;

/// The push order of one session; see the module documentation.
#[derive(Debug, Clone)]
pub struct PushOrder {
    page_size: u64,
    /// The lazy pagemaps in a fixed order.
    ids: Vec<PagemapId>,
    unsent: HashMap<PagemapId, PageRunSet>,
    /// The working set still to push (runs at dump-time addresses).
    priority: VecDeque<(PagemapId, PageRun)>,
    /// Index into `ids` and the address the push goes on from.
    cursor: (usize, u64),
    /// Whether the push goes downwards from the cursor.
    downward: bool,
    last_fetch: Option<(PagemapId, PageRun)>,
    /// Pages still to push after the last fetch before the working set resumes.
    follow: u64,
}

/// A run to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextRun {
    /// Its pagemap.
    pub id: PagemapId,
    /// The run (at most [`MAX_RUN_PAGES`] pages).
    pub run: PageRun,
    /// Whether the working set named it.
    pub working_set: bool,
}

impl PushOrder {
    /// The lazy pages `plan` (per pagemap) to push, `working_set` first.
    pub fn new(page_size: u64, plan: &[(PagemapId, PageRunSet)], working_set: &[(PagemapId, PageRun)]) -> PushOrder {
        PushOrder {
            page_size,
            ids: plan.iter().map(|(id, _)| *id).collect(),
            unsent: plan.iter().cloned().collect(),
            priority: working_set.iter().copied().collect(),
            cursor: (0, 0),
            downward: false,
            last_fetch: None,
            follow: 0,
        }
    }

    /// A Fetch of `run` was answered: its pages are sent, and the push follows it.
    pub fn fetched(&mut self, id: PagemapId, run: PageRun) {
        let ps = self.page_size;
        if let Some(set) = self.unsent.get_mut(&id) {
            set.remove(run);
        }
        let Some(i) = self.ids.iter().position(|p| *p == id) else { return };
        let end = run.end(ps);
        self.downward = self.last_fetch.is_some_and(|(prev_id, prev)| {
            prev_id == id && end <= prev.vaddr && prev.vaddr - end <= MAX_RUN_PAGES * ps
        });
        self.last_fetch = Some((id, run));
        self.cursor = (i, if self.downward { run.vaddr } else { end });
        self.follow = FOLLOW_PAGES;
    }

    /// Takes the next run to push; `None` when every page was sent.
    pub fn take_next(&mut self) -> Option<NextRun> {
        if self.follow == 0 {
            if let Some(next) = self.next_in_working_set() {
                return Some(next);
            }
        }
        let next = self.next_below().or_else(|| self.next_from_cursor())?;
        self.follow = self.follow.saturating_sub(next.run.nr_pages);
        Some(next)
    }

    fn next_in_working_set(&mut self) -> Option<NextRun> {
        let ps = self.page_size;
        while let Some((id, want)) = self.priority.pop_front() {
            let Some(set) = self.unsent.get_mut(&id) else { continue };
            let Some(run) = take_first(set, want.vaddr, want.end(ps)) else { continue };
            if run.end(ps) < want.end(ps) {
                self.priority.push_front((id, PageRun::new(run.end(ps), (want.end(ps) - run.end(ps)) / ps)));
            }
            return Some(NextRun { id, run, working_set: true });
        }
        None
    }

    fn next_below(&mut self) -> Option<NextRun> {
        if !self.downward {
            return None;
        }
        let (i, from) = self.cursor;
        let id = *self.ids.get(i)?;
        let set = self.unsent.get_mut(&id)?;
        let Some(below) = set.last_below(from) else {
            self.downward = false;
            return None;
        };
        let pages = below.nr_pages.min(MAX_RUN_PAGES);
        let run = PageRun::new(below.vaddr + (below.nr_pages - pages) * self.page_size, pages);
        set.remove(run);
        self.cursor = (i, run.vaddr);
        Some(NextRun { id, run, working_set: false })
    }

    fn next_from_cursor(&mut self) -> Option<NextRun> {
        let ps = self.page_size;
        let n = self.ids.len();
        let top = !(ps - 1);
        let (start, from) = self.cursor;
        for step in 0..=n {
            let i = (start + step) % n.max(1);
            let id = *self.ids.get(i)?;
            let at = if step == 0 { from } else { 0 };
            let set = self.unsent.get_mut(&id)?;
            if let Some(run) = take_first(set, at, top) {
                self.cursor = (i, run.end(ps));
                return Some(NextRun { id, run, working_set: false });
            }
        }
        None
    }
}

/// Takes the first unsent pages of `set` in `[start, end)`: at most one frame's worth
/// ([`MAX_RUN_PAGES`]) from the front of the first run there.
fn take_first(set: &mut PageRunSet, start: u64, end: u64) -> Option<PageRun> {
    let first = set.range(start, end).next()?;
    let run = PageRun::new(first.vaddr, first.nr_pages.min(MAX_RUN_PAGES));
    set.remove(run);
    Some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u64 = 4096;
    const ID: PagemapId = PagemapId::Task(7);

    fn order(pages: u64, ws: &[(u64, u64)]) -> PushOrder {
        let plan = vec![(ID, PageRunSet::from_runs(PS, [PageRun::new(0, pages)]))];
        let ws: Vec<_> = ws.iter().map(|&(p, n)| (ID, PageRun::new(p * PS, n))).collect();
        PushOrder::new(PS, &plan, &ws)
    }

    fn page(next: Option<NextRun>) -> (u64, u64) {
        let r = next.expect("a run").run;
        (r.vaddr / PS, r.nr_pages)
    }

    #[test]
    fn upwards_from_a_fetch_then_wraps_and_sends_everything_once() {
        let mut o = order(200, &[]);
        o.fetched(ID, PageRun::new(100 * PS, 16));
        assert_eq!(page(o.take_next()), (116, 64));
        assert_eq!(page(o.take_next()), (180, 20));
        assert_eq!(page(o.take_next()), (0, 64));
        let mut total = 16 + 64 + 20 + 64;
        while let Some(n) = o.take_next() {
            total += n.run.nr_pages;
        }
        assert_eq!(total, 200);
    }

    #[test]
    fn downwards_when_fetches_walk_down() {
        let mut o = order(400, &[]);
        o.fetched(ID, PageRun::new(300 * PS, 16));
        o.fetched(ID, PageRun::new(284 * PS, 16));
        assert_eq!(page(o.take_next()), (220, 64));
        assert_eq!(page(o.take_next()), (156, 64));
        // A fetch above the last one turns the push upwards again.
        o.fetched(ID, PageRun::new(350 * PS, 1));
        assert_eq!(page(o.take_next()), (351, 49));
    }

    #[test]
    fn working_set_first_but_a_fetch_is_followed_first() {
        let mut o = order(1000, &[(500, 100), (10, 2)]);
        assert_eq!(page(o.take_next()), (500, 64));
        let n = o.take_next().expect("a run");
        assert!(n.working_set);
        assert_eq!((n.run.vaddr / PS, n.run.nr_pages), (564, 36));
        o.fetched(ID, PageRun::new(700 * PS, 16));
        let followed: Vec<_> = (0..4).map(|_| page(o.take_next())).collect();
        assert_eq!(followed, vec![(716, 64), (780, 64), (844, 64), (908, 64)]);
        // The follow budget is spent: back to the working set.
        assert_eq!(page(o.take_next()), (10, 2));
        assert!(!o.take_next().expect("a run").working_set);
    }
}
