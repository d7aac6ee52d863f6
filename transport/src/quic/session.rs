//! Plumbing both ends of a session share: the application close codes, the mapping of quinn's
//! errors onto [`TransportError`], [`ControlStream`] (frames over the control stream) and
//! [`Fault`] (the first failure of any background task, waking whoever waits on the session).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::sync::{watch, Semaphore};

use super::error::TransportError;
use crate::wire::{bounded_reason, encode_control, ControlDecoder, ControlFrame};

/// Application close code: the session completed.
pub const CLOSE_DONE: u32 = 0;
/// Application close code: the session was aborted; the reason says why.
pub const CLOSE_ABORT: u32 = 1;
/// Application close code: the peer broke the protocol.
pub const CLOSE_PROTOCOL: u32 = 2;
/// Application close code: the handshake was refused.
pub const CLOSE_REJECT: u32 = 3;
/// Application close code: the receiver is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 4;

/// Stream stop / reset code for a data stream that failed to decode.
pub const STREAM_BAD_DATA: u32 = 1;

/// Longest reason put in a CONNECTION_CLOSE frame (it must fit in one packet).
const MAX_CLOSE_REASON: usize = 512;

/// Closes `conn` with `code` and `reason` (cut to fit a packet).
pub fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    conn.close(VarInt::from_u32(code), &reason.as_bytes()[..end]);
}

/// What a lost connection means for the session.
pub fn connection_error(err: &ConnectionError) -> TransportError {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            match close.error_code.into_inner() {
                c if c == u64::from(CLOSE_ABORT) => TransportError::Aborted(reason),
                c if c == u64::from(CLOSE_REJECT) => TransportError::Rejected(reason),
                c if c == u64::from(CLOSE_PROTOCOL) => TransportError::ConnectionLost(format!(
                    "the peer closed the connection for a protocol error: {reason}"
                )),
                c if c == u64::from(CLOSE_SHUTDOWN) => {
                    TransportError::ConnectionLost(format!("the peer shut down: {reason}"))
                }
                c => TransportError::ConnectionLost(format!("the peer closed the connection (code {c}): {reason}")),
            }
        }
        ConnectionError::TimedOut => {
            TransportError::ConnectionLost("the peer stopped answering (QUIC idle timeout)".into())
        }
        ConnectionError::LocallyClosed => TransportError::Closed("the connection was closed on this side".into()),
        other => TransportError::ConnectionLost(other.to_string()),
    }
}

/// What a failed stream read means.
pub fn read_error(what: &str, err: ReadError) -> TransportError {
    match err {
        ReadError::ConnectionLost(e) => connection_error(&e),
        ReadError::Reset(code) => TransportError::ConnectionLost(format!("the peer reset the {what} (code {code})")),
        other => TransportError::ConnectionLost(format!("{what}: {other}")),
    }
}

/// What a failed stream write means.
pub fn write_error(what: &str, err: WriteError) -> TransportError {
    match err {
        WriteError::ConnectionLost(e) => connection_error(&e),
        WriteError::Stopped(code) => {
            TransportError::ConnectionLost(format!("the peer stopped the {what} (code {code})"))
        }
        other => TransportError::ConnectionLost(format!("{what}: {other}")),
    }
}

/// The control stream of a session: whole frames in and out.
pub struct ControlStream {
    send: SendStream,
    recv: RecvStream,
    decoder: ControlDecoder,
    buf: BytesMut,
    out: BytesMut,
    bytes_in: u64,
    bytes_out: u64,
}

impl ControlStream {
    /// Wraps the two halves of the control stream.
    pub fn new(send: SendStream, recv: RecvStream) -> ControlStream {
        ControlStream {
            send,
            recv,
            decoder: ControlDecoder::new(),
            buf: BytesMut::new(),
            out: BytesMut::new(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Writes one frame; returns its size on the wire.
    pub async fn send(&mut self, frame: &ControlFrame) -> Result<usize, TransportError> {
        self.out.clear();
        encode_control(frame, &mut self.out)?;
        self.send.write_all(&self.out).await.map_err(|e| write_error("control stream", e))?;
        self.bytes_out += self.out.len() as u64;
        Ok(self.out.len())
    }

    /// Writes an Abort with `reason` (cut to fit), giving up after `limit`.
    pub async fn send_abort(&mut self, reason: &str, limit: Duration) {
        let frame = ControlFrame::Abort { reason: bounded_reason(reason) };
        let _ = tokio::time::timeout(limit, self.send(&frame)).await;
    }

    /// Reads the next frame; `Ok(None)` when the peer finished the stream between frames.
    /// Cancel safe: a cancelled call loses no bytes.
    pub async fn recv(&mut self) -> Result<Option<ControlFrame>, TransportError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => {
                    self.bytes_in += chunk.bytes.len() as u64;
                    self.buf.extend_from_slice(&chunk.bytes);
                }
                Ok(None) => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
                Err(e) => return Err(read_error("control stream", e)),
            }
        }
    }

    /// Sends `frame` and reads until the answer `want` accepts (Stats are skipped; an Abort, any
    /// other frame, the end of the stream or `limit` elapsing is an error naming `what`).
    pub async fn request(
        &mut self,
        frame: &ControlFrame,
        what: &str,
        want: impl Fn(&ControlFrame) -> bool,
        limit: Duration,
    ) -> Result<ControlFrame, TransportError> {
        let exchange = async {
            self.send(frame).await?;
            loop {
                match self.recv().await? {
                    Some(answer) if want(&answer) => return Ok(answer),
                    Some(ControlFrame::Abort { reason }) => return Err(TransportError::Aborted(reason)),
                    Some(ControlFrame::Stats(s)) => tracing::debug!(?s, "peer stats"),
                    Some(other) => {
                        return Err(TransportError::Violation(format!("expected {what}, got {}", other.name())))
                    }
                    None => {
                        return Err(TransportError::ConnectionLost(format!(
                            "the peer closed the control stream before {what}"
                        )))
                    }
                }
            }
        };
        tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| Err(TransportError::Timeout(format!("no {what} from the peer within {limit:?}"))))
    }

    /// Finishes our half (no more frames), so the peer sees the end of the stream.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Waits until the peer acknowledged everything we wrote (or gives up after `limit`).
    /// `true` when it did.
    pub async fn delivered(&mut self, limit: Duration) -> bool {
        matches!(tokio::time::timeout(limit, self.send.stopped()).await, Ok(Ok(None)))
    }

    /// Bytes read and written.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_in, self.bytes_out)
    }
}

/// The first failure of a session's background tasks. Raising it wakes [`Fault::wait`] and
/// closes the sender's window semaphore (so a producer blocked on backpressure wakes up too).
pub struct Fault {
    slot: Mutex<Option<TransportError>>,
    raised: watch::Sender<bool>,
    window: Option<Arc<Semaphore>>,
}

impl Fault {
    /// A fault slot; `window` is closed when the fault is raised.
    pub fn new(window: Option<Arc<Semaphore>>) -> Arc<Fault> {
        Arc::new(Fault { slot: Mutex::new(None), raised: watch::Sender::new(false), window })
    }

    /// Records `err` unless a fault was already recorded, and wakes the waiters.
    pub fn raise(&self, err: TransportError) {
        {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(err);
            }
        }
        self.raised.send_replace(true);
        if let Some(window) = &self.window {
            window.close();
        }
    }

    /// Whether a fault was raised.
    pub fn is_raised(&self) -> bool {
        *self.raised.borrow()
    }

    /// Completes once a fault is raised.
    pub async fn wait(&self) {
        let mut rx = self.raised.subscribe();
        let _ = rx.wait_for(|raised| *raised).await;
    }

    /// Takes the recorded fault (a generic one if it was taken already).
    pub fn take(&self) -> TransportError {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.take().unwrap_or_else(|| TransportError::ConnectionLost("the session failed".into()))
    }
}
