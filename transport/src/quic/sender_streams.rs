//! The async side of [`QuicSink`](super::QuicSink): the connection handshake, and
//! [`DataLanes`] — the data-stream writer tasks fed round robin through a window counted in
//! bytes. A frame takes room in the window (a semaphore with one permit per byte) before it is
//! queued and gives it back when its writer has handed it to quinn, so the frames waiting in
//! memory never exceed the window; a full window blocks the producer (backpressure).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, SendStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::endpoint::client_transport;
use super::error::TransportError;
use super::sender_config::SenderConfig;
use super::session::{close, connection_error, write_error, ControlStream, Fault, CLOSE_ABORT};
use super::tls::quic_client_config;
use crate::wire::{check_answer, Agreement, ControlFrame, Hello};

/// A random session id (from the TLS provider's secure random source).
pub fn session_id() -> Result<[u8; 16], TransportError> {
    let mut id = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut id)
        .map_err(|_| TransportError::Config("no system randomness for the session id".into()))?;
    Ok(id)
}

/// What a successful handshake yields.
pub struct Connected {
    /// The connection.
    pub conn: Connection,
    /// Its control stream, after the Hello exchange.
    pub control: ControlStream,
    /// What the receiver agreed to.
    pub agreement: Agreement,
    /// The opened data streams.
    pub streams: Vec<SendStream>,
}

/// Connects, opens the control stream, exchanges Hellos and opens the data streams. Errors of
/// the connection itself (TLS included) come back as [`TransportError::Connect`].
pub async fn handshake(
    endpoint: &Endpoint,
    addr: SocketAddr,
    cfg: &SenderConfig,
    hello: &Hello,
) -> Result<Connected, TransportError> {
    let connect_err = |reason: String| TransportError::Connect { addr, reason };
    let mut client = quinn::ClientConfig::new(Arc::new(quic_client_config(&cfg.security)?));
    client.transport_config(client_transport(addr, cfg.idle_timeout)?);
    let connecting = endpoint.connect_with(client, addr, &cfg.server_name).map_err(|e| connect_err(e.to_string()))?;
    let conn = match tokio::time::timeout(cfg.idle_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(connect_err(e.to_string())),
        Err(_) => return Err(connect_err(format!("no answer within {:?}", cfg.idle_timeout))),
    };
    let setup = async {
        let (send, recv) = conn.open_bi().await.map_err(|e| connection_error(&e))?;
        let mut control = ControlStream::new(send, recv);
        control.send(&ControlFrame::Hello(*hello)).await?;
        let agreement = match control.recv().await? {
            Some(ControlFrame::Hello(answer)) => check_answer(hello, &answer)?,
            Some(ControlFrame::Reject { reason }) => return Err(TransportError::Rejected(reason)),
            Some(ControlFrame::Abort { reason }) => return Err(TransportError::Aborted(reason)),
            Some(other) => {
                return Err(TransportError::Violation(format!(
                    "expected Hello from the receiver, got {}",
                    other.name()
                )))
            }
            None => return Err(TransportError::ConnectionLost("the receiver closed the control stream".into())),
        };
        let mut streams = Vec::with_capacity(cfg.data_streams);
        for _ in 0..cfg.data_streams {
            streams.push(conn.open_uni().await.map_err(|e| connection_error(&e))?);
        }
        Ok((control, agreement, streams))
    };
    let result = match tokio::time::timeout(cfg.idle_timeout, setup).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Timeout(format!("no handshake answer within {:?}", cfg.idle_timeout))),
    };
    match result {
        Ok((control, agreement, streams)) => Ok(Connected { conn, control, agreement, streams }),
        Err(TransportError::ConnectionLost(reason)) => Err(connect_err(reason)),
        Err(e) => {
            close(&conn, CLOSE_ABORT, &e.to_string());
            Err(e)
        }
    }
}

/// Bytes of frames queued between the caller and the data streams.
#[derive(Debug, Default)]
struct QueueGauge {
    queued: AtomicUsize,
    high_water: AtomicUsize,
}

/// A frame's room in the window, given back (and un-counted) when the frame leaves the queue.
struct WindowLease {
    bytes: usize,
    gauge: Arc<QueueGauge>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for WindowLease {
    fn drop(&mut self) {
        self.gauge.queued.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

struct QueuedFrame {
    frame: Bytes,
    _lease: WindowLease,
}

/// Why [`DataLanes::push`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The window was closed (a fault was raised) or a writer is gone.
    Stopped,
    /// No room came free within the time limit.
    TimedOut,
}

/// The data-stream writers and the byte window in front of them.
pub struct DataLanes {
    lanes: Vec<mpsc::UnboundedSender<QueuedFrame>>,
    next: usize,
    window: Arc<Semaphore>,
    window_bytes: usize,
    gauge: Arc<QueueGauge>,
    waits: u64,
}

impl DataLanes {
    /// Starts one writer task per stream on `rt`. `window` must hold `window_bytes` permits; the
    /// first write error is raised on `fault` (which closes the window).
    pub fn start(
        rt: &Runtime,
        streams: Vec<SendStream>,
        window: Arc<Semaphore>,
        window_bytes: usize,
        fault: &Arc<Fault>,
    ) -> DataLanes {
        let lanes = streams
            .into_iter()
            .map(|stream| {
                let (tx, rx) = mpsc::unbounded_channel();
                rt.spawn(write_lane(stream, rx, fault.clone()));
                tx
            })
            .collect();
        DataLanes { lanes, next: 0, window, window_bytes, gauge: Arc::default(), waits: 0 }
    }

    /// Queues `frame` (at most the window's size) on the next lane, waiting up to `limit` for room.
    pub fn push(&mut self, rt: &Runtime, frame: Bytes, limit: Duration) -> Result<(), PushError> {
        let bytes = frame.len();
        let permits = u32::try_from(bytes).map_err(|_| PushError::Stopped)?;
        let permit = match self.window.clone().try_acquire_many_owned(permits) {
            Ok(permit) => permit,
            Err(_) => {
                self.waits += 1;
                let window = self.window.clone();
                let waited =
                    rt.block_on(async move { tokio::time::timeout(limit, window.acquire_many_owned(permits)).await });
                match waited {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => return Err(PushError::Stopped),
                    Err(_elapsed) => return Err(PushError::TimedOut),
                }
            }
        };
        let queued = self.gauge.queued.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.gauge.high_water.fetch_max(queued, Ordering::SeqCst);
        let lease = WindowLease { bytes, gauge: self.gauge.clone(), _permit: permit };
        let lane = self.next % self.lanes.len().max(1);
        self.next = self.next.wrapping_add(1);
        let sender = self.lanes.get(lane).ok_or(PushError::Stopped)?;
        sender.send(QueuedFrame { frame, _lease: lease }).map_err(|_| PushError::Stopped)
    }

    /// The window's size.
    pub fn window_bytes(&self) -> usize {
        self.window_bytes
    }

    /// The most bytes ever queued at once.
    pub fn high_water(&self) -> usize {
        self.gauge.high_water.load(Ordering::SeqCst)
    }

    /// How many pushes had to wait for room.
    pub fn waits(&self) -> u64 {
        self.waits
    }
}

/// One data stream: writes queued frames in order; the first error is the session's fault.
async fn write_lane(mut stream: SendStream, mut rx: mpsc::UnboundedReceiver<QueuedFrame>, fault: Arc<Fault>) {
    while let Some(queued) = rx.recv().await {
        if let Err(e) = stream.write_chunk(queued.frame.clone()).await {
            fault.raise(write_error("data stream", e));
            return;
        }
    }
    let _ = stream.finish();
}
