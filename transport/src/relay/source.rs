//! [`RelaySource`]: the CRIU-facing end of the relay (`pagestream page-server --to`). It accepts
//! CRIU's TCP connections one after another, as the local page server does, decodes each with a
//! [`CommandDecoder`], and relays it over its own QUIC connection to a
//! [`RelayReceiver`](super::RelayReceiver).
//!
//! Commands go out as Command frames; page data is cut into chunks of [`CHUNK_BYTES`] (the last
//! chunk of an entry may be shorter) and encoded by the frame encoder (zero marker, LZ4, raw).
//! Before a command that CRIU expects an answer to is answered, everything queued is written and
//! the destination's answer awaited: Reply (OPEN2, PARENT) is written to CRIU as is, Committed
//! (CLOSE) only arrives once the destination's session directory is durable. Then, as CRIU's own
//! server does, the source waits for CRIU to close first (not after FORCE_CLOSE).
//!
//! On any failure (CRIU's bytes, CRIU going away, the destination failing the session or
//! vanishing) the source tells the destination (Abort, best effort), closes the QUIC connection
//! and shuts CRIU's socket down without a CLOSE reply. The socket I/O is blocking, in the caller's
//! thread; QUIC runs on a small tokio runtime owned by the source.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn::{Connection, Endpoint, VarInt};
use tokio::runtime::Runtime;

use super::files::{send_files, DumpFile, FileStats};
use super::frame::{bounded_reason, ChunkEncoding, RelayFrame, BEGIN_WITH_FILES, RELAY_VERSION};
use super::stream::FrameStream;
use super::{relay_client_crypto, relay_transport, RelayError};
use crate::criu_ps::header::HeaderLayout;
use crate::criu_ps::tcp_server::ServeTotals;
use crate::criu_ps::{CommandDecoder, LayoutChoice, PsCommand, ServerInput};
use crate::quic::endpoint::{client_bind_addr, make_endpoint, runtime, Side, DEFAULT_IDLE_TIMEOUT};
use crate::quic::session::{close, connection_error, CLOSE_ABORT, CLOSE_DONE};
use crate::quic::{Security, TransportError};

/// Page data per Data frame (before compression).
pub const CHUNK_BYTES: usize = 256 << 10;
/// Bytes read from CRIU's socket per call.
const READ_CHUNK: usize = 256 << 10;
/// Queued frame bytes written to QUIC at once.
const FLUSH_BYTES: usize = 1 << 20;
/// How long a failing source waits for the destination's last word before closing.
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// How the source runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// TLS towards the destination.
    pub security: Security,
    /// The name the destination's certificate must carry.
    pub server_name: String,
    /// CRIU's header layout: fixed, or detected per session.
    pub layout: LayoutChoice,
    /// The page size of the dumping machine (this one).
    pub page_size: u64,
    /// Stop after this many sessions (committed or failed); `None`: forever.
    pub sessions: Option<u64>,
    /// Fail a session when CRIU sends nothing for this long; `None`: wait forever.
    pub idle_timeout: Option<Duration>,
    /// After the CLOSE reply, how long to wait for CRIU's EOF.
    pub close_wait: Duration,
    /// QUIC idle timeout: a silent destination is lost after this long.
    pub quic_idle_timeout: Duration,
    /// Compress page data with LZ4 (zero chunks are elided either way).
    pub lz4: bool,
}

impl RelayConfig {
    /// Detect the layout, serve forever, 300 s CRIU idle timeout, 30 s close wait, LZ4.
    pub fn new(security: Security, server_name: String, page_size: u64) -> RelayConfig {
        RelayConfig {
            security,
            server_name,
            layout: LayoutChoice::Detect,
            page_size,
            sessions: None,
            idle_timeout: Some(Duration::from_secs(300)),
            close_wait: Duration::from_secs(30),
            quic_idle_timeout: DEFAULT_IDLE_TIMEOUT,
            lz4: true,
        }
    }
}

/// A relayed session that the destination committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelaySummary {
    /// The destination's session number (`DIR/k`).
    pub session: u64,
    /// CRIU commands relayed.
    pub commands: u64,
    /// Bytes of page data CRIU sent.
    pub data_bytes: u64,
    /// Bytes written to the relay stream (frames, after compression).
    pub wire_bytes: u64,
    /// Data chunks sent as zero markers, LZ4 blocks and raw bytes.
    pub zero_chunks: u64,
    /// See `zero_chunks`.
    pub lz4_chunks: u64,
    /// See `zero_chunks`.
    pub raw_chunks: u64,
    /// CRIU's header size.
    pub layout: Option<HeaderLayout>,
    /// A problem after the commit (e.g. CRIU did not close); the session stays committed.
    pub warning: Option<String>,
}

/// The outcome of one CRIU connection.
#[derive(Debug)]
pub struct RelayReport {
    /// CRIU's address, when known.
    pub peer: Option<SocketAddr>,
    /// From accept to close.
    pub elapsed: Duration,
    /// The committed session or why there is none.
    pub result: Result<RelaySummary, RelayError>,
}

/// The source end of the relay; see the module documentation.
pub struct RelaySource {
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    dest: SocketAddr,
    cfg: RelayConfig,
    /// A connection made ahead of the next session ([`preconnect`](Self::preconnect)).
    preconnected: std::sync::Mutex<Option<(Connection, FrameStream)>>,
    // Declared last: dropped after the endpoint that lives on it.
    rt: Runtime,
}

impl RelaySource {
    /// A source relaying to `dest` (no connection is made until a session arrives).
    pub fn new(dest: SocketAddr, cfg: RelayConfig) -> Result<RelaySource, TransportError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(relay_client_crypto(&cfg.security)?)
            .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(relay_transport(Side::Client, cfg.quic_idle_timeout)?);
        let rt = runtime("pagestream-relay", 1)?;
        let endpoint = {
            let _guard = rt.enter();
            make_endpoint(client_bind_addr(dest), None)?
        };
        Ok(RelaySource { endpoint, client, dest, cfg, preconnected: Default::default(), rt })
    }

    /// Connects to the destination now, for the next session: an unreachable destination or a
    /// refused certificate is reported before CRIU starts dumping.
    pub fn preconnect(&self) -> Result<(), RelayError> {
        let pair = self.open_connection()?;
        if let Ok(mut slot) = self.preconnected.lock() {
            *slot = Some(pair);
        }
        Ok(())
    }

    /// Accepts and relays CRIU sessions one after another; calls `on_session` after each.
    /// Returns after [`RelayConfig::sessions`] sessions, or with `accept`'s error.
    pub fn serve(&self, listener: &TcpListener, mut on_session: impl FnMut(&RelayReport)) -> io::Result<ServeTotals> {
        let mut totals = ServeTotals::default();
        while self.cfg.sessions.is_none_or(|max| totals.committed + totals.failed < max) {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            let report = self.relay_connection(stream, Some(peer));
            if report.result.is_ok() {
                totals.committed += 1;
            } else {
                totals.failed += 1;
            }
            on_session(&report);
        }
        Ok(totals)
    }

    /// Relays the one session on `stream` (accepted or inherited).
    pub fn relay_connection(&self, stream: TcpStream, peer: Option<SocketAddr>) -> RelayReport {
        let started = Instant::now();
        let mut conn = None;
        let result = self.run(&stream, &mut conn, false).map(|(summary, _)| summary);
        if let Some(conn) = conn {
            match &result {
                Ok(_) => close(&conn, CLOSE_DONE, "session relayed"),
                Err(e) => close(&conn, CLOSE_ABORT, &e.to_string()),
            }
        }
        if result.is_err() {
            // No CLOSE reply: CRIU's only way to learn that the session failed.
            let _ = stream.shutdown(Shutdown::Both);
        }
        RelayReport { peer, elapsed: started.elapsed(), result }
    }

    fn connect(&self) -> Result<(Connection, FrameStream), RelayError> {
        let ready = self.preconnected.lock().ok().and_then(|mut slot| slot.take());
        match ready {
            Some((conn, relay)) if conn.close_reason().is_none() => Ok((conn, relay)),
            _ => self.open_connection(),
        }
    }

    fn open_connection(&self) -> Result<(Connection, FrameStream), RelayError> {
        let dest = self.dest;
        let failed = |reason: String| TransportError::Connect { addr: dest, reason };
        self.rt.block_on(async {
            let connecting = self
                .endpoint
                .connect_with(self.client.clone(), dest, &self.cfg.server_name)
                .map_err(|e| failed(e.to_string()))?;
            let conn = match tokio::time::timeout(self.cfg.quic_idle_timeout, connecting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(failed(e.to_string()).into()),
                Err(_) => return Err(failed(format!("no answer within {:?}", self.cfg.quic_idle_timeout)).into()),
            };
            let (send, recv) = conn.open_bi().await.map_err(|e| connection_error(&e))?;
            Ok((conn.clone(), FrameStream::new(send, recv, self.cfg.lz4)))
        })
    }

    /// Relays the page data of a whole dump on `stream` (the CRIU plugin): CRIU's CLOSE is
    /// answered once the destination holds the pages, but nothing is committed until
    /// [`HeldDump::commit`] has sent the dump's other files. On error the session is aborted at
    /// both ends and the error says why.
    pub fn relay_dump(&self, stream: TcpStream) -> Result<HeldDump<'_>, RelayError> {
        let started = Instant::now();
        let mut conn = None;
        match (self.run(&stream, &mut conn, true), conn) {
            (Ok((summary, Some(relay))), Some(conn)) => {
                Ok(HeldDump { source: self, conn, relay, summary, started, done: false })
            }
            (result, conn) => {
                let e = result.err().unwrap_or(RelayError::Unexpected { got: "no", when: "holding the dump" });
                if let Some(conn) = conn {
                    close(&conn, CLOSE_ABORT, &e.to_string());
                }
                let _ = stream.shutdown(Shutdown::Both);
                Err(e)
            }
        }
    }

    fn run(
        &self,
        sock: &TcpStream,
        conn_out: &mut Option<Connection>,
        hold: bool,
    ) -> Result<(RelaySummary, Option<FrameStream>), RelayError> {
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        sock.set_read_timeout(self.cfg.idle_timeout).map_err(|source| RelayError::Io { op: "setsockopt", source })?;
        let mut decoder = CommandDecoder::new(self.cfg.layout, self.cfg.page_size)?;
        let (conn, mut relay) = self.connect()?;
        *conn_out = Some(conn);
        let mut s = Relayed { summary: RelaySummary::default(), chunk: BytesMut::new(), force_close: false, hold };
        let result = self.relay(sock, &mut decoder, &mut relay, &mut s);
        s.summary.wire_bytes = relay.bytes_out;
        s.summary.layout = decoder.layout();
        if let Err(e) = &result {
            self.send_abort(&mut relay, &e.to_string());
        }
        s.summary.session = result?.unwrap_or_default();
        if !hold {
            relay.finish();
        }
        if !s.force_close && s.summary.warning.is_none() {
            s.summary.warning = wait_for_eof(sock, &mut decoder, self.cfg.close_wait);
        }
        Ok((s.summary, hold.then_some(relay)))
    }

    /// Tells the destination the session is given up (best effort, at most [`ABORT_WAIT`]) and
    /// waits for its last word.
    fn send_abort(&self, relay: &mut FrameStream, reason: &str) {
        let abort = RelayFrame::Abort { reason: bounded_reason(reason) };
        self.rt.block_on(async {
            let _ = tokio::time::timeout(ABORT_WAIT, async {
                if relay.send(&abort).await.is_ok() {
                    relay.finish();
                    // The destination answers Failed (or closes); either way it has let go.
                    let _ = relay.recv().await;
                }
            })
            .await;
        });
    }

    /// The relay loop; returns the destination's session number once it committed (`None`: the
    /// session is held for its files).
    fn relay(
        &self,
        sock: &TcpStream,
        decoder: &mut CommandDecoder,
        relay: &mut FrameStream,
        s: &mut Relayed,
    ) -> Result<Option<u64>, RelayError> {
        let flags = if s.hold { BEGIN_WITH_FILES } else { 0 };
        relay.queue(&RelayFrame::Begin { version: RELAY_VERSION, page_size: self.cfg.page_size, flags })?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut bytes = vec![0u8; READ_CHUNK];
        loop {
            let n = read_some(sock, &mut bytes, self.cfg.idle_timeout)?;
            if n == 0 {
                decoder.finish()?;
                return Err(RelayError::EofBeforeClose { commands: s.summary.commands });
            }
            buf.extend_from_slice(&bytes[..n]);
            while let Some(input) = decoder.decode(&mut buf)? {
                match input {
                    ServerInput::PageData(data) => {
                        s.summary.data_bytes += data.len() as u64;
                        s.chunk.extend_from_slice(&data);
                        let entry_done = decoder.payload_remaining() == 0;
                        while s.chunk.len() >= CHUNK_BYTES || (entry_done && !s.chunk.is_empty()) {
                            let piece = s.chunk.split_to(s.chunk.len().min(CHUNK_BYTES));
                            let (encoder, out) = relay.encoder_and_pending();
                            match encoder.encode_data(&piece, out)? {
                                ChunkEncoding::Zero => s.summary.zero_chunks += 1,
                                ChunkEncoding::Lz4 => s.summary.lz4_chunks += 1,
                                ChunkEncoding::Raw => s.summary.raw_chunks += 1,
                            }
                        }
                    }
                    ServerInput::Command(command) => {
                        s.summary.commands += 1;
                        s.force_close |= command == PsCommand::ForceClose;
                        relay.queue(&RelayFrame::Command(command))?;
                        if command.expected_reply().is_some() {
                            let closed = self.answer(sock, relay, command, s.hold, &mut s.summary.warning)?;
                            if closed.is_some() {
                                return Ok(closed.flatten());
                            }
                        }
                    }
                }
                if relay.pending() >= FLUSH_BYTES {
                    self.rt.block_on(relay.flush())?;
                }
            }
            self.rt.block_on(relay.flush())?;
        }
    }

    /// Flushes, waits for the destination's answer to `command` and writes it to CRIU. Once CLOSE
    /// is answered returns `Some`: the session number when it was answered with Committed (the
    /// session stays committed if CRIU cannot be told: that goes to `warning`), `Some(None)` when
    /// it was held (`hold`: answered with Reply).
    fn answer(
        &self,
        mut sock: &TcpStream,
        relay: &mut FrameStream,
        command: PsCommand,
        hold: bool,
        warning: &mut Option<String>,
    ) -> Result<Option<Option<u64>>, RelayError> {
        let frame = self.rt.block_on(async {
            relay.flush().await?;
            relay.recv().await
        })?;
        let closing = matches!(command, PsCommand::Close | PsCommand::ForceClose);
        let (reply, session) = match frame {
            Some(RelayFrame::Reply(reply)) if !closing => (reply, None),
            Some(RelayFrame::Reply(reply)) if hold => {
                sock.write_all(&reply).map_err(|source| RelayError::Io { op: "write", source })?;
                return Ok(Some(None));
            }
            Some(RelayFrame::Committed { session, reply }) if closing && !hold => (reply, Some(session)),
            Some(RelayFrame::Failed { reason }) => return Err(RelayError::Destination(reason)),
            Some(other) => return Err(RelayError::Unexpected { got: other.name(), when: "awaiting a reply" }),
            None => return Err(RelayError::Destination("it ended the stream without an answer".into())),
        };
        match (sock.write_all(&reply), session) {
            (Ok(()), _) => {}
            (Err(e), Some(number)) => {
                *warning = Some(format!("session {number} is committed but its CLOSE reply could not be sent: {e}"));
            }
            (Err(source), None) => return Err(RelayError::Io { op: "write", source }),
        }
        Ok(session.map(Some))
    }
}

/// A dump whose pages the destination holds, staged until its files arrive; see
/// [`RelaySource::relay_dump`]. Dropped without [`commit`](Self::commit), it is aborted.
pub struct HeldDump<'a> {
    source: &'a RelaySource,
    conn: Connection,
    relay: FrameStream,
    /// What was relayed so far (`session` is set by the commit).
    pub summary: RelaySummary,
    started: Instant,
    done: bool,
}

impl HeldDump<'_> {
    /// Sends `files` and asks for the commit; returns once the destination committed the whole
    /// dump durably. On error the destination keeps nothing.
    pub fn commit(mut self, files: &[DumpFile]) -> Result<(RelaySummary, FileStats, Duration), RelayError> {
        let rt = &self.source.rt;
        let result = rt.block_on(async {
            let stats = send_files(&mut self.relay, files).await?;
            match self.relay.recv().await? {
                Some(RelayFrame::Committed { session, .. }) => Ok((session, stats)),
                Some(RelayFrame::Failed { reason }) => Err(RelayError::Destination(reason)),
                Some(other) => Err(RelayError::Unexpected { got: other.name(), when: "awaiting the commit" }),
                None => Err(RelayError::Destination("it ended the stream without committing".into())),
            }
        });
        match result {
            Ok((session, stats)) => {
                self.done = true;
                self.relay.finish();
                close(&self.conn, CLOSE_DONE, "dump committed");
                let mut summary = std::mem::take(&mut self.summary);
                summary.session = session;
                summary.wire_bytes = self.relay.bytes_out;
                Ok((summary, stats, self.started.elapsed()))
            }
            Err(e) => {
                self.abort_with(&e.to_string());
                Err(e)
            }
        }
    }

    /// Gives the dump up: the destination drops it.
    pub fn abort(mut self, reason: &str) {
        self.abort_with(reason);
    }

    fn abort_with(&mut self, reason: &str) {
        self.done = true;
        self.source.send_abort(&mut self.relay, reason);
        close(&self.conn, CLOSE_ABORT, reason);
    }
}

impl Drop for HeldDump<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.abort_with("the dump was given up");
        }
    }
}

/// What one session accumulates.
struct Relayed {
    summary: RelaySummary,
    /// Page data not yet cut into a chunk.
    chunk: BytesMut,
    force_close: bool,
    /// Hold the session for its files after CLOSE (see [`RelaySource::relay_dump`]).
    hold: bool,
}

fn read_some(mut sock: &TcpStream, chunk: &mut [u8], idle: Option<Duration>) -> Result<usize, RelayError> {
    loop {
        match sock.read(chunk) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(RelayError::IdleTimeout(idle.unwrap_or_default()))
            }
            Err(source) => return Err(RelayError::Io { op: "read", source }),
        }
    }
}

/// After the CLOSE reply: reads until CRIU's EOF; a warning if it sent more or did not close.
fn wait_for_eof(sock: &TcpStream, decoder: &mut CommandDecoder, wait: Duration) -> Option<String> {
    if let Err(e) = sock.set_read_timeout(Some(wait.max(Duration::from_millis(1)))) {
        return Some(format!("cannot wait for CRIU's EOF: {e}"));
    }
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Only the 8-byte tail of a detected 32-byte CLOSE may follow.
        if let Err(e) = decoder.decode(&mut buf) {
            return Some(format!("after CLOSE: {e}"));
        }
        match read_some(sock, &mut chunk, Some(wait)) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Some(format!("waiting for CRIU to close after CLOSE: {e}")),
        }
    }
}

impl Drop for RelaySource {
    fn drop(&mut self) {
        self.endpoint.close(VarInt::from_u32(CLOSE_DONE), b"page server stopped");
        // Let the last FIN / CONNECTION_CLOSE leave, so the destination need not time out.
        self.rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        });
    }
}
