//! [`ReplyDecoder`]: the client side's streaming decoder of the server → client byte stream,
//! for pagestream talking to a real `criu page-server` or acting as a lazy-pages client.
//!
//! Replies do not say what they are, so the caller queues what it waits for with
//! [`ReplyDecoder::expect`] (in the order the commands were sent; CRIU answers in order) and the
//! decoder reads them off the stream in that order. A GET reply is checked against its request:
//! command word `0x00040006`, `1 ≤ nr_pages ≤` requested, the requested `vaddr`, and `dst_id`
//! equal to the pid. Its `nr_pages * page_size` bytes of data follow as
//! [`ClientInput::PageData`] chunks. After an error the decoder is poisoned.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::command::{check_page_size, GET_REPLY_CMD};
use super::error::ProtocolError;
use super::header::{HeaderLayout, RawIov};
use super::reply::{Reply, ReplyKind};

/// One step of the server → client stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput {
    /// A reply. For [`Reply::Get`], [`ClientInput::PageData`] chunks follow until
    /// `nr_pages * page_size` bytes have been delivered.
    Reply(Reply),
    /// The next bytes of the current GET reply's page data (never empty).
    PageData(Bytes),
}

#[derive(Debug, Clone)]
enum State {
    Ready,
    Payload { total: u64, remaining: u64 },
    Failed(ProtocolError),
}

/// Streaming decoder of the server → client byte stream (sans-IO).
#[derive(Debug, Clone)]
pub struct ReplyDecoder {
    layout: HeaderLayout,
    page_size: u64,
    expected: VecDeque<ReplyKind>,
    /// Bytes left in the caller's buffer when `decode` last returned.
    buffered: usize,
    state: State,
}

impl ReplyDecoder {
    /// A decoder for a server using `layout` and pages of `page_size` bytes (a power of two
    /// ≥ 256). The layout must be configured: the client speaks first, so there is nothing to
    /// detect it from.
    pub fn new(layout: HeaderLayout, page_size: u64) -> Result<ReplyDecoder, ProtocolError> {
        Ok(ReplyDecoder {
            layout,
            page_size: check_page_size(page_size)?,
            expected: VecDeque::new(),
            buffered: 0,
            state: State::Ready,
        })
    }

    /// The header layout.
    pub fn layout(&self) -> HeaderLayout {
        self.layout
    }

    /// The page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Queues the reply to a command just sent (see
    /// [`PsCommand::expected_reply`](super::PsCommand::expected_reply)).
    pub fn expect(&mut self, kind: ReplyKind) {
        self.expected.push_back(kind);
    }

    /// Replies queued and not yet started.
    pub fn outstanding(&self) -> usize {
        self.expected.len()
    }

    /// The reply the next bytes must be.
    pub fn next_expected(&self) -> Option<&ReplyKind> {
        self.expected.front()
    }

    /// Page-data bytes the current GET reply still owes (0 otherwise).
    pub fn payload_remaining(&self) -> u64 {
        match self.state {
            State::Payload { remaining, .. } => remaining,
            _ => 0,
        }
    }

    /// Decodes the next reply or page-data chunk from the front of `buf`, consuming exactly its
    /// bytes. `Ok(None)` means more bytes are needed. Bytes while no reply is queued are an
    /// error ([`ProtocolError::UnexpectedReplyData`]).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<ClientInput>, ProtocolError> {
        let result = self.step(buf);
        self.buffered = buf.len();
        if let Err(err) = &result {
            self.state = State::Failed(err.clone());
        }
        result
    }

    /// Call at EOF, after [`decode`](Self::decode) has returned `Ok(None)` for the final bytes:
    /// fails if the stream ended inside a reply or its page data, or while replies were still
    /// queued (or the decoder failed).
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match &self.state {
            State::Failed(err) => Err(err.clone()),
            State::Payload { total, remaining } => {
                Err(ProtocolError::TruncatedPayload { command: "GET reply", got: total - remaining, total: *total })
            }
            State::Ready => match self.expected.front() {
                None => Ok(()),
                Some(kind) if self.buffered > 0 => Err(ProtocolError::TruncatedReply {
                    reply: kind.name(),
                    got: self.buffered,
                    need: self.reply_len(kind),
                }),
                Some(_) => Err(ProtocolError::RepliesOutstanding { outstanding: self.expected.len() }),
            },
        }
    }

    fn reply_len(&self, kind: &ReplyKind) -> usize {
        match kind {
            ReplyKind::Open2 => 1,
            ReplyKind::Parent | ReplyKind::Close => 4,
            ReplyKind::Get { .. } => self.layout.len(),
        }
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<ClientInput>, ProtocolError> {
        match &mut self.state {
            State::Failed(err) => Err(err.clone()),
            State::Payload { remaining, .. } => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                let chunk = buf.split_to(n).freeze();
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.state = State::Ready;
                }
                Ok(Some(ClientInput::PageData(chunk)))
            }
            State::Ready => self.reply(buf),
        }
    }

    fn reply(&mut self, buf: &mut BytesMut) -> Result<Option<ClientInput>, ProtocolError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let Some(&kind) = self.expected.front() else {
            return Err(ProtocolError::UnexpectedReplyData { bytes: buf.len() });
        };
        let len = self.reply_len(&kind);
        let Some(bytes) = buf.get(..len) else {
            return Ok(None);
        };
        let reply = match kind {
            ReplyKind::Open2 => {
                Reply::Open2 { has_parent: to_bool("OPEN2", bytes.first().map_or(0, |&b| i64::from(b)))? }
            }
            ReplyKind::Parent => Reply::Parent { has_parent: to_bool("PARENT", i64::from(read_i32(bytes)))? },
            ReplyKind::Close => Reply::Close { status: read_i32(bytes) },
            ReplyKind::Get { pid, vaddr, nr_pages: requested } => {
                let Some(raw) = RawIov::decode(self.layout, bytes) else {
                    return Ok(None);
                };
                check_get_reply(&raw, pid, vaddr, requested)?;
                Reply::Get { pid, vaddr, nr_pages: raw.nr_pages }
            }
        };
        let total = reply.payload_len(self.page_size)?;
        buf.advance(len);
        self.expected.pop_front();
        if total > 0 {
            self.state = State::Payload { total, remaining: total };
        }
        Ok(Some(ClientInput::Reply(reply)))
    }
}

fn check_get_reply(raw: &RawIov, pid: u64, vaddr: u64, requested: u64) -> Result<(), ProtocolError> {
    if raw.cmd != GET_REPLY_CMD {
        return Err(ProtocolError::GetReplyCommand { cmd: raw.cmd });
    }
    if raw.nr_pages == 0 || raw.nr_pages > requested {
        return Err(ProtocolError::GetReplyPages { nr_pages: raw.nr_pages, requested });
    }
    if raw.vaddr != vaddr {
        return Err(ProtocolError::GetReplyVaddr { vaddr: raw.vaddr, expected: vaddr });
    }
    if raw.dst_id != pid {
        return Err(ProtocolError::GetReplyPid { pid: raw.dst_id, expected: pid });
    }
    Ok(())
}

fn to_bool(reply: &'static str, value: i64) -> Result<bool, ProtocolError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(ProtocolError::BadBoolReply { reply, value }),
    }
}

/// A native-endian `i32` from the first 4 bytes (0 if fewer; callers pass exactly 4).
fn read_i32(bytes: &[u8]) -> i32 {
    bytes.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, i32::from_ne_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu_ps::encode_reply;

    const PS: u64 = 4096;

    fn decoder(layout: HeaderLayout, kinds: &[ReplyKind]) -> ReplyDecoder {
        let mut dec = ReplyDecoder::new(layout, PS).unwrap();
        kinds.iter().for_each(|k| dec.expect(*k));
        dec
    }

    fn drain(dec: &mut ReplyDecoder, buf: &mut BytesMut) -> Result<Vec<ClientInput>, ProtocolError> {
        let mut out = Vec::new();
        while let Some(input) = dec.decode(buf)? {
            out.push(input);
        }
        Ok(out)
    }

    fn raw_get(layout: HeaderLayout, raw: RawIov) -> BytesMut {
        let mut buf = BytesMut::new();
        raw.encode(layout, &mut buf).unwrap();
        buf
    }

    #[test]
    fn decodes_fixed_replies_in_order() {
        let mut buf = BytesMut::new();
        for r in [Reply::Parent { has_parent: true }, Reply::Open2 { has_parent: false }, Reply::Close { status: 0 }] {
            encode_reply(&r, HeaderLayout::Legacy24, PS, &mut buf).unwrap();
        }
        let mut dec = decoder(HeaderLayout::Legacy24, &[ReplyKind::Parent, ReplyKind::Open2, ReplyKind::Close]);
        let got = drain(&mut dec, &mut buf).unwrap();
        assert_eq!(
            got,
            [
                ClientInput::Reply(Reply::Parent { has_parent: true }),
                ClientInput::Reply(Reply::Open2 { has_parent: false }),
                ClientInput::Reply(Reply::Close { status: 0 }),
            ]
        );
        assert_eq!(dec.outstanding(), 0);
        dec.finish().unwrap();
    }

    #[test]
    fn rejects_non_boolean_answers() {
        let mut dec = decoder(HeaderLayout::Wide32, &[ReplyKind::Open2]);
        let err = dec.decode(&mut BytesMut::from(&[2u8][..])).unwrap_err();
        assert_eq!(err.to_string(), "OPEN2 reply 2 is not 0 or 1");
        let mut dec = decoder(HeaderLayout::Wide32, &[ReplyKind::Parent]);
        let err = dec.decode(&mut BytesMut::from(&(-1i32).to_ne_bytes()[..])).unwrap_err();
        assert_eq!(err, ProtocolError::BadBoolReply { reply: "PARENT", value: -1 });
    }

    #[test]
    fn close_status_is_passed_through() {
        let mut dec = decoder(HeaderLayout::Wide32, &[ReplyKind::Close]);
        let mut buf = BytesMut::from(&(-3i32).to_ne_bytes()[..]);
        assert_eq!(dec.decode(&mut buf), Ok(Some(ClientInput::Reply(Reply::Close { status: -3 }))));
    }

    #[test]
    fn get_reply_with_short_count_and_data() {
        let kind = ReplyKind::Get { pid: 1234, vaddr: 0x7000, nr_pages: 4 };
        let mut buf =
            raw_get(HeaderLayout::Wide32, RawIov { cmd: 0x0004_0006, nr_pages: 2, vaddr: 0x7000, dst_id: 1234 });
        buf.extend_from_slice(&[7; 8192]);
        let mut dec = decoder(HeaderLayout::Wide32, &[kind]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(ClientInput::Reply(Reply::Get { pid: 1234, vaddr: 0x7000, nr_pages: 2 })))
        );
        assert_eq!(dec.payload_remaining(), 8192);
        let data = drain(&mut dec, &mut buf).unwrap();
        assert_eq!(data, [ClientInput::PageData(Bytes::from(vec![7; 8192]))]);
        dec.finish().unwrap();
    }

    #[test]
    fn get_reply_validation() {
        let kind = ReplyKind::Get { pid: 1234, vaddr: 0x7000, nr_pages: 4 };
        let good = RawIov { cmd: 0x0004_0006, nr_pages: 1, vaddr: 0x7000, dst_id: 1234 };
        let cases = [
            (RawIov { cmd: 0x0000_0006, ..good }, ProtocolError::GetReplyCommand { cmd: 6 }),
            (RawIov { cmd: 0x0006_0006, ..good }, ProtocolError::GetReplyCommand { cmd: 0x0006_0006 }),
            (RawIov { nr_pages: 0, ..good }, ProtocolError::GetReplyPages { nr_pages: 0, requested: 4 }),
            (RawIov { nr_pages: 5, ..good }, ProtocolError::GetReplyPages { nr_pages: 5, requested: 4 }),
            (RawIov { vaddr: 0x8000, ..good }, ProtocolError::GetReplyVaddr { vaddr: 0x8000, expected: 0x7000 }),
            (RawIov { dst_id: 0x4D201, ..good }, ProtocolError::GetReplyPid { pid: 0x4D201, expected: 1234 }),
        ];
        for layout in [HeaderLayout::Legacy24, HeaderLayout::Wide32] {
            for (raw, expected) in &cases {
                let mut dec = decoder(layout, &[kind]);
                let mut buf = raw_get(layout, *raw);
                assert_eq!(dec.decode(&mut buf).as_ref(), Err(expected), "{raw:?}");
                assert_eq!(buf.len(), layout.len(), "nothing consumed");
                assert_eq!(dec.decode(&mut buf).as_ref(), Err(expected), "poisoned");
            }
            let mut dec = decoder(layout, &[kind]);
            assert!(matches!(dec.decode(&mut raw_get(layout, good)), Ok(Some(ClientInput::Reply(_)))));
        }
    }

    #[test]
    fn unexpected_bytes() {
        let mut dec = decoder(HeaderLayout::Legacy24, &[]);
        assert_eq!(dec.decode(&mut BytesMut::new()), Ok(None));
        let err = dec.decode(&mut BytesMut::from(&[0u8; 3][..])).unwrap_err();
        assert_eq!(err.to_string(), "3 bytes from the page server while no reply was expected");
    }

    #[test]
    fn eof_cases() {
        let kind = ReplyKind::Get { pid: 1, vaddr: 0x1000, nr_pages: 2 };
        let mut full =
            raw_get(HeaderLayout::Legacy24, RawIov { cmd: 0x0004_0006, nr_pages: 2, vaddr: 0x1000, dst_id: 1 });
        full.extend_from_slice(&[1; 8192]);
        for (cut, expected) in [
            (0, Err(ProtocolError::RepliesOutstanding { outstanding: 1 })),
            (23, Err(ProtocolError::TruncatedReply { reply: "GET", got: 23, need: 24 })),
            (24 + 100, Err(ProtocolError::TruncatedPayload { command: "GET reply", got: 100, total: 8192 })),
            (24 + 8192, Ok(())),
        ] {
            let mut dec = decoder(HeaderLayout::Legacy24, &[kind]);
            let mut buf = BytesMut::from(&full[..cut]);
            drain(&mut dec, &mut buf).unwrap();
            assert_eq!(dec.finish(), expected, "cut at {cut}");
        }
        let mut dec = decoder(HeaderLayout::Legacy24, &[ReplyKind::Close]);
        drain(&mut dec, &mut BytesMut::from(&[0u8; 2][..])).unwrap();
        assert_eq!(dec.finish(), Err(ProtocolError::TruncatedReply { reply: "CLOSE", got: 2, need: 4 }));
    }
}
