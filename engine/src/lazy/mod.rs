//! Lazy (post-copy) restore: pagestream as CRIU's lazy-pages daemon.
//!
//! * [`source`]: [`PageSource`], where pages come from (by dump-time address), and
//!   [`ImageSource`], a local image directory.
//! * [`ranges`]: [`LazyRanges`], the pages of an address space still to install.
//! * [`handler`]: [`TaskUffd`], one userfaultfd: faults (batched `UFFDIO_COPY`, zero page for
//!   holes), REMOVE/UNMAP/REMAP/FORK, background push steps.
//! * [`handoff`]: the `lazy-pages.socket` protocol (sans-IO decoder, daemon and restorer ends).
//! * [`daemon`]: [`daemon::serve`], the event loop tying them together.
//! * [`stats`]: [`LazyStats`], fault latency and residency.
//! * [`working_set`]: [`WorkingSet`], the faulted runs in order (recorded, then pushed first).

pub mod daemon;
pub mod handler;
pub mod handoff;
pub mod ranges;
pub mod source;
pub mod stats;
pub mod working_set;

pub use daemon::{serve, DaemonError};
pub use handler::{PushStep, TaskUffd};
pub use handoff::{HandoffClient, HandoffDecoder, HandoffEvent, HandoffListener, RESTORE_FINISHED, SOCKET_NAME};
pub use ranges::LazyRanges;
pub use source::{ImageSource, PageSource, SourceError};
pub use stats::{LazyStats, LazySummary};
pub use working_set::WorkingSet;
