//! [`Receiver`]: the receiving end of a QUIC page stream. It binds a QUIC server endpoint and,
//! per [`Receiver::serve_one`] call (blocking), accepts one sender, handshakes, lands every run
//! of every data stream in a [`PageStore`] staged next to the image directory, acknowledges each
//! round once all its pages are held, and on commit writes the CRIU image directory atomically
//! before acknowledging it.
//!
//! An Abort, a decode error, a refused certificate, a protocol violation or a lost connection
//! ends `serve_one` with an error and leaves no directory: the store's staging file is unnamed,
//! and the image directory only appears, complete and synced, at commit. Once the CommitAck has
//! been written the directory stays, even if the sender vanishes right after (it may have
//! stopped its process on that acknowledgement).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, VarInt};
use tokio::runtime::Runtime;

use super::endpoint::{make_endpoint, runtime, shared_transport, Side, DEFAULT_IDLE_TIMEOUT};
use super::error::TransportError;
use super::receiver_session::{describe, Session};
use super::session::CLOSE_SHUTDOWN;
use super::tls::{quic_server_config, Security};
use crate::wire::{Codecs, DataLimits, DEFAULT_MAX_RUN_PAGES};

/// How a [`Receiver`] behaves.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// TLS.
    pub security: Security,
    /// The page size senders must use (default: this host's).
    pub page_size: u64,
    /// Longest run accepted (default 1024 pages).
    pub max_run_pages: u32,
    /// QUIC idle timeout (default 10 s); also bounds the wait for a connected sender's Hello.
    pub idle_timeout: Duration,
    /// Write background parent images after each round so that the commit (the source frozen)
    /// writes only what changed since (default); `false`: one flat image directory, all of it
    /// written at commit.
    pub snapshots: bool,
}

impl ReceiverConfig {
    /// Defaults with `security`.
    pub fn new(security: Security) -> ReceiverConfig {
        ReceiverConfig {
            security,
            page_size: pagestream_engine::page_size(),
            max_run_pages: DEFAULT_MAX_RUN_PAGES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            snapshots: true,
        }
    }
}

/// Progress of a session, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// A sender connected and the handshake succeeded.
    Connected {
        /// Its address.
        peer: SocketAddr,
    },
    /// A round started.
    RoundStarted {
        /// The round.
        round: u32,
    },
    /// Every page of a round is held.
    RoundDone {
        /// The round.
        round: u32,
        /// Pages with data in it.
        data_pages: u64,
        /// Zero pages in it.
        zero_pages: u64,
        /// Distinct pages held after it.
        pages_held: u64,
        /// Bytes received so far in the session.
        wire_bytes: u64,
    },
    /// The image directory is written and synced.
    Committed {
        /// Where.
        dir: PathBuf,
        /// Distinct pages it holds.
        pages: u64,
    },
}

/// What a completed session produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    /// The image directory.
    pub dir: PathBuf,
    /// Rounds received.
    pub rounds: u32,
    /// Distinct pages in the image.
    pub pages: u64,
    /// Bytes received on all streams.
    pub wire_bytes: u64,
    /// The sender's address.
    pub peer: SocketAddr,
    /// Background snapshots written during pre-copy (the levels of the image's pre-dump chain).
    pub snapshots: usize,
    /// Page bytes the commit itself wrote while the source was frozen.
    pub commit_written_bytes: u64,
}

/// A QUIC page-stream server. `Sync`: [`close`](Self::close) may be called from another thread
/// while [`serve_one`](Self::serve_one) runs.
pub struct Receiver {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    cfg: ReceiverConfig,
    // Declared last: dropped after the endpoint that lives on it.
    rt: Runtime,
}

impl Receiver {
    /// Listens on `listen` with the default configuration.
    pub fn bind(listen: SocketAddr, security: Security) -> Result<Receiver, TransportError> {
        Receiver::bind_with(listen, ReceiverConfig::new(security))
    }

    /// Listens on `listen`.
    pub fn bind_with(listen: SocketAddr, cfg: ReceiverConfig) -> Result<Receiver, TransportError> {
        DataLimits::new(cfg.page_size, cfg.max_run_pages, Codecs::ALL)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server_config(&cfg.security)?));
        server.transport_config(shared_transport(Side::Server, cfg.idle_timeout)?);
        let rt = runtime("pagestream-recv", 2)?;
        let endpoint = {
            let _guard = rt.enter();
            make_endpoint(listen, Some(server))?
        };
        let local_addr =
            endpoint.local_addr().map_err(|e| TransportError::io(format!("address of the endpoint on {listen}"), e))?;
        tracing::info!(%local_addr, security = %cfg.security, "QUIC page receiver listening");
        Ok(Receiver { endpoint, local_addr, cfg, rt })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the endpoint: a session in progress fails, `serve_one` returns an error, and no
    /// further connection is accepted.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"receiver shut down");
    }

    /// Accepts one sender and receives its session into `images_dir` (which must not exist; its
    /// parent must, and holds the staging file). Blocks until the session is committed (`Ok`) or
    /// failed (`Err`, and no directory). `on_event` sees progress on the calling thread.
    pub fn serve_one(
        &self,
        images_dir: &Path,
        mut on_event: impl FnMut(ReceiverEvent),
    ) -> Result<SessionReport, TransportError> {
        if images_dir.symlink_metadata().is_ok() {
            return Err(TransportError::Config(format!("{} exists already", images_dir.display())));
        }
        let parent = match images_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(TransportError::Config(format!("{} is not a directory", parent.display())));
        }
        let mut worker = None;
        let result = self.rt.block_on(async {
            let incoming =
                self.endpoint.accept().await.ok_or_else(|| TransportError::Accept("the receiver was closed".into()))?;
            let peer = incoming.remote_address();
            let conn = incoming.await.map_err(|e| TransportError::Accept(format!("from {peer}: {}", describe(&e))))?;
            tracing::info!(%peer, "sender connected");
            let mut session = Session::new(&self.cfg, conn.clone(), images_dir, &parent);
            let outcome = session.run(&mut on_event, &mut worker).await;
            session.stop();
            if let Err(e) = &outcome {
                session.report_failure(e).await;
            }
            outcome
        });
        if let Some(handle) = worker {
            // The worker ends once the data-stream tasks (aborted above) dropped their senders.
            let _ = handle.join();
        }
        result
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}
