//! The control stream: one bidirectional stream the client opens first. It carries the
//! handshake ([`ControlFrame::Hello`] / [`ControlFrame::Reject`]), then rounds
//! (`RoundBegin`, `RoundEnd` with the round's page counts, answered by `RoundAck` once the server
//! holds them), `Commit` / `CommitAck`, optional `Stats`, and `Abort` from either side.
//!
//! [`encode_control`] appends one frame; [`ControlDecoder`] takes them back out of a byte buffer
//! as they arrive. The decoder checks the frame type and the body length against
//! [`MAX_CONTROL_BODY`] as soon as the 5-byte header is in, before buffering the body, and is
//! poisoned by its first error.

use bytes::{Buf, BufMut, BytesMut};

use super::error::WireError;
use super::frame::{peek_header, put_header, put_string, BodyReader, FrameType, FRAME_HEADER_LEN, MAX_CONTROL_BODY};
use super::handshake::Hello;
use super::MAX_STRING_LEN;
use crate::sticky::Sticky;

/// Counters one side reports to the other (informational; nothing depends on them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsReport {
    /// Page bytes handed to the sender (data pages only).
    pub raw_bytes: u64,
    /// Frame bytes put on the wire.
    pub wire_bytes: u64,
    /// Pages sent with data.
    pub data_pages: u64,
    /// Pages sent as zero runs.
    pub zero_pages: u64,
}

/// [`ControlFrame::RoundAck`]'s `commit_ms` when the server gives no estimate.
pub const NO_COMMIT_ESTIMATE: u32 = u32::MAX;

/// One frame of the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFrame {
    /// Handshake (client first, the server answers with its own).
    Hello(Hello),
    /// The server refuses the session.
    Reject {
        /// Why.
        reason: String,
    },
    /// Round `round` starts.
    RoundBegin {
        /// The round number.
        round: u32,
    },
    /// Round `round` ended after `data_pages` pages with data and `zero_pages` zero pages, whose
    /// [`RoundDigest`](pagestream_engine::round_digest::RoundDigest) is `digest`.
    RoundEnd {
        /// The round number.
        round: u32,
        /// Pages sent with data in this round.
        data_pages: u64,
        /// Pages sent as zero runs in this round.
        zero_pages: u64,
        /// The digest of the round's pages; the receiver compares it with what it stored.
        digest: u64,
    },
    /// The server holds every page of round `round`.
    RoundAck {
        /// The round number.
        round: u32,
        /// How long the server's commit would take now beyond the final round's own pages
        /// (ms; [`NO_COMMIT_ESTIMATE`]: no estimate). The sender's convergence policy adds it
        /// to the downtime it expects.
        commit_ms: u32,
    },
    /// Make the migration durable; `total_pages` pages (data and zero, over all rounds) were
    /// sent, the last round being `final_round`.
    Commit {
        /// The last round.
        final_round: u32,
        /// Pages sent over all rounds, data and zero (a page sent twice counts twice).
        total_pages: u64,
    },
    /// The migration is durable at `location` (the server's path) and holds `pages` distinct
    /// pages.
    CommitAck {
        /// Where the server stored the image.
        location: String,
        /// Distinct pages stored.
        pages: u64,
    },
    /// Counters.
    Stats(StatsReport),
    /// The session is over.
    Abort {
        /// Why.
        reason: String,
    },
}

impl ControlFrame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            ControlFrame::Hello(_) => FrameType::Hello,
            ControlFrame::Reject { .. } => FrameType::Reject,
            ControlFrame::RoundBegin { .. } => FrameType::RoundBegin,
            ControlFrame::RoundEnd { .. } => FrameType::RoundEnd,
            ControlFrame::RoundAck { .. } => FrameType::RoundAck,
            ControlFrame::Commit { .. } => FrameType::Commit,
            ControlFrame::CommitAck { .. } => FrameType::CommitAck,
            ControlFrame::Stats(_) => FrameType::Stats,
            ControlFrame::Abort { .. } => FrameType::Abort,
        }
    }

    /// The frame's name in messages.
    pub fn name(&self) -> &'static str {
        self.frame_type().name()
    }
}

/// Cuts `reason` to at most [`MAX_STRING_LEN`] bytes at a character boundary, so that any error
/// message can go into a Reject or an Abort.
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_STRING_LEN {
        return reason.to_owned();
    }
    let mut end = MAX_STRING_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Appends `frame` to `out`. Fails only for a string longer than [`MAX_STRING_LEN`] (then nothing
/// is appended).
pub fn encode_control(frame: &ControlFrame, out: &mut BytesMut) -> Result<(), WireError> {
    let name = frame.name();
    let mut body = BytesMut::new();
    match frame {
        ControlFrame::Hello(hello) => hello.encode_body(&mut body),
        ControlFrame::Reject { reason } | ControlFrame::Abort { reason } => put_string(&mut body, name, reason)?,
        ControlFrame::RoundBegin { round } => body.put_u32_le(*round),
        ControlFrame::RoundAck { round, commit_ms } => {
            body.put_u32_le(*round);
            body.put_u32_le(*commit_ms);
        }
        ControlFrame::RoundEnd { round, data_pages, zero_pages, digest } => {
            body.put_u32_le(*round);
            body.put_u64_le(*data_pages);
            body.put_u64_le(*zero_pages);
            body.put_u64_le(*digest);
        }
        ControlFrame::Commit { final_round, total_pages } => {
            body.put_u32_le(*final_round);
            body.put_u64_le(*total_pages);
        }
        ControlFrame::CommitAck { location, pages } => {
            put_string(&mut body, name, location)?;
            body.put_u64_le(*pages);
        }
        ControlFrame::Stats(s) => {
            for v in [s.raw_bytes, s.wire_bytes, s.data_pages, s.zero_pages] {
                body.put_u64_le(v);
            }
        }
    }
    // Bodies are at most a Hello or one bounded string plus a u64: far below u32::MAX.
    put_header(out, frame.frame_type(), body.len() as u32);
    out.put_slice(&body);
    Ok(())
}

/// Parses the body of a control frame of type `ty`.
pub fn decode_control_body(ty: FrameType, body: &[u8]) -> Result<ControlFrame, WireError> {
    let name = ty.name();
    let fixed = |want: usize| -> Result<BodyReader<'_>, WireError> {
        if body.len() == want {
            Ok(BodyReader::new(name, body))
        } else {
            Err(WireError::BadLength { frame: name, got: body.len(), want })
        }
    };
    let frame = match ty {
        FrameType::Hello => return Ok(ControlFrame::Hello(Hello::decode_body(body)?)),
        FrameType::Reject | FrameType::Abort => {
            let mut r = BodyReader::new(name, body);
            let reason = r.string()?;
            r.finish()?;
            return Ok(if ty == FrameType::Reject {
                ControlFrame::Reject { reason }
            } else {
                ControlFrame::Abort { reason }
            });
        }
        FrameType::CommitAck => {
            let mut r = BodyReader::new(name, body);
            let location = r.string()?;
            let pages = r.u64()?;
            r.finish()?;
            return Ok(ControlFrame::CommitAck { location, pages });
        }
        FrameType::RoundBegin => ControlFrame::RoundBegin { round: fixed(4)?.u32()? },
        FrameType::RoundAck => {
            let mut r = fixed(8)?;
            ControlFrame::RoundAck { round: r.u32()?, commit_ms: r.u32()? }
        }
        FrameType::RoundEnd => {
            let mut r = fixed(28)?;
            ControlFrame::RoundEnd { round: r.u32()?, data_pages: r.u64()?, zero_pages: r.u64()?, digest: r.u64()? }
        }
        FrameType::Commit => {
            let mut r = fixed(12)?;
            ControlFrame::Commit { final_round: r.u32()?, total_pages: r.u64()? }
        }
        FrameType::Stats => {
            let mut r = fixed(32)?;
            ControlFrame::Stats(StatsReport {
                raw_bytes: r.u64()?,
                wire_bytes: r.u64()?,
                data_pages: r.u64()?,
                zero_pages: r.u64()?,
            })
        }
        FrameType::Run => return Err(WireError::UnexpectedFrame { frame: name, stream: "control" }),
    };
    Ok(frame)
}

/// Streaming decoder of a control stream (either direction; which frames make sense when is
/// the session's business, not the codec's).
#[derive(Debug, Clone, Default)]
pub struct ControlDecoder {
    sticky: Sticky<WireError>,
    /// Bytes the frame at the front of the buffer needs (its header, or header and body).
    need: usize,
    frames: u64,
}

impl ControlDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> ControlDecoder {
        ControlDecoder::default()
    }

    /// Frames decoded so far.
    pub fn frames_decoded(&self) -> u64 {
        self.frames
    }

    /// Takes the next complete frame from the front of `buf`. `Ok(None)`: more bytes needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<ControlFrame>, WireError> {
        let mut sticky = std::mem::take(&mut self.sticky);
        let result = sticky.decode(buf, |buf| self.step(buf));
        self.sticky = sticky;
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<ControlFrame>, WireError> {
        self.need = FRAME_HEADER_LEN;
        let Some(header) = peek_header(buf)? else { return Ok(None) };
        if header.ty == FrameType::Run {
            return Err(WireError::UnexpectedFrame { frame: header.ty.name(), stream: "control" });
        }
        let len = header.body_len as usize;
        if len > MAX_CONTROL_BODY {
            return Err(WireError::FrameTooLarge {
                frame: header.ty.name(),
                len: u64::from(header.body_len),
                max: MAX_CONTROL_BODY as u64,
            });
        }
        self.need = FRAME_HEADER_LEN + len;
        if buf.len() < self.need {
            return Ok(None);
        }
        let frame = decode_control_body(header.ty, &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len])?;
        buf.advance(FRAME_HEADER_LEN + len);
        self.frames += 1;
        Ok(Some(frame))
    }

    /// Call at the end of the stream, after `decode` returned `Ok(None)`: fails if the stream
    /// ended inside a frame (or the decoder failed).
    pub fn finish(&self) -> Result<(), WireError> {
        self.sticky.finish(|got| WireError::Truncated { got: got as u64, need: self.need as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reason_cuts_at_a_char_boundary() {
        let long = "é".repeat(MAX_STRING_LEN);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_STRING_LEN && cut.len() >= MAX_STRING_LEN - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(bounded_reason("short"), "short");
    }

    #[test]
    fn truncated_stream_is_reported_at_finish() {
        let mut out = BytesMut::new();
        encode_control(&ControlFrame::RoundBegin { round: 3 }, &mut out).unwrap();
        let mut dec = ControlDecoder::new();
        let mut partial = BytesMut::from(&out[..7]);
        assert_eq!(dec.decode(&mut partial), Ok(None));
        assert_eq!(dec.finish(), Err(WireError::Truncated { got: 7, need: 9 }));
        partial.extend_from_slice(&out[7..]);
        assert_eq!(dec.decode(&mut partial), Ok(Some(ControlFrame::RoundBegin { round: 3 })));
        assert_eq!(dec.decode(&mut partial), Ok(None));
        assert_eq!(dec.finish(), Ok(()));
        assert_eq!(dec.frames_decoded(), 1);
    }
}
