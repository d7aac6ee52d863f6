//! [`PageRunSet`]: a set of pages kept as sorted, non-overlapping, maximally merged runs.
//!
//! Dirty sets, "what the destination holds", lazy ranges and pagemap coverage are all run sets.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::page::PageRun;

/// A set of pages stored as disjoint runs keyed by start address. Adjacent runs are merged, so two
/// sets holding the same pages compare equal.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PageRunSet {
    page_size: u64,
    /// start byte -> end byte (exclusive); runs never touch or overlap.
    runs: BTreeMap<u64, u64>,
    pages: u64,
}

impl PageRunSet {
    /// An empty set for pages of `page_size` bytes.
    pub fn new(page_size: u64) -> Self {
        assert!(page_size.is_power_of_two(), "page size must be a power of two");
        Self { page_size, runs: BTreeMap::new(), pages: 0 }
    }

    /// A set holding the given runs (in any order, overlapping or not).
    pub fn from_runs(page_size: u64, runs: impl IntoIterator<Item = PageRun>) -> Self {
        let mut set = Self::new(page_size);
        for r in runs {
            set.insert(r);
        }
        set
    }

    /// The page size this set counts in.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Number of pages in the set.
    pub fn len_pages(&self) -> u64 {
        self.pages
    }

    /// Number of bytes in the set.
    pub fn len_bytes(&self) -> u64 {
        self.pages * self.page_size
    }

    /// Number of maximal runs.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Whether the set holds no page.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Removes every page.
    pub fn clear(&mut self) {
        self.runs.clear();
        self.pages = 0;
    }

    fn span(&self, run: PageRun) -> (u64, u64) {
        let start = run.vaddr & !(self.page_size - 1);
        (start, start + run.nr_pages * self.page_size)
    }

    fn add_span(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Merge with a run that starts before and reaches `start` (touching counts).
        if let Some((&s, &e)) = self.runs.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.runs.remove(&s);
                self.pages -= (e - s) / self.page_size;
            }
        }
        // Swallow every run that starts inside [start, end] (touching counts).
        let inside: Vec<(u64, u64)> =
            self.runs.range((Bound::Included(start), Bound::Included(end))).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in inside {
            self.runs.remove(&s);
            self.pages -= (e - s) / self.page_size;
            end = end.max(e);
        }
        self.runs.insert(start, end);
        self.pages += (end - start) / self.page_size;
    }

    fn remove_span(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let hit: Vec<(u64, u64)> = match self.runs.range(..start).next_back() {
            Some((&s, &e)) if e > start => std::iter::once((s, e)).collect(),
            _ => Vec::new(),
        };
        let hit = hit.into_iter().chain(self.runs.range(start..end).map(|(s, e)| (*s, *e))).collect::<Vec<_>>();
        for (s, e) in hit {
            self.runs.remove(&s);
            self.pages -= (e - s) / self.page_size;
            if s < start {
                self.runs.insert(s, start);
                self.pages += (start - s) / self.page_size;
            }
            if e > end {
                self.runs.insert(end, e);
                self.pages += (e - end) / self.page_size;
            }
        }
    }

    /// Adds the pages of `run`, merging with neighbours.
    pub fn insert(&mut self, run: PageRun) {
        let (s, e) = self.span(run);
        self.add_span(s, e);
    }

    /// Adds a single page containing `addr`.
    pub fn insert_page(&mut self, addr: u64) {
        self.insert(PageRun::new(addr, 1));
    }

    /// Removes the pages of `run` (splitting runs as needed).
    pub fn remove(&mut self, run: PageRun) {
        let (s, e) = self.span(run);
        self.remove_span(s, e);
    }

    /// Whether the page containing `addr` is in the set.
    pub fn contains(&self, addr: u64) -> bool {
        matches!(self.runs.range(..=addr).next_back(), Some((_, &e)) if e > addr)
    }

    /// Whether every page of `run` is in the set.
    pub fn covers(&self, run: PageRun) -> bool {
        let (s, e) = self.span(run);
        matches!(self.runs.range(..=s).next_back(), Some((_, &end)) if end >= e)
    }

    /// The maximal run containing `addr`, if any.
    pub fn run_containing(&self, addr: u64) -> Option<PageRun> {
        match self.runs.range(..=addr).next_back() {
            Some((&s, &e)) if e > addr => Some(PageRun::new(s, (e - s) / self.page_size)),
            _ => None,
        }
    }

    /// Adds every page of `other`.
    pub fn union_with(&mut self, other: &PageRunSet) {
        for r in other.iter() {
            self.insert(r);
        }
    }

    /// Removes every page of `other`.
    pub fn subtract(&mut self, other: &PageRunSet) {
        for r in other.iter() {
            self.remove(r);
        }
    }

    /// The pages present in both sets.
    pub fn intersection(&self, other: &PageRunSet) -> PageRunSet {
        let mut out = PageRunSet::new(self.page_size);
        for r in other.iter() {
            let (s, e) = self.span(r);
            for piece in self.range(s, e) {
                out.insert(piece);
            }
        }
        out
    }

    /// The parts of the set inside the byte range `[start, end)`, clipped to it.
    pub fn range(&self, start: u64, end: u64) -> impl Iterator<Item = PageRun> + '_ {
        let first = match self.runs.range(..start).next_back() {
            Some((&s, &e)) if e > start => Some((s, e)),
            _ => None,
        };
        let ps = self.page_size;
        first.into_iter().chain(self.runs.range(start..end.max(start)).map(|(s, e)| (*s, *e))).filter_map(
            move |(s, e)| {
                let (s, e) = (s.max(start), e.min(end));
                (s < e).then(|| PageRun::new(s, (e - s) / ps))
            },
        )
    }

    /// The highest part of the set below the byte address `addr`, clipped to it.
    pub fn last_below(&self, addr: u64) -> Option<PageRun> {
        let (&s, &e) = self.runs.range(..addr).next_back()?;
        let e = e.min(addr);
        Some(PageRun::new(s, (e - s) / self.page_size))
    }

    /// Splits the set at `addr`: `self` keeps the pages below it, the pages at or above it are
    /// returned.
    pub fn split_off(&mut self, addr: u64) -> PageRunSet {
        let addr = addr & !(self.page_size - 1);
        let mut upper = PageRunSet::new(self.page_size);
        let moved: Vec<PageRun> = self.range(addr, u64::MAX).collect();
        for r in moved {
            self.remove(r);
            upper.insert(r);
        }
        upper
    }

    /// The maximal runs in address order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = PageRun> + '_ {
        let ps = self.page_size;
        self.runs.iter().map(move |(s, e)| PageRun::new(*s, (e - s) / ps))
    }

    /// The runs in address order, each cut into pieces of at most `max_pages`.
    pub fn chunks(&self, max_pages: u64) -> impl Iterator<Item = PageRun> + '_ {
        let ps = self.page_size;
        self.iter().flat_map(move |r| r.chunks(max_pages, ps))
    }

    /// Every page address in order (use for small sets and tests).
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        let ps = self.page_size;
        self.runs.iter().flat_map(move |(s, e)| (*s..*e).step_by(ps as usize))
    }
}

impl std::fmt::Debug for PageRunSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const PS: u64 = 4096;

    fn model(runs: &[(u64, u64)]) -> BTreeSet<u64> {
        runs.iter().flat_map(|(p, n)| (*p..p + n).map(|i| i * PS)).collect()
    }

    fn set(runs: &[(u64, u64)]) -> PageRunSet {
        PageRunSet::from_runs(PS, runs.iter().map(|(p, n)| PageRun::new(p * PS, *n)))
    }

    #[test]
    fn merges_adjacent_and_overlapping() {
        let s = set(&[(10, 2), (12, 3), (20, 1), (14, 7)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![PageRun::new(10 * PS, 11)]);
        assert_eq!(s.len_pages(), 11);
    }

    #[test]
    fn remove_splits() {
        let mut s = set(&[(0, 10)]);
        s.remove(PageRun::new(3 * PS, 2));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![PageRun::new(0, 3), PageRun::new(5 * PS, 5)]);
        assert_eq!(s.len_pages(), 8);
        assert!(s.covers(PageRun::new(5 * PS, 5)));
        assert!(!s.covers(PageRun::new(2 * PS, 2)));
        assert_eq!(s.run_containing(6 * PS + 17), Some(PageRun::new(5 * PS, 5)));
    }

    #[test]
    fn split_off_and_range() {
        let mut s = set(&[(0, 4), (8, 4)]);
        let hi = s.split_off(10 * PS);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![PageRun::new(0, 4), PageRun::new(8 * PS, 2)]);
        assert_eq!(hi.iter().collect::<Vec<_>>(), vec![PageRun::new(10 * PS, 2)]);
        let r: Vec<_> = s.range(2 * PS, 9 * PS).collect();
        assert_eq!(r, vec![PageRun::new(2 * PS, 2), PageRun::new(8 * PS, 1)]);
    }

    #[test]
    fn last_below_clips_to_the_address() {
        let s = set(&[(0, 4), (8, 4)]);
        assert_eq!(s.last_below(10 * PS), Some(PageRun::new(8 * PS, 2)));
        assert_eq!(s.last_below(12 * PS), Some(PageRun::new(8 * PS, 4)));
        assert_eq!(s.last_below(8 * PS), Some(PageRun::new(0, 4)));
        assert_eq!(s.last_below(0), None);
    }

    fn runs_strategy() -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop::collection::vec((0u64..200, 1u64..20), 0..20)
    }

    proptest! {
        #[test]
        fn behaves_like_a_set_of_pages(a in runs_strategy(), b in runs_strategy()) {
            let (ma, mb) = (model(&a), model(&b));
            let sa = set(&a);
            let sb = set(&b);
            prop_assert_eq!(sa.pages().collect::<BTreeSet<_>>(), ma.clone());
            prop_assert_eq!(sa.len_pages() as usize, ma.len());

            let mut u = sa.clone();
            u.union_with(&sb);
            prop_assert_eq!(u.pages().collect::<BTreeSet<_>>(), &ma | &mb);

            let mut d = sa.clone();
            d.subtract(&sb);
            prop_assert_eq!(d.pages().collect::<BTreeSet<_>>(), &ma - &mb);
            prop_assert_eq!(d.len_pages() as usize, (&ma - &mb).len());

            let i = sa.intersection(&sb);
            prop_assert_eq!(i.pages().collect::<BTreeSet<_>>(), &ma & &mb);

            // Canonical form: runs are sorted, disjoint and never touch.
            let runs: Vec<_> = u.iter().collect();
            for w in runs.windows(2) {
                prop_assert!(w[0].end(PS) < w[1].vaddr);
            }
            for p in 0..230u64 {
                prop_assert_eq!(sa.contains(p * PS + 1), ma.contains(&(p * PS)));
            }
        }

        #[test]
        fn chunks_and_split_preserve_pages(a in runs_strategy(), at in 0u64..230, max in 1u64..7) {
            let sa = set(&a);
            let chunked = PageRunSet::from_runs(PS, sa.chunks(max));
            prop_assert!(sa.chunks(max).all(|r| r.nr_pages <= max));
            prop_assert_eq!(&chunked, &sa);
            let mut lo = sa.clone();
            let hi = lo.split_off(at * PS);
            prop_assert!(lo.iter().all(|r| r.end(PS) <= at * PS));
            prop_assert!(hi.iter().all(|r| r.vaddr >= at * PS));
            let mut both = lo.clone();
            both.union_with(&hi);
            prop_assert_eq!(both, sa);
        }
    }
}
