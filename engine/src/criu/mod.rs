//! CRIU's image formats, as read and written by pagestream.
//!
//! * [`magic`]: file magics and image file names.
//! * [`proto`]: the protobuf records (`prost` derive, no `protoc` at build time).
//! * [`record`]: the `[magic][magic]([u32 len][protobuf])*` framing with offsets for errors.
//! * [`mm`]: the VMA bounds of `mm-<pid>.img` (lazy restore splits batches at them).
//! * [`pagemap`]: `pagemap-<id>.img` / `pagemap-shmem-<id>.img` parsed and validated.
//! * [`image_dir`]: one image directory: its pagemaps and their `pages-<id>.img` files.
//! * [`chain`]: `parent` links followed through any depth, and page lookup across the chain.
//! * [`writer`]: an image directory written atomically (temporary directory, fsync, rename);
//!   [`pagemap_writer`]: one pagemap and its pages file within it; [`temp_dir`]: the locked
//!   temporary directory it is written in, and removing those of writers that are gone.
//! * [`commit_marker`]: the marker of a complete dump committed by pagestream (CRIU plugin).
//! * [`session_dirs`]: numbered session directories `ROOT/k` chained by `parent` links, `ROOT/last`.

pub mod chain;
pub mod commit_marker;
pub mod error;
pub mod flags;
pub mod image_dir;
pub mod magic;
pub mod mm;
pub mod pagemap;
pub mod pagemap_writer;
pub mod proto;
pub mod record;
pub mod session_dirs;
pub mod temp_dir;
pub mod writer;

pub use chain::{ImageChain, PageLookup};
pub use commit_marker::{CommitMarker, MarkedFile};
pub use error::{ImageError, ImageErrorKind};
pub use flags::PageFlags;
pub use image_dir::{ImageDir, PagemapFile};
pub use magic::PagemapId;
pub use pagemap::{Pagemap, PagemapEntry};
pub use writer::{ImageDirWriter, ImageFileWriter, PagemapWriter};
