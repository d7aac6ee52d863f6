//! [`SenderConfig`] and [`Compression`]: how a [`QuicSink`](super::QuicSink) connects and sends.

use std::time::Duration;

use super::endpoint::{DEFAULT_IDLE_TIMEOUT, MAX_DATA_STREAMS};
use super::error::TransportError;
use super::tls::Security;
use crate::wire::{Codecs, DataLimits, DEFAULT_MAX_RUN_PAGES, FRAME_HEADER_LEN, RUN_HEADER_LEN};

/// Whether data pages are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// LZ4 block per run, raw when it does not shrink.
    #[default]
    Lz4,
    /// Raw pages.
    None,
}

/// How a [`QuicSink`] connects and sends.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// TLS.
    pub security: Security,
    /// The name the receiver's certificate must carry (default `localhost`).
    pub server_name: String,
    /// Unidirectional data streams (1 ..= 16, default 4).
    pub data_streams: usize,
    /// Most bytes of frames queued in memory (default 32 MiB; at least one page's frame).
    pub window_bytes: usize,
    /// Compression (default LZ4).
    pub compression: Compression,
    /// Longest run per frame, before the receiver's limit applies (default 1024 pages).
    pub max_run_pages: u32,
    /// How long to wait for the receiver's acknowledgements (and for room in the window).
    pub ack_timeout: Duration,
    /// QUIC idle timeout: a silent peer is declared lost after this long (default 10 s).
    pub idle_timeout: Duration,
}

impl SenderConfig {
    /// Defaults with `security`.
    pub fn new(security: Security) -> SenderConfig {
        SenderConfig {
            security,
            server_name: "localhost".into(),
            data_streams: 4,
            window_bytes: 32 << 20,
            compression: Compression::Lz4,
            max_run_pages: DEFAULT_MAX_RUN_PAGES,
            ack_timeout: Duration::from_secs(120),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl SenderConfig {
    /// Checks the configuration for `page_size`-byte pages before anything goes on the wire:
    /// the limits to offer (encodings, run length) and how many pages one frame may carry so that
    /// it fits in the window.
    pub fn validate(&self, page_size: u64) -> Result<(DataLimits, u64), TransportError> {
        if !(1..=MAX_DATA_STREAMS).contains(&self.data_streams) {
            return Err(TransportError::Config(format!(
                "data_streams {} is not in 1..={MAX_DATA_STREAMS}",
                self.data_streams
            )));
        }
        let frame_overhead = (FRAME_HEADER_LEN + RUN_HEADER_LEN) as u64;
        let window_pages = (self.window_bytes as u64).saturating_sub(frame_overhead) / page_size.max(1);
        if window_pages == 0 || self.window_bytes > u32::MAX as usize {
            return Err(TransportError::Config(format!(
                "window_bytes {} must hold at least one page's frame ({} bytes) and be below 4 GiB",
                self.window_bytes,
                frame_overhead + page_size
            )));
        }
        let codecs = match self.compression {
            Compression::Lz4 => Codecs::RAW | Codecs::LZ4,
            Compression::None => Codecs::RAW,
        };
        let limits = DataLimits::new(page_size, self.max_run_pages, codecs)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        Ok((limits, window_pages))
    }
}
