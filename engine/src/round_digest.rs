//! [`RoundDigest`]: a digest of the pages one pre-copy round carried, computed the same way by
//! the sender (from what it sent) and the receiver (from what it stored) and compared at the end
//! of the round. Frames travel on several streams, so the digest does not depend on order: it
//! is the wrapping sum, over pages, of `xxh3(page) ^ xxh3(vaddr)`. A zero page counts as the
//! hash of a zero page, however it travelled (zero run or data).

use xxhash_rust::xxh3::xxh3_64;

/// The order-independent digest of a set of `(vaddr, page)`; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundDigest {
    sum: u64,
    zero_page_hash: u64,
    page_size: u64,
}

impl RoundDigest {
    /// An empty digest for pages of `page_size` bytes.
    pub fn new(page_size: u64) -> RoundDigest {
        RoundDigest { sum: 0, zero_page_hash: xxh3_64(&vec![0u8; page_size as usize]), page_size }
    }

    fn place(vaddr: u64) -> u64 {
        xxh3_64(&vaddr.to_le_bytes())
    }

    /// Adds the pages of `data` (whole pages) starting at `vaddr`.
    pub fn add_pages(&mut self, vaddr: u64, data: &[u8]) {
        for (i, page) in data.chunks(self.page_size as usize).enumerate() {
            let at = vaddr + i as u64 * self.page_size;
            self.sum = self.sum.wrapping_add(xxh3_64(page) ^ Self::place(at));
        }
    }

    /// Adds `nr_pages` zero pages starting at `vaddr`.
    pub fn add_zero(&mut self, vaddr: u64, nr_pages: u64) {
        for i in 0..nr_pages {
            self.sum = self.sum.wrapping_add(self.zero_page_hash ^ Self::place(vaddr + i * self.page_size));
        }
    }

    /// The digest so far.
    pub fn value(&self) -> u64 {
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_encoding_do_not_matter_content_and_place_do() {
        let ps = 4096;
        let a = vec![7u8; ps as usize];
        let zeros = vec![0u8; 2 * ps as usize];
        let mut x = RoundDigest::new(ps);
        x.add_pages(0x1000, &a);
        x.add_zero(0x2000, 2);
        let mut y = RoundDigest::new(ps);
        y.add_pages(0x2000, &zeros);
        y.add_pages(0x1000, &a);
        assert_eq!(x.value(), y.value(), "zero pages as data or as a zero run, in any order");
        let mut moved = RoundDigest::new(ps);
        moved.add_pages(0x3000, &a);
        moved.add_zero(0x2000, 2);
        assert_ne!(x.value(), moved.value(), "the same bytes at another address");
        let mut changed = RoundDigest::new(ps);
        changed.add_pages(0x1000, &[8u8; 4096]);
        changed.add_zero(0x2000, 2);
        assert_ne!(x.value(), changed.value());
    }
}
