//! One receiving session (the inside of [`Receiver::serve_one`](super::Receiver::serve_one)):
//! the handshake on the control stream, the control loop (rounds acknowledged once the store
//! holds all their pages, commit acknowledged once the image directory is durable), the tasks
//! that decode the data streams into the store worker's queue, and the failure report to the
//! sender.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pagestream_engine::store::{CommittedImage, PageStore};
use quinn::{Connection, RecvStream, VarInt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::error::TransportError;
use super::receiver::{ReceiverConfig, ReceiverEvent, SessionReport};
use super::session::{
    close, connection_error, read_error, ControlStream, Fault, CLOSE_ABORT, CLOSE_DONE, CLOSE_PROTOCOL, CLOSE_REJECT,
    STREAM_BAD_DATA,
};
use super::store_worker::{self, Committed, StoreOp};
use crate::wire::{
    answer_hello, bounded_reason, Codecs, ControlFrame, DataDecoder, DataLimits, DataRun, Hello, WireError,
    NO_COMMIT_ESTIMATE,
};

/// Batches of decoded runs waiting for the store worker (each at most 4 MiB, or one longer run),
/// so at most ~32 MiB of decoded pages wait in memory besides QUIC's own receive window.
const STORE_QUEUE: usize = 8;

/// A failed incoming connection, in words.
pub fn describe(err: &quinn::ConnectionError) -> String {
    match connection_error(err) {
        TransportError::ConnectionLost(m) | TransportError::Closed(m) => m,
        other => other.to_string(),
    }
}

/// One accepted connection.
pub struct Session<'a> {
    cfg: &'a ReceiverConfig,
    conn: Connection,
    images_dir: &'a Path,
    staging_dir: &'a Path,
    fault: Arc<Fault>,
    wire_bytes: Arc<AtomicU64>,
    control: Option<ControlStream>,
    streams: Option<tokio::task::JoinHandle<()>>,
    committed: bool,
}

impl<'a> Session<'a> {
    /// A session on the accepted `conn`, to land in `images_dir` with staging in `staging_dir`.
    pub fn new(cfg: &'a ReceiverConfig, conn: Connection, images_dir: &'a Path, staging_dir: &'a Path) -> Self {
        Session {
            cfg,
            conn,
            images_dir,
            staging_dir,
            fault: Fault::new(None),
            wire_bytes: Arc::new(AtomicU64::new(0)),
            control: None,
            streams: None,
            committed: false,
        }
    }

    fn wire_bytes(&self) -> u64 {
        let control = self.control.as_ref().map_or(0, |c| c.bytes().0);
        self.wire_bytes.load(Ordering::Relaxed) + control
    }

    /// Stops reading data streams (their tasks drop their store senders).
    pub fn stop(&mut self) {
        if let Some(streams) = self.streams.take() {
            streams.abort();
        }
    }

    /// Tells the sender why the session failed (unless it is the one that ended it) and closes.
    pub async fn report_failure(&mut self, err: &TransportError) {
        tracing::warn!("session failed: {err}");
        let reason = bounded_reason(&err.to_string());
        let code = match err {
            TransportError::Aborted(_) | TransportError::ConnectionLost(_) | TransportError::Closed(_) => {
                close(&self.conn, CLOSE_ABORT, &reason);
                return;
            }
            TransportError::Protocol(_) | TransportError::Violation(_) => CLOSE_PROTOCOL,
            _ => CLOSE_ABORT,
        };
        if let Some(control) = &mut self.control {
            control.send_abort(&reason, Duration::from_millis(500)).await;
        }
        close(&self.conn, code, &reason);
    }

    /// Handshakes and runs the session to its commit (or first failure).
    pub async fn run(
        &mut self,
        on_event: &mut impl FnMut(ReceiverEvent),
        worker: &mut Option<std::thread::JoinHandle<()>>,
    ) -> Result<SessionReport, TransportError> {
        let cfg = self.cfg;
        let limit = cfg.idle_timeout;
        let (send, recv) = match tokio::time::timeout(limit, self.conn.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => return Err(connection_error(&e)),
            Err(_) => {
                return Err(TransportError::Timeout(format!("no control stream from the sender within {limit:?}")))
            }
        };
        let control = self.control.insert(ControlStream::new(send, recv));
        let ours = Hello::new(cfg.page_size, Codecs::ALL, cfg.max_run_pages, [0; 16]);
        let first = match tokio::time::timeout(limit, control.recv()).await {
            Ok(first) => first,
            Err(_) => return Err(TransportError::Timeout(format!("no Hello from the sender within {limit:?}"))),
        };
        let theirs = match first {
            Ok(Some(ControlFrame::Hello(hello))) => hello,
            Ok(Some(other)) => return Err(TransportError::Violation(format!("expected Hello, got {}", other.name()))),
            Ok(None) => return Err(TransportError::ConnectionLost("the sender closed the control stream".into())),
            Err(TransportError::Protocol(e)) => return Err(self.reject(e).await),
            Err(e) => return Err(e),
        };
        let (reply, agreement) = match answer_hello(&ours, &theirs) {
            Ok(answer) => answer,
            Err(e) => return Err(self.reject(e).await),
        };
        let limits = DataLimits::new(cfg.page_size, agreement.max_run_pages, agreement.codecs)?;
        let mut store = PageStore::new(self.staging_dir, cfg.page_size)?;
        if cfg.snapshots {
            store.enable_snapshots_or_warn();
        }
        let control = self.control.as_mut().ok_or_else(|| TransportError::Closed("no control stream".into()))?;
        control.send(&ControlFrame::Hello(reply)).await?;
        let peer = self.conn.remote_address();
        on_event(ReceiverEvent::Connected { peer });

        let (ops, ops_rx) = mpsc::channel(STORE_QUEUE);
        *worker = Some(store_worker::spawn(store, ops_rx, self.fault.clone())?);
        self.streams = Some(tokio::spawn(accept_data_streams(
            self.conn.clone(),
            limits,
            ops.clone(),
            self.fault.clone(),
            self.wire_bytes.clone(),
        )));
        self.control_loop(&ops, peer, on_event).await
    }

    async fn reject(&mut self, err: WireError) -> TransportError {
        let reason = bounded_reason(&err.to_string());
        if let Some(control) = &mut self.control {
            let _ = control.send(&ControlFrame::Reject { reason: reason.clone() }).await;
            control.finish();
            let _ = control.delivered(Duration::from_millis(500)).await;
        }
        close(&self.conn, CLOSE_REJECT, &reason);
        TransportError::Protocol(err)
    }

    /// The next control frame, or the first fault of the data side.
    async fn next_frame(&mut self) -> Result<ControlFrame, TransportError> {
        let fault = self.fault.clone();
        let control = self.control.as_mut().ok_or_else(|| TransportError::Closed("no control stream".into()))?;
        tokio::select! {
            frame = control.recv() => match frame? {
                Some(frame) => Ok(frame),
                None => Err(TransportError::ConnectionLost("the sender closed the control stream without committing".into())),
            },
            () = fault.wait() => Err(fault.take()),
        }
    }

    /// Waits for the store worker's answer, the first fault, or the end of the connection.
    async fn store_answer<T>(&self, rx: oneshot::Receiver<Result<T, TransportError>>) -> Result<T, TransportError> {
        tokio::select! {
            answer = rx => answer.unwrap_or_else(|_| Err(self.fault.take())),
            () = self.fault.wait() => Err(self.fault.take()),
            err = self.conn.closed() => Err(connection_error(&err)),
        }
    }

    async fn send(&mut self, frame: &ControlFrame) -> Result<(), TransportError> {
        let control = self.control.as_mut().ok_or_else(|| TransportError::Closed("no control stream".into()))?;
        control.send(frame).await.map(|_| ())
    }

    async fn control_loop(
        &mut self,
        ops: &mpsc::Sender<StoreOp>,
        peer: SocketAddr,
        on_event: &mut impl FnMut(ReceiverEvent),
    ) -> Result<SessionReport, TransportError> {
        let closed = || TransportError::Closed("the store worker stopped".into());
        let (mut open, mut last, mut rounds) = (None::<u32>, None::<u32>, 0u32);
        loop {
            match self.next_frame().await? {
                ControlFrame::RoundBegin { round } => {
                    if let Some(open) = open {
                        return Err(TransportError::Violation(format!("round {round} began inside round {open}")));
                    }
                    if let Some(last) = last.filter(|last| round <= *last) {
                        return Err(TransportError::Violation(format!("round {round} began after round {last}")));
                    }
                    open = Some(round);
                    on_event(ReceiverEvent::RoundStarted { round });
                }
                ControlFrame::RoundEnd { round, data_pages, zero_pages, digest } => {
                    if open != Some(round) {
                        return Err(TransportError::Violation(format!(
                            "RoundEnd for round {round}, which is not open"
                        )));
                    }
                    let pages = data_pages
                        .checked_add(zero_pages)
                        .ok_or_else(|| TransportError::Violation(format!("round {round}: page counts overflow")))?;
                    let (done, rx) = oneshot::channel();
                    ops.send(StoreOp::AwaitRound { round, pages, digest, done }).await.map_err(|_| closed())?;
                    let held = self.store_answer(rx).await?;
                    let commit_ms = held
                        .commit_estimate
                        .map_or(NO_COMMIT_ESTIMATE, |d| u32::try_from(d.as_millis()).unwrap_or(NO_COMMIT_ESTIMATE - 1));
                    self.send(&ControlFrame::RoundAck { round, commit_ms }).await?;
                    let pages_held = held.pages;
                    (open, last, rounds) = (None, Some(round), rounds + 1);
                    let wire_bytes = self.wire_bytes();
                    tracing::debug!(round, data_pages, zero_pages, pages_held, wire_bytes, "round received");
                    on_event(ReceiverEvent::RoundDone { round, data_pages, zero_pages, pages_held, wire_bytes });
                }
                ControlFrame::Stats(stats) => tracing::debug!(?stats, "sender stats"),
                ControlFrame::Commit { final_round, total_pages } => {
                    if let Some(open) = open {
                        return Err(TransportError::Violation(format!("Commit inside round {open}")));
                    }
                    if last.is_some_and(|last| last != final_round) {
                        return Err(TransportError::Violation(format!(
                            "Commit names round {final_round} as the last, but the last round was {}",
                            last.unwrap_or_default()
                        )));
                    }
                    let (done, rx) = oneshot::channel();
                    let dir = self.images_dir.to_path_buf();
                    ops.send(StoreOp::Commit { total_pages, dir, done }).await.map_err(|_| closed())?;
                    // Not cancelled by a lost connection: the worker must finish (or fail) the
                    // commit before this session can decide what to leave behind.
                    let committed = rx.await.unwrap_or_else(|_| Err(self.fault.take()))?;
                    return self.acknowledge(committed, rounds, peer, on_event).await;
                }
                ControlFrame::Abort { reason } => return Err(TransportError::Aborted(reason)),
                other => {
                    return Err(TransportError::Violation(format!("unexpected {} from the sender", other.name())));
                }
            }
        }
    }

    async fn acknowledge(
        &mut self,
        committed: Committed,
        rounds: u32,
        peer: SocketAddr,
        on_event: &mut impl FnMut(ReceiverEvent),
    ) -> Result<SessionReport, TransportError> {
        let Committed { image: CommittedImage { dir, snapshots, written_bytes }, pages } = committed;
        let location = bounded_reason(&dir.display().to_string());
        if let Err(e) = self.send(&ControlFrame::CommitAck { location, pages }).await {
            // The sender cannot have the acknowledgement: it keeps its process, and we keep nothing.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(TransportError::ConnectionLost(format!("{e}; the committed image was removed again")));
        }
        if let Some(control) = &mut self.control {
            control.finish();
        }
        tracing::info!(dir = %dir.display(), pages, rounds, snapshots, written_bytes, "session committed");
        on_event(ReceiverEvent::Committed { dir: dir.clone(), pages });
        // Give the sender a moment to read the acknowledgement and close.
        let limit = self.cfg.idle_timeout;
        let _ = tokio::time::timeout(limit, self.conn.closed()).await;
        self.committed = true;
        Ok(SessionReport {
            dir,
            rounds,
            pages,
            wire_bytes: self.wire_bytes(),
            peer,
            snapshots,
            commit_written_bytes: written_bytes,
        })
    }
}

impl Drop for Session<'_> {
    /// However the session ends (even by a panicking event callback), its tasks stop and the
    /// connection closes.
    fn drop(&mut self) {
        self.stop();
        if self.committed {
            close(&self.conn, CLOSE_DONE, "committed");
        } else {
            close(&self.conn, CLOSE_ABORT, "the receiver ended the session");
        }
    }
}

/// Accepts the sender's data streams and reads each on its own task; aborting this task aborts
/// them all.
async fn accept_data_streams(
    conn: Connection,
    limits: DataLimits,
    ops: mpsc::Sender<StoreOp>,
    fault: Arc<Fault>,
    wire_bytes: Arc<AtomicU64>,
) {
    let mut readers = JoinSet::new();
    while let Ok(stream) = conn.accept_uni().await {
        readers.spawn(read_data_stream(stream, limits, ops.clone(), fault.clone(), wire_bytes.clone()));
    }
    drop(ops);
    while readers.join_next().await.is_some() {}
}

/// Chunks taken from a data stream per read.
const READ_CHUNKS: usize = 32;

/// Decoded bytes gathered into one store operation (a single larger run travels alone).
const BATCH_BYTES: u64 = 4 << 20;

/// Decodes one data stream into the store worker's queue; the first error is the session's.
/// Everything readable at once is decoded together and handed over as one batch (bounded by
/// [`BATCH_BYTES`]), so the store worker is woken once per batch, not once per run.
async fn read_data_stream(
    mut stream: RecvStream,
    limits: DataLimits,
    ops: mpsc::Sender<StoreOp>,
    fault: Arc<Fault>,
    wire_bytes: Arc<AtomicU64>,
) {
    let mut decoder = DataDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
    let page_size = limits.page_size();
    loop {
        match stream.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                for chunk in &mut chunks[..n] {
                    let chunk = std::mem::take(chunk);
                    wire_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    buf.extend_from_slice(&chunk);
                }
            }
            Ok(None) => {
                if let Err(e) = decoder.finish() {
                    fault.raise(TransportError::Protocol(e));
                }
                return;
            }
            Err(e) => {
                fault.raise(read_error("data stream", e));
                return;
            }
        }
        let mut batch: Vec<DataRun> = Vec::new();
        let mut batch_bytes = 0u64;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(run)) => {
                    let bytes = run.run.len_bytes(page_size);
                    if !batch.is_empty() && batch_bytes + bytes > BATCH_BYTES {
                        if ops.send(StoreOp::Runs(std::mem::take(&mut batch))).await.is_err() {
                            return;
                        }
                        batch_bytes = 0;
                    }
                    batch_bytes += bytes;
                    batch.push(run);
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = stream.stop(VarInt::from_u32(STREAM_BAD_DATA));
                    fault.raise(TransportError::Protocol(e));
                    return;
                }
            }
        }
        if !batch.is_empty() && ops.send(StoreOp::Runs(batch)).await.is_err() {
            return;
        }
    }
}
