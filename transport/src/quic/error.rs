//! [`TransportError`]: why a QUIC session (or setting one up) failed, with messages meant for the
//! person running `pagestream send` / `receive`, and its mapping onto the engine's
//! [`SinkError`].

use std::io;
use std::path::PathBuf;

use pagestream_engine::sink::SinkError;
use pagestream_engine::store::StoreError;
use thiserror::Error;

use crate::wire::WireError;

/// A failed QUIC session, or a failure to set one up.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A TLS file could not be read or holds no usable PEM.
    #[error("TLS file {path}: {reason}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The TLS configuration could not be built from the given files.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),

    /// Making development certificates failed.
    #[error("development certificates: {0}")]
    Certs(String),

    /// A local I/O step failed (socket, files).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// A configuration value is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The QUIC/TLS connection could not be established.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer.
        addr: std::net::SocketAddr,
        /// Why (TLS alerts, timeouts, refused certificates show up here).
        reason: String,
    },

    /// No connection arrived, or the connection attempt of a peer failed on this side (for
    /// example its certificate was refused).
    #[error("incoming connection failed: {0}")]
    Accept(String),

    /// The peer refused the session in the handshake.
    #[error("the receiver refused the session: {0}")]
    Rejected(String),

    /// The peer broke pagestream's protocol (or we could not agree in the handshake).
    #[error("protocol error: {0}")]
    Protocol(#[from] WireError),

    /// The peer violated the session's rules (e.g. a round number out of order).
    #[error("protocol violation: {0}")]
    Violation(String),

    /// The connection went away.
    #[error("connection lost: {0}")]
    ConnectionLost(String),

    /// The peer aborted the session.
    #[error("the peer aborted the session: {0}")]
    Aborted(String),

    /// The peer did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The receiver's page store failed (staging file or image directory).
    #[error("page store: {0}")]
    Store(#[from] StoreError),

    /// The session is already over (committed, aborted or failed).
    #[error("the session is over: {0}")]
    Closed(String),
}

impl TransportError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> TransportError {
        TransportError::Io { what: what.into(), source }
    }
}

impl From<TransportError> for SinkError {
    fn from(err: TransportError) -> SinkError {
        match err {
            TransportError::Rejected(reason) => SinkError::Refused(reason),
            TransportError::Aborted(reason) => SinkError::Aborted(reason),
            other => SinkError::Transport(other.to_string()),
        }
    }
}
