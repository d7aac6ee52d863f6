//! A blocking TCP page server: CRIU's `criu dump/pre-dump --page-server` connects, each connection
//! is one [`PageServerSession`] written to the next numbered directory of a [`SessionDirs`] root.
//!
//! [`serve`] accepts sessions one after another (CRIU opens one per invocation), forever or up to
//! [`ServerConfig::sessions`]; [`serve_connection`] serves one already-connected socket (also an
//! inherited one, as with CRIU's `--ps-socket`). Bytes are decoded by a [`CommandDecoder`] with the
//! configured header layout (or detected from the first command). TCP_NODELAY is set, so the small
//! replies leave at once.
//!
//! A connection whose first command is GET is a lazy-pages client (`criu lazy-pages
//! --page-server`): it is served from `DIR/last` without writing anything ([`super::lazy_server`]).
//!
//! A session ends in one of two ways:
//! * **committed**: CLOSE (or FORCE_CLOSE) arrived, the directory was committed durably and
//!   `last` moved, and only then the `int32` 0 reply was sent. After CLOSE the server waits (up to
//!   [`ServerConfig::close_wait`]) for the client's EOF, as CRIU's server does, then closes.
//!   FORCE_CLOSE (inherited sockets) is not followed by a wait.
//! * **failed**: garbage, an unknown command, a bad entry, a socket error, an idle timeout or an
//!   EOF before CLOSE. Nothing of the session is kept (no `DIR/k`, `last` unchanged), no reply is
//!   sent and the connection is closed, which makes the CRIU client fail: its CLOSE status is never
//!   checked, so withholding the reply is the only way to report a failure to it. The server goes
//!   on with the next connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pagestream_engine::criu::session_dirs::{CommittedSession, SessionDirs};
use pagestream_engine::criu::ImageError;

use super::command::PsCommand;
use super::header::HeaderLayout;
use super::lazy_server::{serve_gets, LazyServed};
use super::server_decoder::{CommandDecoder, LayoutChoice, ServerInput};
use super::session::{PageServerSession, SessionError, SessionStats};

/// Bytes read from the socket per `read` call.
const READ_CHUNK: usize = 256 << 10;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Header layout: fixed, or detected from each session's first command.
    pub layout: LayoutChoice,
    /// The page size of the dumping machine (this machine's, as CRIU sends its own).
    pub page_size: u64,
    /// Stop after this many sessions (committed or failed); `None`: serve forever.
    pub sessions: Option<u64>,
    /// Fail a session when the client sends nothing for this long; `None`: wait forever.
    pub idle_timeout: Option<Duration>,
    /// After the CLOSE reply, how long to wait for the client's EOF before closing anyway.
    pub close_wait: Duration,
}

impl ServerConfig {
    /// Detect the layout, serve forever, 5 minutes idle timeout, 30 s close wait.
    pub fn new(page_size: u64) -> ServerConfig {
        ServerConfig {
            layout: LayoutChoice::Detect,
            page_size,
            sessions: None,
            idle_timeout: Some(Duration::from_secs(300)),
            close_wait: Duration::from_secs(30),
        }
    }
}

/// A committed session.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    /// Its number and directory.
    pub committed: CommittedSession,
    /// What it received.
    pub stats: SessionStats,
    /// The header layout it used.
    pub layout: Option<HeaderLayout>,
    /// A problem after the commit (e.g. bytes after CLOSE); the session stays committed.
    pub warning: Option<String>,
    /// A lazy-pages client's GET session: `committed` is the session its pages came from and
    /// nothing new was written.
    pub lazy: Option<LazyServed>,
}

/// Why a connection did not produce a committed session.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The protocol, a refused entry, storage, or an EOF before CLOSE.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A socket operation failed.
    #[error("socket {op} failed: {source}")]
    Io { op: &'static str, source: io::Error },
    /// The client sent nothing for too long.
    #[error("no data from the client for {0:?}")]
    IdleTimeout(Duration),
    /// A GET session failed (no images to serve, a page that is not there, a bad request).
    #[error("lazy-pages GET session: {0}")]
    Lazy(String),
    /// The directory is committed but the CLOSE reply could not be sent (the client will report
    /// a failure although the images are complete).
    #[error("session {number} was committed but its CLOSE reply could not be sent: {source}")]
    ReplyAfterCommit { number: u64, source: io::Error },
}

/// The outcome of one connection.
#[derive(Debug)]
pub struct SessionReport {
    /// The client, when known.
    pub peer: Option<SocketAddr>,
    /// The session number it was given (the failed ones reuse theirs for the next session).
    pub number: Option<u64>,
    /// How long it took, from accept to close.
    pub elapsed: Duration,
    /// The committed session or why there is none.
    pub result: Result<SessionSummary, ConnectionError>,
}

/// Sessions served by [`serve`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeTotals {
    /// Sessions committed.
    pub committed: u64,
    /// Sessions failed.
    pub failed: u64,
}

/// Why [`serve`] stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The images root cannot be used.
    #[error("images directory: {0}")]
    Images(#[from] ImageError),
    /// `accept` failed with a non-transient error.
    #[error("accept failed: {0}")]
    Accept(#[source] io::Error),
}

/// Accepts and serves sessions one after another, writing them under `images_root`; calls
/// `on_session` after each. Returns after [`ServerConfig::sessions`] sessions (or never).
pub fn serve(
    listener: &TcpListener,
    images_root: &Path,
    cfg: &ServerConfig,
    mut on_session: impl FnMut(&SessionReport),
) -> Result<ServeTotals, ServeError> {
    let dirs = SessionDirs::open(images_root, cfg.page_size)?;
    let mut totals = ServeTotals::default();
    while cfg.sessions.is_none_or(|max| totals.committed + totals.failed < max) {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
                ) =>
            {
                tracing::warn!(error = %e, "accept failed; waiting for the next connection");
                continue;
            }
            Err(e) => return Err(ServeError::Accept(e)),
        };
        let report = serve_connection(stream, Some(peer), &dirs, cfg);
        if report.result.is_ok() {
            totals.committed += 1;
        } else {
            totals.failed += 1;
        }
        on_session(&report);
    }
    Ok(totals)
}

/// Serves the one session on `stream` (accepted or inherited) into the next directory of `dirs`.
pub fn serve_connection(
    stream: TcpStream,
    peer: Option<SocketAddr>,
    dirs: &SessionDirs,
    cfg: &ServerConfig,
) -> SessionReport {
    let started = Instant::now();
    let mut number = None;
    let result = run_session(&stream, dirs, cfg, &mut number);
    if result.is_err() {
        // Unread bytes make the kernel reset the connection, so the client notices at once.
        let _ = stream.shutdown(Shutdown::Both);
    }
    SessionReport { peer, number, elapsed: started.elapsed(), result }
}

fn run_session(
    mut stream: &TcpStream,
    dirs: &SessionDirs,
    cfg: &ServerConfig,
    number: &mut Option<u64>,
) -> Result<SessionSummary, ConnectionError> {
    if let Err(e) = stream.set_nodelay(true) {
        // An inherited socket may be a UNIX socket, which has no Nagle to turn off.
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    stream.set_read_timeout(cfg.idle_timeout).map_err(|source| ConnectionError::Io { op: "setsockopt", source })?;
    let mut decoder = CommandDecoder::new(cfg.layout, cfg.page_size).map_err(SessionError::from)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    // The first command says what the session is: a dump, or a lazy-pages client's GETs.
    let first = loop {
        if let Some(input) = decoder.decode(&mut buf).map_err(SessionError::from)? {
            break input;
        }
        let n = read_some(stream, &mut chunk, cfg.idle_timeout)?;
        if n == 0 {
            decoder.finish().map_err(SessionError::from)?;
            return Err(SessionError::EofBeforeClose { commands: 0, data_bytes: 0 }.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if let ServerInput::Command(get @ PsCommand::Get { .. }) = first {
        let (served_from, lazy) = serve_gets(stream, &mut decoder, &mut buf, get, dirs, cfg)?;
        *number = Some(served_from.number);
        let warning = wait_for_eof(stream, &mut decoder, &mut buf, cfg.close_wait);
        let stats = SessionStats { commands: lazy.gets + 1, ..Default::default() };
        return Ok(SessionSummary {
            committed: served_from,
            stats,
            layout: decoder.layout(),
            warning,
            lazy: Some(lazy),
        });
    }
    let mut session = PageServerSession::begin(dirs)?;
    *number = session.target().map(|t| t.number());
    let mut reply = Vec::new();
    let mut force_close = first == ServerInput::Command(PsCommand::ForceClose);
    session.handle(first, &mut reply)?;
    let result = loop {
        // Answer what the last input asked for (OPEN2 / PARENT) before reading more.
        if !reply.is_empty() {
            if let Err(source) = stream.write_all(&reply) {
                break Err(ConnectionError::Io { op: "write", source });
            }
            reply.clear();
        }
        if session.committed().is_some() {
            break Ok(()); // an empty session: CLOSE came first
        }
        let n = match read_some(stream, &mut chunk, cfg.idle_timeout) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if n == 0 {
            break decoder
                .finish()
                .map_err(SessionError::from)
                .and_then(|()| session.end_of_stream())
                .map_err(Into::into);
        }
        buf.extend_from_slice(&chunk[..n]);
        match decode_and_handle(&mut decoder, &mut buf, &mut session, &mut reply, &mut force_close) {
            Ok(()) if reply.is_empty() => {}
            Ok(()) => {
                if let Err(source) = stream.write_all(&reply) {
                    break Err(match session.committed() {
                        Some(c) => ConnectionError::ReplyAfterCommit { number: c.number, source },
                        None => ConnectionError::Io { op: "write", source },
                    });
                }
                reply.clear();
            }
            Err(e) => break Err(e.into()),
        }
        if session.committed().is_some() {
            break Ok(());
        }
    };
    if let Err(e) = result {
        session.fail();
        return Err(e);
    }
    let committed = session.committed().cloned().ok_or(SessionError::Finished("failed"))?;
    let warning = if force_close { None } else { wait_for_eof(stream, &mut decoder, &mut buf, cfg.close_wait) };
    Ok(SessionSummary { committed, stats: *session.stats(), layout: decoder.layout(), warning, lazy: None })
}

/// Decodes everything buffered and hands it to the session; replies accumulate in `reply`.
fn decode_and_handle(
    decoder: &mut CommandDecoder,
    buf: &mut BytesMut,
    session: &mut PageServerSession<pagestream_engine::criu::session_dirs::SessionDirWriter>,
    reply: &mut Vec<u8>,
    force_close: &mut bool,
) -> Result<(), SessionError> {
    while session.committed().is_none() {
        let Some(input) = decoder.decode(buf)? else { break };
        *force_close |= input == ServerInput::Command(PsCommand::ForceClose);
        session.handle(input, reply)?;
    }
    Ok(())
}

pub(crate) fn read_some(
    mut stream: &TcpStream,
    chunk: &mut [u8],
    idle: Option<Duration>,
) -> Result<usize, ConnectionError> {
    loop {
        match stream.read(chunk) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ConnectionError::IdleTimeout(idle.unwrap_or_default()))
            }
            Err(source) => return Err(ConnectionError::Io { op: "read", source }),
        }
    }
}

/// After the CLOSE reply: reads until the client's EOF (CRIU closes first, avoiding TIME_WAIT on
/// the server). Returns a warning if the client sent more or did not close in time.
fn wait_for_eof(
    stream: &TcpStream,
    decoder: &mut CommandDecoder,
    buf: &mut BytesMut,
    wait: Duration,
) -> Option<String> {
    if let Err(e) = stream.set_read_timeout(Some(wait.max(Duration::from_millis(1)))) {
        return Some(format!("cannot wait for the client's EOF: {e}"));
    }
    let mut chunk = [0u8; 4096];
    loop {
        // Only the 8-byte tail of a detected 32-byte CLOSE may follow; anything else is an error.
        if let Err(e) = decoder.decode(buf) {
            return Some(format!("after CLOSE: {e}"));
        }
        match read_some(stream, &mut chunk, Some(wait)) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Some(format!("waiting for the client to close after CLOSE: {e}")),
        }
    }
}
