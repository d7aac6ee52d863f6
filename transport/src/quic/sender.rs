//! [`QuicSink`]: the sending end of a QUIC page stream, a **blocking** [`PageSink`] that owns its
//! tokio runtime, so the engine's pre-copy loop and the CLI stay synchronous.
//!
//! `send_pages` compresses in the calling thread (LZ4 when negotiated and smaller, raw
//! otherwise; runs longer than the agreed limit are split) and gathers frames in a batch of up to
//! [`BATCH_BYTES`] (short runs make small frames: one hand-over per frame would cost more than
//! the frame). A full batch, or the batch at the end of a round, takes room in a window of
//! `window_bytes` (a semaphore counted in bytes) and goes to one of `data_streams` writer tasks,
//! round robin. A writer gives the room back once quinn has taken
//! the frame, so never more than `window_bytes` of frames wait in memory; when the window is
//! full the caller blocks (backpressure). `end_round` / `commit` send their control frame and
//! block until the receiver acknowledges. A lost connection, a failed data stream or the
//! receiver's Abort wakes any blocked call with an error; waits for acknowledgements are
//! bounded by `ack_timeout`. Do not call it from inside an async runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pagestream_engine::criu::PagemapId;
use pagestream_engine::round_digest::RoundDigest;
use pagestream_engine::sink::{SinkError, SinkStats};
use pagestream_engine::PageRun;
use quinn::{Connection, Endpoint};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

mod page_sink;

use super::endpoint::{client_bind_addr, make_endpoint, runtime};
use super::error::TransportError;
use super::sender_config::SenderConfig;
use super::sender_streams::{handshake, session_id, Connected, DataLanes, PushError};
use super::session::{close, connection_error, ControlStream, Fault, CLOSE_ABORT, CLOSE_DONE, CLOSE_PROTOCOL};
use crate::wire::{Agreement, ControlFrame, DataLimits, Hello, RunEncoder, StatsReport, WireError};

/// Frames gathered before they are handed to a data stream together (at most the window).
pub const BATCH_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between rounds.
    Idle,
    /// Inside round `.0`.
    InRound(u32),
    Committed,
    Aborted,
    Failed {
        aborted_by_peer: bool,
        message: String,
    },
}

/// The sending end of a QUIC page stream. See the module documentation.
pub struct QuicSink {
    conn: Connection,
    endpoint: Endpoint,
    control: ControlStream,
    lanes: DataLanes,
    fault: Arc<Fault>,
    encoder: RunEncoder,
    /// Encoded frames not yet queued (at most `batch_limit` bytes, or one larger frame).
    batch: BytesMut,
    batch_limit: usize,
    agreement: Agreement,
    page_size: u64,
    ack_timeout: Duration,
    state: State,
    last_round: Option<u32>,
    /// The receiver's commit estimate from the last RoundAck.
    commit_estimate: Option<Duration>,
    round_data: u64,
    round_zero: u64,
    /// The digest of the open round's pages (sent with RoundEnd).
    digest: RoundDigest,
    stats: SinkStats,
    report: StatsReport,
    // Declared last: dropped after everything that lives on it.
    rt: Runtime,
}

impl QuicSink {
    /// Connects to the receiver at `addr`, handshakes (protocol version, `page_size`, encodings)
    /// and opens the data streams.
    pub fn connect(addr: SocketAddr, cfg: SenderConfig, page_size: u64) -> Result<QuicSink, TransportError> {
        let (wanted, window_pages) = cfg.validate(page_size)?;
        let codecs = wanted.codecs();
        let rt = runtime("pagestream-send", 2)?;
        let hello = Hello::new(page_size, codecs, wanted.max_run_pages(), session_id()?);
        let window = Arc::new(Semaphore::new(cfg.window_bytes));
        let fault = Fault::new(Some(window.clone()));
        let (endpoint, Connected { conn, control, agreement, streams }) = rt.block_on(async {
            let endpoint = make_endpoint(client_bind_addr(addr), None)?;
            match handshake(&endpoint, addr, &cfg, &hello).await {
                Ok(connected) => Ok((endpoint, connected)),
                Err(e) => {
                    endpoint.close(quinn::VarInt::from_u32(CLOSE_ABORT), b"handshake failed");
                    Err(e)
                }
            }
        })?;

        let max_run = u64::from(agreement.max_run_pages).min(window_pages).min(u64::from(u32::MAX)) as u32;
        let limits = DataLimits::new(page_size, max_run, agreement.codecs)?;
        tracing::info!(
            peer = %addr,
            codecs = %agreement.codecs,
            max_run_pages = max_run,
            data_streams = streams.len(),
            window_bytes = cfg.window_bytes,
            "QUIC page stream connected"
        );
        let lanes = DataLanes::start(&rt, streams, window, cfg.window_bytes, &fault);
        let watcher_conn = conn.clone();
        let watcher_fault = fault.clone();
        rt.spawn(async move {
            let err = watcher_conn.closed().await;
            watcher_fault.raise(connection_error(&err));
        });
        Ok(QuicSink {
            conn,
            endpoint,
            control,
            lanes,
            fault,
            encoder: RunEncoder::new(limits),
            batch: BytesMut::new(),
            batch_limit: BATCH_BYTES.min(cfg.window_bytes),
            agreement,
            page_size,
            ack_timeout: cfg.ack_timeout,
            state: State::Idle,
            last_round: None,
            commit_estimate: None,
            round_data: 0,
            round_zero: 0,
            digest: RoundDigest::new(page_size),
            stats: SinkStats::default(),
            report: StatsReport::default(),
            rt,
        })
    }

    /// What the handshake agreed (encodings, run limit, session id).
    pub fn agreement(&self) -> &Agreement {
        &self.agreement
    }

    /// The longest run per frame actually used (the agreement, capped by the window).
    pub fn max_run_pages(&self) -> u32 {
        self.encoder.limits().max_run_pages()
    }

    /// The configured window.
    pub fn window_bytes(&self) -> usize {
        self.lanes.window_bytes()
    }

    /// The most bytes of frames that were ever queued at once (never more than the window).
    pub fn queue_high_water(&self) -> usize {
        self.lanes.high_water()
    }

    /// How many times `send_pages` / `send_zero` had to wait for room in the window.
    pub fn window_waits(&self) -> u64 {
        self.lanes.waits()
    }

    /// The receiver's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// quinn's counters of the connection (UDP bytes and datagrams, RTT, congestion events).
    pub fn connection_stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    fn ensure_usable(&self) -> Result<(), SinkError> {
        match &self.state {
            State::Idle | State::InRound(_) => Ok(()),
            State::Committed => Err(SinkError::Transport("the session is already committed".into())),
            State::Aborted => Err(SinkError::Transport("the session was aborted".into())),
            State::Failed { aborted_by_peer: true, message } => Err(SinkError::Aborted(message.clone())),
            State::Failed { aborted_by_peer: false, message } => Err(SinkError::Transport(message.clone())),
        }
    }

    /// The open round (call after [`check_fault`](Self::check_fault)).
    fn in_round(&self) -> Result<u32, SinkError> {
        match self.state {
            State::InRound(round) => Ok(round),
            _ => Err(SinkError::Transport("no round is open: call begin_round first".into())),
        }
    }

    /// Turns a failure into the session's final state: the connection is closed and every later
    /// call returns the same error.
    fn fail(&mut self, err: TransportError) -> SinkError {
        let aborted_by_peer = matches!(err, TransportError::Aborted(_) | TransportError::Rejected(_));
        let message = err.to_string();
        tracing::warn!("QUIC page stream failed: {message}");
        let code = if matches!(err, TransportError::Protocol(_) | TransportError::Violation(_)) {
            CLOSE_PROTOCOL
        } else {
            CLOSE_ABORT
        };
        close(&self.conn, code, &message);
        let sink_err = SinkError::from(err);
        let inner = match &sink_err {
            SinkError::Refused(m) | SinkError::Aborted(m) | SinkError::Transport(m) => m.clone(),
        };
        self.state = State::Failed { aborted_by_peer, message: inner };
        sink_err
    }

    fn check_fault(&mut self) -> Result<(), SinkError> {
        if self.fault.is_raised() && matches!(self.state, State::Idle | State::InRound(_)) {
            let err = self.fault.take();
            return Err(self.fail(err));
        }
        self.ensure_usable()
    }

    /// Queues one frame, blocking while the window is full.
    fn enqueue(&mut self, frame: Bytes) -> Result<(), SinkError> {
        let bytes = frame.len() as u64;
        match self.lanes.push(&self.rt, frame, self.ack_timeout) {
            Ok(()) => {
                self.stats.wire_bytes += bytes;
                Ok(())
            }
            Err(PushError::Stopped) => {
                self.check_fault()?;
                Err(self.fail(TransportError::ConnectionLost("the data streams stopped".into())))
            }
            Err(PushError::TimedOut) => {
                let err = TransportError::Timeout(format!(
                    "the receiver took no data for {:?} (window of {} bytes full)",
                    self.ack_timeout,
                    self.lanes.window_bytes()
                ));
                Err(self.fail(err))
            }
        }
    }

    /// Makes room in the batch for a frame of up to `bound` bytes: queues the batch first if the
    /// frame might not fit.
    fn batch_room(&mut self, bound: u64) -> Result<(), SinkError> {
        if !self.batch.is_empty() && self.batch.len() as u64 + bound > self.batch_limit as u64 {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Queues the batch once it is full.
    fn batch_added(&mut self) -> Result<(), SinkError> {
        if self.batch.len() >= self.batch_limit {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Frames `run` of `id` in pieces with `encode`, for the frames without payload (zero runs,
    /// discards).
    fn queue_without_payload(
        &mut self,
        id: PagemapId,
        run: PageRun,
        encode: fn(&mut RunEncoder, u32, PagemapId, PageRun, &mut BytesMut) -> Result<usize, WireError>,
    ) -> Result<(), SinkError> {
        self.check_fault()?;
        let round = self.in_round()?;
        let ps = self.page_size;
        if PageRun::checked(run.vaddr, run.nr_pages, ps).is_none() {
            return Err(SinkError::Transport(format!("{run:?} is not page aligned, empty or wraps")));
        }
        let max = u64::from(self.encoder.limits().max_run_pages());
        for piece in run.chunks(max, ps) {
            self.batch_room(self.encoder.max_frame_len(0))?;
            if let Err(e) = encode(&mut self.encoder, round, id, piece, &mut self.batch) {
                return Err(self.fail(e.into()));
            }
            self.batch_added()?;
        }
        Ok(())
    }

    /// Queues the gathered frames (blocking while the window is full).
    fn flush_batch(&mut self) -> Result<(), SinkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let frames = self.batch.split().freeze();
        self.enqueue(frames)
    }

    /// Sends a control frame and waits for the answer `want` accepts.
    fn request(
        &mut self,
        frame: ControlFrame,
        what: &'static str,
        want: impl Fn(&ControlFrame) -> bool,
    ) -> Result<ControlFrame, TransportError> {
        let (control, fault, limit) = (&mut self.control, self.fault.clone(), self.ack_timeout);
        self.rt.block_on(async move {
            tokio::select! {
                answer = control.request(&frame, what, want, limit) => answer,
                () = fault.wait() => Err(fault.take()),
            }
        })
    }

    fn send_control(&mut self, frame: ControlFrame) -> Result<(), TransportError> {
        let (control, fault) = (&mut self.control, self.fault.clone());
        self.rt.block_on(async move {
            tokio::select! {
                sent = control.send(&frame) => sent.map(|_| ()),
                () = fault.wait() => Err(fault.take()),
            }
        })
    }

    /// Closes the connection with `code` and waits briefly for the close to be sent.
    fn shut(&mut self, code: u32, reason: &str) {
        close(&self.conn, code, reason);
        let endpoint = self.endpoint.clone();
        self.rt.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
    }
}

impl Drop for QuicSink {
    fn drop(&mut self) {
        match self.state {
            State::Idle | State::InRound(_) => self.shut(CLOSE_ABORT, "the sender dropped the session"),
            // Closed at the commit without waiting: let the close reach the receiver now.
            State::Committed => self.shut(CLOSE_DONE, "committed"),
            _ => {}
        }
    }
}
