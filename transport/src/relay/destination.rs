//! [`RelayReceiver`]: the destination end of the relay (`pagestream receive --criu-sessions`).
//! It listens for QUIC connections with ALPN [`RELAY_ALPN`](super::RELAY_ALPN) and runs, for the
//! session each one carries, a [`PageServerSession`] over the next directory of a
//! [`SessionDirs`] root, exactly as the local page server does: session k in `DIR/k`,
//! `parent -> ../k-1` when `DIR/k-1` exists, `DIR/last` moved on commit, OPEN2 / PARENT answered
//! from `DIR/k-1`, and the CLOSE answer (Committed) sent only after the commit.
//!
//! Sessions are served one after another (their numbers depend on the previous one). A failed
//! session (a refused entry, a bad frame, the source's Abort, a lost connection) keeps nothing:
//! its directory is dropped, `last` does not move, the source is told why (Failed, then the
//! connection is closed with the reason), and the receiver goes on with the next connection. The
//! disk work runs in the caller's thread; QUIC on a small tokio runtime owned by the receiver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, Endpoint, VarInt};
use tokio::runtime::Runtime;

use super::files::{receive_files, FileStats};
use super::frame::{bounded_reason, RelayFrame, BEGIN_WITH_FILES, RELAY_VERSION};
use super::stream::FrameStream;
use super::{relay_server_crypto, relay_transport, RelayError};
use crate::criu_ps::session::{PageServerSession, SessionError, SessionStats};
use crate::criu_ps::session_target::{SessionTarget, StagedSession};
use crate::criu_ps::tcp_server::ServeTotals;
use crate::criu_ps::ServerInput;
use crate::quic::endpoint::{make_endpoint, runtime, Side, DEFAULT_IDLE_TIMEOUT};
use crate::quic::receiver_session::describe;
use crate::quic::session::{close, CLOSE_ABORT, CLOSE_DONE, CLOSE_SHUTDOWN};
use crate::quic::{Security, TransportError};
use pagestream_engine::criu::session_dirs::{CommittedSession, SessionDirs};

/// How long the receiver waits for the source to end its stream after Committed.
const LINGER: Duration = Duration::from_secs(10);
/// How long a failed session waits for the source to take its Failed frame before closing (the
/// close carries the reason too).
const FAIL_LINGER: Duration = Duration::from_secs(1);

/// A session the receiver committed.
#[derive(Debug, Clone)]
pub struct DestinationSummary {
    /// Its number and directory.
    pub committed: CommittedSession,
    /// What it received.
    pub stats: SessionStats,
    /// The image files of a whole dump (sessions begun with files, from the CRIU plugin).
    pub files: Option<FileStats>,
    /// Bytes read from the relay stream.
    pub wire_bytes: u64,
}

/// The outcome of one relayed session.
#[derive(Debug)]
pub struct DestinationReport {
    /// The source.
    pub peer: SocketAddr,
    /// The number the session was given (a failed one leaves it to the next session).
    pub number: Option<u64>,
    /// From the connection to the end of the session.
    pub elapsed: Duration,
    /// The committed session or why there is none.
    pub result: Result<DestinationSummary, RelayError>,
}

/// The relay's QUIC server; see the module documentation. `Sync`: [`close`](Self::close) may be
/// called from another thread while [`serve`](Self::serve) runs.
pub struct RelayReceiver {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    // Declared last: dropped after the endpoint that lives on it.
    rt: Runtime,
}

impl RelayReceiver {
    /// Listens on `listen` (UDP) with the default 10 s QUIC idle timeout.
    pub fn bind(listen: SocketAddr, security: &Security) -> Result<RelayReceiver, TransportError> {
        RelayReceiver::bind_with(listen, security, DEFAULT_IDLE_TIMEOUT)
    }

    /// Listens on `listen` with QUIC idle timeout `idle_timeout`.
    pub fn bind_with(
        listen: SocketAddr,
        security: &Security,
        idle_timeout: Duration,
    ) -> Result<RelayReceiver, TransportError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(relay_server_crypto(security)?)
            .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(relay_transport(Side::Server, idle_timeout)?);
        let rt = runtime("pagestream-relay-recv", 1)?;
        let endpoint = {
            let _guard = rt.enter();
            make_endpoint(listen, Some(server))?
        };
        let local_addr =
            endpoint.local_addr().map_err(|e| TransportError::io(format!("address of the endpoint on {listen}"), e))?;
        tracing::info!(%local_addr, %security, "CRIU relay receiver listening");
        Ok(RelayReceiver { endpoint, local_addr, rt })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the endpoint: a session in progress fails (nothing of it is kept) and
    /// [`serve`](Self::serve) returns.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"receiver shut down");
    }

    /// Serves relayed sessions into `dirs`, one after another, calling `on_session` after each;
    /// returns after `sessions` sessions (committed or failed), or with an error once closed.
    /// Connections that fail before a session starts (a refused certificate) are logged only.
    pub fn serve(
        &self,
        dirs: &SessionDirs,
        sessions: Option<u64>,
        mut on_session: impl FnMut(&DestinationReport),
    ) -> Result<ServeTotals, TransportError> {
        let mut totals = ServeTotals::default();
        while sessions.is_none_or(|max| totals.committed + totals.failed < max) {
            let accepted = self.rt.block_on(async {
                let incoming = self
                    .endpoint
                    .accept()
                    .await
                    .ok_or_else(|| TransportError::Accept("the receiver was closed".into()))?;
                let peer = incoming.remote_address();
                Ok::<_, TransportError>(incoming.await.map_err(|e| (peer, describe(&e))))
            })?;
            let conn = match accepted {
                Ok(conn) => conn,
                Err((peer, reason)) => {
                    tracing::warn!(%peer, "relay connection refused: {reason}");
                    continue;
                }
            };
            let started = Instant::now();
            let mut number = None;
            let result = self.session(&conn, dirs, &mut number);
            let report = DestinationReport { peer: conn.remote_address(), number, elapsed: started.elapsed(), result };
            if report.result.is_ok() {
                totals.committed += 1;
            } else {
                totals.failed += 1;
            }
            on_session(&report);
        }
        // Let the last CONNECTION_CLOSE leave before the caller exits.
        self.rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        });
        Ok(totals)
    }

    /// The session on `conn`; closes `conn` when done.
    fn session(
        &self,
        conn: &Connection,
        dirs: &SessionDirs,
        number: &mut Option<u64>,
    ) -> Result<DestinationSummary, RelayError> {
        let (send, recv) = self.rt.block_on(conn.accept_bi()).map_err(|e| TransportError::Accept(describe(&e)))?;
        let mut relay = FrameStream::new(send, recv, false);
        let mut stats = SessionStats::default();
        let mut files = None;
        // Whatever `receive` had not committed is dropped (removed) when it returns.
        let result = self.receive(&mut relay, dirs, &mut stats, &mut files, number);
        let reason = result.as_ref().err().map(|e| bounded_reason(&e.to_string()));
        self.rt.block_on(async {
            let linger = match &reason {
                Some(reason) => {
                    let failed = RelayFrame::Failed { reason: reason.clone() };
                    let _ = tokio::time::timeout(FAIL_LINGER, relay.send(&failed)).await;
                    FAIL_LINGER
                }
                None => LINGER,
            };
            relay.finish();
            // Committed / Failed must reach the source before the connection goes: wait for its end.
            let _ = tokio::time::timeout(linger, async { while let Ok(Some(_)) = relay.recv().await {} }).await;
        });
        match &reason {
            Some(reason) => close(conn, CLOSE_ABORT, reason),
            None => close(conn, CLOSE_DONE, "session committed"),
        }
        let committed = result?;
        Ok(DestinationSummary { committed, stats, files, wire_bytes: relay.bytes_in })
    }

    fn receive(
        &self,
        relay: &mut FrameStream,
        dirs: &SessionDirs,
        stats: &mut SessionStats,
        files: &mut Option<FileStats>,
        number: &mut Option<u64>,
    ) -> Result<CommittedSession, RelayError> {
        let with_files = match self.rt.block_on(relay.recv())? {
            Some(RelayFrame::Begin { version, page_size, flags }) => {
                check_begin(version, page_size, flags, dirs.page_size())?;
                flags & BEGIN_WITH_FILES != 0
            }
            Some(other) => return Err(RelayError::Unexpected { got: other.name(), when: "instead of Begin" }),
            None => return Err(RelayError::SourceAborted("the stream ended before Begin".into())),
        };
        let dir = dirs.begin().map_err(SessionError::Begin)?;
        *number = Some(dir.number());
        if !with_files {
            let mut s = PageServerSession::new(dir, dirs.page_size());
            let result = self.pages(relay, &mut s);
            *stats = *s.stats();
            let (committed, reply) = result?;
            let frame = RelayFrame::Committed { session: committed.number, reply };
            // Committed is durable already; a lost answer makes the source fail CRIU, which
            // then retries into the next number: harmless.
            if let Err(e) = self.rt.block_on(relay.send(&frame)) {
                tracing::warn!(session = committed.number, "session committed but the answer was lost: {e}");
            }
            return Ok(committed);
        }
        let mut s = PageServerSession::new(StagedSession(dir), dirs.page_size());
        let result = self.pages(relay, &mut s);
        *stats = *s.stats();
        let (staged, reply) = result?;
        self.rt.block_on(relay.send(&RelayFrame::Reply(reply)))?;
        let received = files.insert(FileStats::default());
        let committed = self.rt.block_on(receive_files(relay, staged, stats.data_bytes, received))?;
        let frame = RelayFrame::Committed { session: committed.number, reply: Bytes::new() };
        if let Err(e) = self.rt.block_on(relay.send(&frame)) {
            tracing::warn!(session = committed.number, "dump committed but the answer was lost: {e}");
        }
        Ok(committed)
    }

    /// CRIU's page-server session up to CLOSE: answers OPEN2 / PARENT with Reply; returns what
    /// the target's commit yielded and the CLOSE reply owed to CRIU.
    fn pages<T: SessionTarget>(
        &self,
        relay: &mut FrameStream,
        s: &mut PageServerSession<T>,
    ) -> Result<(T::Committed, Bytes), RelayError> {
        let mut reply = Vec::new();
        loop {
            let input = match self.rt.block_on(relay.recv())? {
                Some(RelayFrame::Command(command)) => ServerInput::Command(command),
                Some(RelayFrame::Data(data)) => ServerInput::PageData(data),
                Some(RelayFrame::Abort { reason }) => return Err(RelayError::SourceAborted(reason)),
                Some(other) => return Err(RelayError::Unexpected { got: other.name(), when: "inside a session" }),
                None => {
                    s.end_of_stream()?;
                    return Err(RelayError::SourceAborted("the stream ended before CLOSE".into()));
                }
            };
            s.handle(input, &mut reply)?;
            if reply.is_empty() {
                continue;
            }
            let answer = Bytes::from(std::mem::take(&mut reply));
            if let Some(committed) = s.take_committed() {
                return Ok((committed, answer));
            }
            self.rt.block_on(relay.send(&RelayFrame::Reply(answer)))?;
        }
    }
}

fn check_begin(version: u32, page_size: u64, flags: u32, ours: u64) -> Result<(), RelayError> {
    if version != RELAY_VERSION {
        return Err(RelayError::Begin(format!(
            "relay protocol version {version} is not supported (this receiver speaks {RELAY_VERSION})"
        )));
    }
    if page_size != ours {
        return Err(RelayError::Begin(format!("the source's page size {page_size} differs from this host's {ours}")));
    }
    if flags & !BEGIN_WITH_FILES != 0 {
        return Err(RelayError::Begin(format!("unknown Begin flags {flags:#x}")));
    }
    Ok(())
}

impl Drop for RelayReceiver {
    fn drop(&mut self) {
        self.close();
    }
}
