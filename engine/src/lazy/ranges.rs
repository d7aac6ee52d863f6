//! [`LazyRanges`]: the pages of one address space that are still lazy (not yet installed), each
//! with the dump-time address its data is known by. `mremap` moves pages without changing where
//! their data comes from, so the two addresses can differ.

use std::collections::BTreeMap;

/// A piece of lazy memory: `[start, end)` in the live address space, data at `src` onwards.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LazyExtent {
    /// First byte (page aligned) in the restored process.
    pub start: u64,
    /// End (exclusive, page aligned).
    pub end: u64,
    /// The dump-time address of `start` (what the pagemap and the source use).
    pub src: u64,
}

impl LazyExtent {
    /// The dump-time address of live address `addr` inside the extent.
    pub fn src_of(&self, addr: u64) -> u64 {
        self.src + (addr - self.start)
    }
}

/// The lazy pages of one address space, as non-overlapping extents.
#[derive(Clone, Debug)]
pub struct LazyRanges {
    page_size: u64,
    extents: BTreeMap<u64, LazyExtent>,
    pages: u64,
}

impl LazyRanges {
    /// No lazy pages.
    pub fn new(page_size: u64) -> Self {
        Self { page_size, extents: BTreeMap::new(), pages: 0 }
    }

    /// Lazy pages still to install.
    pub fn len_pages(&self) -> u64 {
        self.pages
    }

    /// Whether every lazy page is installed (or forgotten).
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Adds `[start, end)` with data at `src`, replacing whatever overlapped it.
    pub fn insert(&mut self, start: u64, end: u64, src: u64) {
        if start >= end {
            return;
        }
        self.forget(start, end);
        self.pages += (end - start) / self.page_size;
        self.extents.insert(start, LazyExtent { start, end, src });
    }

    /// The extent containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<LazyExtent> {
        self.extents.range(..=addr).next_back().map(|(_, e)| *e).filter(|e| e.end > addr)
    }

    /// The first extent at or after `cursor` (clipped to start there), or else the first one.
    pub fn next_from(&self, cursor: u64) -> Option<LazyExtent> {
        if let Some(e) = self.lookup(cursor) {
            return Some(LazyExtent { start: cursor, end: e.end, src: e.src_of(cursor) });
        }
        self.extents.range(cursor..).next().or_else(|| self.extents.iter().next()).map(|(_, e)| *e)
    }

    /// Removes `[start, end)` and returns the pieces that were lazy there, in address order.
    pub fn take(&mut self, start: u64, end: u64) -> Vec<LazyExtent> {
        let mut out = Vec::new();
        self.remove_range(start, end, |piece| out.push(piece));
        out
    }

    /// Removes `[start, end)` and returns how many lazy pages were there (no allocation: the
    /// fault and push paths call this for every install).
    pub fn forget(&mut self, start: u64, end: u64) -> u64 {
        let ps = self.page_size;
        let mut pages = 0;
        self.remove_range(start, end, |piece| pages += (piece.end - piece.start) / ps);
        pages
    }

    /// Removes `[start, end)`, handing each piece that was lazy there to `piece`, in address order.
    fn remove_range(&mut self, start: u64, end: u64, mut piece: impl FnMut(LazyExtent)) {
        let mut at = start;
        while at < end {
            let overlapping = self.extents.range(..at).next_back().filter(|(_, e)| e.end > at).map(|(k, _)| *k);
            let Some(key) = overlapping.or_else(|| self.extents.range(at..end).next().map(|(k, _)| *k)) else {
                break;
            };
            let Some(e) = self.extents.remove(&key) else { break };
            let (s, t) = (e.start.max(start), e.end.min(end));
            if e.start < s {
                self.extents.insert(e.start, LazyExtent { start: e.start, end: s, src: e.src });
            }
            if t < e.end {
                self.extents.insert(t, LazyExtent { start: t, end: e.end, src: e.src_of(t) });
            }
            self.pages -= (t - s) / self.page_size;
            piece(LazyExtent { start: s, end: t, src: e.src_of(s) });
            at = t;
        }
    }

    /// Applies `mremap(from, len) -> to`: the lazy pages of the old range move to the new one
    /// (keeping their dump-time addresses); whatever was lazy at the destination is dropped.
    /// Returns the number of pages dropped at the destination.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) -> u64 {
        let moved = self.take(from, from + len);
        let dropped = self.forget(to, to + len);
        for e in moved {
            self.insert(e.start - from + to, e.end - from + to, e.src);
        }
        dropped
    }

    /// The extents in address order.
    pub fn iter(&self) -> impl Iterator<Item = &LazyExtent> {
        self.extents.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PS: u64 = 4096;

    #[test]
    fn take_splits_and_counts() {
        let mut r = LazyRanges::new(PS);
        r.insert(0x10000, 0x20000, 0x10000);
        assert_eq!(r.len_pages(), 16);
        let got = r.take(0x12000, 0x13000);
        assert_eq!(got, vec![LazyExtent { start: 0x12000, end: 0x13000, src: 0x12000 }]);
        assert_eq!(r.len_pages(), 15);
        assert_eq!(r.lookup(0x12000), None);
        assert_eq!(r.lookup(0x13000).map(|e| e.start), Some(0x13000));
        assert_eq!(r.next_from(0x12000).map(|e| e.start), Some(0x13000));
        assert_eq!(r.next_from(0x30000).map(|e| e.start), Some(0x10000));
        assert_eq!(r.next_from(0x14000), Some(LazyExtent { start: 0x14000, end: 0x20000, src: 0x14000 }));
    }

    #[test]
    fn remap_keeps_source_addresses() {
        let mut r = LazyRanges::new(PS);
        r.insert(0x10000, 0x14000, 0x10000);
        r.insert(0x50000, 0x51000, 0x50000);
        assert_eq!(r.remap(0x11000, 0x50000, 0x2000), 1);
        assert_eq!(r.lookup(0x51000).map(|e| e.src_of(0x51000)), Some(0x12000));
        assert_eq!(r.lookup(0x11000), None);
        assert_eq!(r.len_pages(), 4);
    }

    proptest! {
        /// Against a page-by-page model: take/insert/remap agree on which pages are lazy and
        /// where their data comes from.
        #[test]
        fn matches_page_model(ops in prop::collection::vec((0u8..3, 0u64..64, 1u64..16, 0u64..64), 1..40)) {
            let mut r = LazyRanges::new(PS);
            let mut model = std::collections::BTreeMap::new();
            for (op, a, n, b) in ops {
                let (start, end) = (a * PS, (a + n) * PS);
                match op {
                    0 => {
                        r.insert(start, end, start + 0x100_0000);
                        for p in a..a + n { model.insert(p * PS, p * PS + 0x100_0000); }
                    }
                    1 => {
                        let got: u64 = r.take(start, end).iter().map(|e| (e.end - e.start) / PS).sum();
                        let mut want = 0;
                        for p in a..a + n { want += u64::from(model.remove(&(p * PS)).is_some()); }
                        prop_assert_eq!(got, want);
                    }
                    _ => {
                        if b + n <= a || a + n <= b {
                            r.remap(start, b * PS, n * PS);
                            let moved: Vec<(u64, u64)> = (a..a + n).filter_map(|p| model.remove(&(p * PS)).map(|s| (p, s))).collect();
                            for p in b..b + n { model.remove(&(p * PS)); }
                            for (p, s) in moved { model.insert((p - a + b) * PS, s); }
                        }
                    }
                }
                prop_assert_eq!(r.len_pages(), model.len() as u64);
            }
            for (addr, src) in &model {
                prop_assert_eq!(r.lookup(*addr).map(|e| e.src_of(*addr)), Some(*src));
            }
        }
    }
}
