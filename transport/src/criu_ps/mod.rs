//! CRIU's page-server wire protocol as a sans-IO codec: bytes in, typed messages out (and back).
//!
//! `criu dump --page-server` / `criu pre-dump` (the client) streams memory to a page server over
//! one TCP connection: fixed-size headers (`struct page_server_iov`, 24 bytes up to CRIU 4.1.1,
//! 32 bytes from 4.2, in host byte order) each followed, for ADD and for ADD_F with
//! `PE_PRESENT`, by `nr_pages * page_size` bytes of page data. A few commands get a small reply
//! (OPEN2, PARENT, CLOSE) and the lazy-pages daemon's GET gets an ADD_F header plus data back.
//! Nothing here touches a socket (except [`tcp_server`]); the caller moves bytes.
//!
//! * [`header`] — the two [`HeaderLayout`]s, [`RawIov`] and layout detection.
//! * [`command`] — constants, [`DstId`], [`PsCommand`] and [`encode_command`].
//! * [`reply`] — [`Reply`], [`ReplyKind`] and [`encode_reply`].
//! * [`server_decoder`] — [`CommandDecoder`], the client → server stream as a page server sees it.
//! * [`client_decoder`] — [`ReplyDecoder`], the server → client stream as a client sees it.
//! * [`client_sink`] — [`client_sink::CriuPageServerSink`], a one-pass `PageSink` into a real
//!   `criu page-server` (`pagestream send --criu-page-server`).
//! * [`error`] — [`ProtocolError`].
//! * [`session`] — [`session::PageServerSession`], one dump session driving a
//!   [`session_target::SessionTarget`] (locally: a numbered image directory).
//! * [`lazy_client`] — [`lazy_client::CriuLazySource`], pages of `criu dump --lazy-pages` by GET.
//! * [`reply_reader`] — [`reply_reader::ReplyReader`], the clients' blocking read loop.
//! * [`lazy_server`] — GET sessions of `criu lazy-pages --page-server`, served from `DIR/last`.
//! * [`tcp_server`] — a blocking TCP page server that CRIU's `--page-server` can dump to.
//!
//! **Byte order:** everything is native-endian, as CRIU sends raw structs; both peers must have
//! the same endianness (little-endian on x86_64, aarch64, riscv64).
//!
//! **Page size** is a parameter of every codec (a power of two ≥ 256; 4096 on x86_64), never a
//! global.

pub mod client_decoder;
pub mod client_sink;
pub mod command;
pub mod error;
pub mod header;
pub mod lazy_client;
pub mod lazy_server;
pub mod reply;
pub mod reply_reader;
pub mod server_decoder;
pub mod session;
pub mod session_target;
pub mod tcp_server;

pub use client_decoder::{ClientInput, ReplyDecoder};
pub use command::{encode_command, DstId, PagemapKind, PsCommand, GET_REPLY_CMD};
pub use error::ProtocolError;
pub use header::{detect_layout, HeaderLayout, RawIov};
pub use reply::{encode_reply, Reply, ReplyKind};
pub use server_decoder::{CommandDecoder, LayoutChoice, ServerInput, DEFAULT_MAX_PAGES_PER_COMMAND};
