//! The destination side: [`PageStore`] stages the pages of a migration as they arrive (any
//! order, any round, newest round wins) and on commit writes a CRIU image directory atomically.

mod image_out;
pub mod local_sink;
pub mod page_store;
pub mod snapshot;
mod snapshot_owner;

pub use local_sink::LocalSink;
pub use page_store::{CommittedImage, PageStore, StoreError};
pub use snapshot::MAX_SNAPSHOTS;
