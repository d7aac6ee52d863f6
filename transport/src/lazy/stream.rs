//! [`FrameReader`]: whole lazy-pages frames from the receiving half of a quinn stream (the urgent
//! stream, read by both the source and the daemon, and the push stream, read by the daemon).

use bytes::BytesMut;
use quinn::RecvStream;

use super::frame::{LazyDecoder, LazyFrame};
use crate::quic::session::read_error;

/// Bytes read from the stream per call.
const READ_CHUNK: usize = 64 << 10;

/// Decodes frames from one receiving stream.
pub struct FrameReader {
    recv: RecvStream,
    dec: LazyDecoder,
    buf: BytesMut,
}

impl FrameReader {
    /// Reads `recv` with a decoder for pages of `page_size` bytes.
    pub fn new(recv: RecvStream, page_size: u64) -> Result<FrameReader, String> {
        let dec = LazyDecoder::new(page_size).map_err(|e| e.to_string())?;
        Ok(FrameReader { recv, dec, buf: BytesMut::new() })
    }

    /// The next frame; `None` when the peer finished the stream between frames.
    pub async fn next(&mut self) -> Result<Option<LazyFrame>, String> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if let Some(frame) = self.dec.decode(&mut self.buf).map_err(|e| e.to_string())? {
                return Ok(Some(frame));
            }
            match self.recv.read(&mut chunk).await.map_err(|e| read_error("urgent stream", e).to_string())? {
                Some(n) => self.buf.extend_from_slice(&chunk[..n]),
                None => return self.dec.finish().map(|()| None).map_err(|e| e.to_string()),
            }
        }
    }
}
