//! Lazy (post-copy) restore over QUIC: the destination's lazy-pages daemon pulls faulted pages
//! from a source that pushes all the others in the background.
//!
//! * [`frame`]: the sans-IO codec; [`stream`]: frames read from a quinn stream.
//! * [`server`]: [`LazyServer`] (`pagestream serve-lazy`), pages from an image directory;
//!   [`push_order`]: which pages its push sends next.
//! * [`client`]: [`RemotePageSource`], the engine's `PageSource` over QUIC (`pagestream
//!   lazy-pages --from`), with reconnection; [`push_cache`]: the pushed pages it holds and where
//!   the push stands, filled by [`push_reader`]; [`fd_wait`]: the daemon's wait, driving its connection on the daemon's
//!   own thread.
//!
//! One QUIC connection per daemon (ALPN [`LAZY_ALPN`], mutual TLS): an *urgent* bidirectional
//! stream at the highest priority carries the faults' Fetch requests and their answers; the
//! source pushes every other lazy page on a unidirectional stream at low priority, restarting
//! next to each faulted run (after it, or below it when the faults walk downwards: where the
//! process is likely to touch next) and never sending a page twice in a session. The daemon
//! keeps pushed pages in a bounded cache until its own push step installs them (back-pressure
//! through QUIC flow control when full); a fault just ahead of the push waits for it rather than
//! fetch, since the answer would queue behind the same push data. The source keeps every
//! page until the daemon says Done; a broken connection is resumed with the same session, the
//! faulting threads simply waiting.

pub mod client;
pub mod fd_wait;
pub mod frame;
pub mod push_cache;
pub mod push_order;
pub mod push_reader;
pub mod server;
pub mod stream;

pub use client::{RemoteConfig, RemotePageSource, RemoteStats};
pub use frame::{LazyDecoder, LazyEncoder, LazyFrame, LazyFrameError};
pub use server::{LazyServer, LazyServerReport};

/// The ALPN protocol id of lazy-pages connections.
pub const LAZY_ALPN: &[u8] = b"pagestream-lazy/1";
