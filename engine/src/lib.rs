//! pagestream-engine: the socket-free core of pagestream.
//!
//! * [`page`]: the kernel page size and [`page::PageRun`], a run of consecutive pages.
//! * [`runset`]: [`runset::PageRunSet`], sorted non-overlapping runs with set algebra.
//! * [`criu`]: CRIU's image formats (pagemap, pages, parent chains) and an atomic image writer.

pub mod criu;
pub mod page;
pub mod runset;

pub use page::{page_size, PageRun};
pub use runset::PageRunSet;
