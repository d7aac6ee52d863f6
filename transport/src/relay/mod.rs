//! CRIU page-server sessions forwarded over QUIC: `criu dump --page-server` talks to a local
//! [`source::RelaySource`] (`pagestream page-server --to HOST:PORT`), which relays each session to
//! a [`destination::RelayReceiver`] (`pagestream receive --criu-sessions`) that stores it exactly
//! as the local page server does (`DIR/k`, `parent -> ../k-1`, `DIR/last`).
//!
//! * **One QUIC connection per CRIU session** (one CRIU invocation), carrying one bidirectional
//!   stream of [`frame`]s: the source sends Begin, then each CRIU command as a small frame and
//!   page data in chunks of up to [`source::CHUNK_BYTES`] (all-zero chunks as a marker with no
//!   payload, else LZ4 when smaller, else raw); the destination answers OPEN2 / PARENT with the
//!   reply bytes its [`PageServerSession`](crate::criu_ps::session::PageServerSession) produced
//!   (so `has_parent` is the destination's truth), and CLOSE with Committed only after the session
//!   directory is durable. A connection per session keeps sessions independent: a destination
//!   restarted between two CRIU invocations, or a session failed half-way, costs nothing to the
//!   next one, and a handshake (one round trip plus TLS) per `criu dump` is negligible.
//! * Mutual TLS 1.3 with the same files and rustls configurations as the native transport
//!   ([`crate::quic::tls`]), under its own ALPN [`RELAY_ALPN`] so that a native `pagestream send`
//!   and a relay cannot be mistaken for each other (the handshake fails with "no application
//!   protocol").
//! * Failure: any error on either side (CRIU's stream, the relay stream, the destination's
//!   session, a lost connection) fails the session: the destination drops its session directory
//!   (nothing committed, `last` unchanged) and the source closes CRIU's socket without a CLOSE
//!   reply, which is the only way to make CRIU fail (it ignores the CLOSE status).
//!
//! * **Whole dumps** (the CRIU plugin): a session begun with files answers CRIU's CLOSE without
//!   committing; the dump's other image files follow ([`files`]) and Commit makes the destination
//!   commit the directory with a [`CommitMarker`](pagestream_engine::criu::CommitMarker).
//!
//! Files: [`frame`] (sans-IO codec), [`stream`] (frames over a quinn stream), [`source`],
//! [`destination`], [`files`].

pub mod destination;
pub mod files;
pub mod frame;
pub mod source;
pub mod stream;

use std::time::Duration;

use crate::criu_ps::session::SessionError;
use crate::criu_ps::ProtocolError;
use crate::quic::endpoint::{transport_config, Side};
use crate::quic::tls::{client_crypto, server_crypto};
use crate::quic::{Security, TransportError};

pub use destination::{DestinationReport, DestinationSummary, RelayReceiver};
pub use frame::{FrameDecoder, FrameEncoder, FrameError, RelayFrame};
pub use source::{RelayConfig, RelayReport, RelaySource, RelaySummary};

/// The ALPN protocol id of relayed CRIU page-server sessions.
pub const RELAY_ALPN: &[u8] = b"pagestream-criu/1";

/// Why a relayed session failed (on either side).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// QUIC, TLS or the connection.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The relay stream is not the relay protocol.
    #[error("relay stream: {0}")]
    Frame(#[from] FrameError),
    /// CRIU's byte stream is not CRIU's protocol (source side).
    #[error("from CRIU: {0}")]
    Criu(#[from] ProtocolError),
    /// The page-server session refused something or could not be stored (destination side).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The destination failed the session and said why.
    #[error("the destination failed the session: {0}")]
    Destination(String),
    /// The source gave the session up and said why.
    #[error("the source aborted the session: {0}")]
    SourceAborted(String),
    /// A frame out of place.
    #[error("unexpected {got} frame {when}")]
    Unexpected { got: &'static str, when: &'static str },
    /// CRIU's socket failed.
    #[error("CRIU socket {op} failed: {source}")]
    Io { op: &'static str, source: std::io::Error },
    /// CRIU sent nothing for too long.
    #[error("no data from CRIU for {0:?}")]
    IdleTimeout(Duration),
    /// CRIU closed its connection before CLOSE.
    #[error("CRIU closed the connection before CLOSE (after {commands} commands): the data were not flushed")]
    EofBeforeClose { commands: u64 },
    /// The peer's Begin does not fit this side.
    #[error("{0}")]
    Begin(String),
    /// A dump's image file could not be read (source side).
    #[error("reading the image file {name}: {source}")]
    File { name: String, source: std::io::Error },
    /// The dump's image files were refused or could not be stored (destination side).
    #[error("image files: {0}")]
    Files(String),
}

/// The rustls server configuration of a relay destination: the native one with [`RELAY_ALPN`].
pub fn relay_server_crypto(security: &Security) -> Result<rustls::ServerConfig, TransportError> {
    let mut config = server_crypto(security)?;
    config.alpn_protocols = vec![RELAY_ALPN.to_vec()];
    Ok(config)
}

/// The rustls client configuration of a relay source: the native one with [`RELAY_ALPN`].
pub fn relay_client_crypto(security: &Security) -> Result<rustls::ClientConfig, TransportError> {
    let mut config = client_crypto(security)?;
    config.alpn_protocols = vec![RELAY_ALPN.to_vec()];
    Ok(config)
}

/// Transport parameters of a relay connection: the native windows and timeouts, one
/// bidirectional stream (a session) at a time, no unidirectional streams.
pub fn relay_transport(
    side: Side,
    idle_timeout: Duration,
) -> Result<std::sync::Arc<quinn::TransportConfig>, TransportError> {
    let mut t = transport_config(side, idle_timeout)?;
    let bidi = if side == Side::Server { 1u32 } else { 0 };
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(bidi));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Ok(std::sync::Arc::new(t))
}
