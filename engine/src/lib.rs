//! pagestream-engine: the socket-free core of pagestream.
//!
//! * [`page`]: the kernel page size and [`page::PageRun`], a run of consecutive pages.
//! * [`runset`]: [`runset::PageRunSet`], sorted non-overlapping runs with set algebra.
//! * [`round_digest`]: [`round_digest::RoundDigest`], the order-independent digest of a round's pages.
//! * [`process`]: a live process: memory map, residency, ptrace stops, freezing.
//! * [`track`]: [`track::DirtyTracker`] and its backends (uffd-wp, soft-dirty, digest).
//! * [`read`]: [`read::PageReader`], pages out of a live process.
//! * [`precopy`]: the pre-copy round loop, its convergence policy, image verification.
//! * [`sink`]: [`sink::PageSink`], where a migration's pages go (implemented by transports).
//! * [`store`]: [`store::PageStore`], the destination's staging of received pages.
//! * [`sys`]: raw kernel interfaces (all `unsafe` lives there).
//! * [`lazy`]: lazy (post-copy) restore: the userfaultfd handler, page sources, the
//!   `lazy-pages.socket` handoff.
//! * [`criu`]: CRIU's image formats (pagemap, pages, parent chains) and an atomic image writer.
//!
//! ```
//! use pagestream_engine::criu::{ImageChain, ImageDirWriter, PageFlags, PageLookup, PagemapId};
//! use pagestream_engine::page_size;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! let ps = page_size();
//! let dir = tmp.path().join("1");
//! let mut w = ImageDirWriter::create(&dir, ps, 1)?;
//! w.open_pagemap(PagemapId::Task(1))?.push_present(0x7f00_0000_0000, &vec![7u8; ps as usize], PageFlags::LAZY)?;
//! w.commit()?; // fsynced and renamed into place
//!
//! let chain = ImageChain::open(&dir, None, ps)?;
//! chain.verify()?;
//! assert_eq!(chain.page_at(PagemapId::Task(1), 0x7f00_0000_0000)?, PageLookup::Data(vec![7u8; ps as usize]));
//! # Ok(())
//! # }
//! ```

pub mod criu;
pub mod lazy;
pub mod page;
pub mod precopy;
pub mod process;
pub mod read;
pub mod round_digest;
pub mod runset;
pub mod sink;
pub mod store;
pub mod sys;
pub mod track;

pub use page::{page_size, PageRun};
pub use runset::PageRunSet;
