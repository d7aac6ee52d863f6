//! The QUIC page transport: pagestream's [`wire`](crate::wire) protocol over quinn with mutual
//! TLS 1.3.
//!
//! * [`sender`] — [`QuicSink`], a blocking [`PageSink`](pagestream_engine::sink::PageSink) with
//!   its own tokio runtime, compression in the caller's thread and a window bounded in bytes.
//! * [`sender_config`] — [`SenderConfig`], [`Compression`].
//! * [`sender_streams`] — the sender's handshake and data-stream writers behind a byte window.
//! * [`receiver`] — [`Receiver`]: accepts one session per [`Receiver::serve_one`] and writes it
//!   as a CRIU image directory through the engine's `PageStore`.
//! * [`receiver_session`] — one session inside the receiver: control loop and data-stream readers.
//! * [`store_worker`] — the receiver's thread that owns the page store.
//! * [`session`] — close codes, the control stream, error mapping, the fault slot.
//! * [`endpoint`] — sockets (4 MiB buffers), flow-control windows, idle timeout.
//! * [`tls`] — [`Security`], [`TlsFiles`], rustls configurations.
//! * [`certs`] — [`make_dev_certs`]: a development CA and certificates.
//! * [`error`] — [`TransportError`].

pub mod certs;
pub mod endpoint;
pub mod error;
pub mod receiver;
pub mod receiver_session;
pub mod sender;
pub mod sender_config;
pub mod sender_streams;
pub mod session;
pub mod store_worker;
pub mod tls;

pub use certs::{make_dev_certs, DevCerts, DEV_CERT_FILES};
pub use error::TransportError;
pub use receiver::{Receiver, ReceiverConfig, ReceiverEvent, SessionReport};
pub use sender::QuicSink;
pub use sender_config::{Compression, SenderConfig};
pub use tls::{Security, TlsFiles, ALPN};
