//! [`FrameStream`]: relay frames over the two halves of one quinn bidirectional stream, with
//! quinn's errors mapped as the native transport maps them ([`crate::quic::session`]).

use bytes::BytesMut;
use quinn::{RecvStream, SendStream};

use super::frame::{FrameDecoder, FrameEncoder, RelayFrame};
use super::RelayError;
use crate::quic::session::{read_error, write_error};

/// Bytes read from the stream per call.
const READ_CHUNK: usize = 256 << 10;

/// Whole relay frames in and out of one session's stream.
pub struct FrameStream {
    send: SendStream,
    recv: RecvStream,
    decoder: FrameDecoder,
    buf: BytesMut,
    chunk: Vec<u8>,
    encoder: FrameEncoder,
    out: BytesMut,
    /// Bytes written to the stream so far.
    pub bytes_out: u64,
    /// Bytes read from the stream so far.
    pub bytes_in: u64,
}

impl FrameStream {
    /// Wraps a stream; `lz4` chooses whether Data frames may be compressed.
    pub fn new(send: SendStream, recv: RecvStream, lz4: bool) -> FrameStream {
        FrameStream {
            send,
            recv,
            decoder: FrameDecoder::new(),
            buf: BytesMut::new(),
            chunk: vec![0u8; READ_CHUNK],
            encoder: FrameEncoder::new(lz4),
            out: BytesMut::new(),
            bytes_out: 0,
            bytes_in: 0,
        }
    }

    /// The encoder, to append frames to [`pending`](Self::pending) without writing them yet.
    pub fn encoder_and_pending(&mut self) -> (&mut FrameEncoder, &mut BytesMut) {
        (&mut self.encoder, &mut self.out)
    }

    /// Bytes encoded but not written yet.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Encodes `frame` behind the pending bytes.
    pub fn queue(&mut self, frame: &RelayFrame) -> Result<(), RelayError> {
        self.encoder.encode(frame, &mut self.out)?;
        Ok(())
    }

    /// Writes every pending byte (waits for QUIC flow control).
    pub async fn flush(&mut self) -> Result<(), RelayError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.send.write_all(&self.out).await.map_err(|e| write_error("relay stream", e))?;
        self.bytes_out += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Queues and writes one frame.
    pub async fn send(&mut self, frame: &RelayFrame) -> Result<(), RelayError> {
        self.queue(frame)?;
        self.flush().await
    }

    /// Ends the sending half (after the pending bytes); errors are ignored (the peer may be gone).
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// The next frame; `Ok(None)` when the peer finished the stream between frames.
    pub async fn recv(&mut self) -> Result<Option<RelayFrame>, RelayError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            match self.recv.read(&mut self.chunk).await.map_err(|e| read_error("relay stream", e))? {
                Some(n) => {
                    self.bytes_in += n as u64;
                    self.buf.extend_from_slice(&self.chunk[..n]);
                }
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}
