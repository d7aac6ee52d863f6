//! The framing every pagestream stream shares: `[u8 type][u32 body length, LE][body]`, the
//! [`FrameType`] registry, and the little helpers that read and write frame bodies with every
//! length checked ([`BodyReader`], [`put_string`]).

use bytes::{BufMut, BytesMut};

use super::error::WireError;

/// Bytes of a frame header: the type byte and the u32 body length.
pub const FRAME_HEADER_LEN: usize = 5;

/// The largest body of a control frame (handshake, rounds, commit, stats, abort).
pub const MAX_CONTROL_BODY: usize = 8 * 1024;

/// The longest string a frame may carry (reasons, locations), in bytes of UTF-8.
pub const MAX_STRING_LEN: usize = 4096;

/// Every frame type pagestream defines. The byte values are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Handshake, both directions.
    Hello = 0x01,
    /// Handshake refused (server → client).
    Reject = 0x02,
    /// A round starts (client → server).
    RoundBegin = 0x10,
    /// A round ends, with its page counts (client → server).
    RoundEnd = 0x11,
    /// Every page of a round is held (server → client).
    RoundAck = 0x12,
    /// Make the migration durable (client → server).
    Commit = 0x13,
    /// The migration is durable (server → client).
    CommitAck = 0x14,
    /// Counters, informational (either direction).
    Stats = 0x15,
    /// The session is over, with a reason (either direction).
    Abort = 0x16,
    /// A run of pages (data streams, client → server).
    Run = 0x20,
}

impl FrameType {
    /// The frame type of a type byte, `None` for bytes pagestream does not define.
    pub fn from_byte(byte: u8) -> Option<FrameType> {
        Some(match byte {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Reject,
            0x10 => FrameType::RoundBegin,
            0x11 => FrameType::RoundEnd,
            0x12 => FrameType::RoundAck,
            0x13 => FrameType::Commit,
            0x14 => FrameType::CommitAck,
            0x15 => FrameType::Stats,
            0x16 => FrameType::Abort,
            0x20 => FrameType::Run,
            _ => return None,
        })
    }

    /// The frame's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "Hello",
            FrameType::Reject => "Reject",
            FrameType::RoundBegin => "RoundBegin",
            FrameType::RoundEnd => "RoundEnd",
            FrameType::RoundAck => "RoundAck",
            FrameType::Commit => "Commit",
            FrameType::CommitAck => "CommitAck",
            FrameType::Stats => "Stats",
            FrameType::Abort => "Abort",
            FrameType::Run => "Run",
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame type.
    pub ty: FrameType,
    /// The body length that follows the header.
    pub body_len: u32,
}

/// Parses the frame header at the front of `buf` without consuming it: `Ok(None)` while fewer
/// than [`FRAME_HEADER_LEN`] bytes are there, an error for an unknown type byte.
pub fn peek_header(buf: &[u8]) -> Result<Option<FrameHeader>, WireError> {
    let Some(head) = buf.get(..FRAME_HEADER_LEN) else { return Ok(None) };
    let ty = FrameType::from_byte(head[0]).ok_or(WireError::UnknownFrameType { ty: head[0] })?;
    let body_len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    Ok(Some(FrameHeader { ty, body_len }))
}

/// Appends a frame header for a body of `body_len` bytes.
pub fn put_header(out: &mut BytesMut, ty: FrameType, body_len: u32) {
    out.put_u8(ty as u8);
    out.put_u32_le(body_len);
}

/// Appends a string as `[u16 length, LE][UTF-8 bytes]`, refusing strings over
/// [`MAX_STRING_LEN`].
pub fn put_string(out: &mut BytesMut, frame: &'static str, s: &str) -> Result<(), WireError> {
    if s.len() > MAX_STRING_LEN {
        return Err(WireError::StringTooLong { frame, len: s.len(), max: MAX_STRING_LEN });
    }
    out.put_u16_le(s.len() as u16);
    out.put_slice(s.as_bytes());
    Ok(())
}

/// Reads the fields of one frame body front to back; running past the end is
/// [`WireError::ShortBody`], and [`finish`](Self::finish) rejects leftover bytes.
pub struct BodyReader<'a> {
    frame: &'static str,
    rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    /// A reader over `body` of the frame named `frame`.
    pub fn new(frame: &'static str, body: &'a [u8]) -> Self {
        Self { frame, rest: body }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::ShortBody { frame: self.frame });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Sixteen raw bytes.
    pub fn bytes16(&mut self) -> Result<[u8; 16], WireError> {
        self.array()
    }

    /// A `[u16 length][UTF-8]` string of at most [`MAX_STRING_LEN`] bytes (checked before the
    /// bytes are looked at).
    pub fn string(&mut self) -> Result<String, WireError> {
        let len = self.u16()? as usize;
        if len > MAX_STRING_LEN {
            return Err(WireError::StringTooLong { frame: self.frame, len, max: MAX_STRING_LEN });
        }
        let raw = self.bytes(len)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| WireError::NotUtf8 { frame: self.frame })
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Succeeds only if every byte of the body was read.
    pub fn finish(self) -> Result<(), WireError> {
        match self.rest.len() {
            0 => Ok(()),
            extra => Err(WireError::TrailingBytes { frame: self.frame, extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_byte_maps_back() {
        for byte in 0..=u8::MAX {
            if let Some(ty) = FrameType::from_byte(byte) {
                assert_eq!(ty as u8, byte, "{}", ty.name());
            }
        }
        assert_eq!(FrameType::from_byte(0x00), None);
        assert_eq!(peek_header(&[0x7f, 0, 0, 0, 0]), Err(WireError::UnknownFrameType { ty: 0x7f }));
        assert_eq!(peek_header(&[0x10, 4, 0, 0]), Ok(None));
    }

    #[test]
    fn body_reader_checks_lengths() {
        let mut r = BodyReader::new("Test", &[1, 0, 2]);
        assert_eq!(r.u16(), Ok(1));
        assert_eq!(r.u16(), Err(WireError::ShortBody { frame: "Test" }));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.finish(), Err(WireError::TrailingBytes { frame: "Test", extra: 1 }));

        let mut r = BodyReader::new("Test", &[2, 0, 0xff, 0xfe]);
        assert_eq!(r.string(), Err(WireError::NotUtf8 { frame: "Test" }));

        let mut long = vec![0u8; 2 + MAX_STRING_LEN + 1];
        long[..2].copy_from_slice(&((MAX_STRING_LEN + 1) as u16).to_le_bytes());
        let mut r = BodyReader::new("Test", &long);
        assert_eq!(r.string(), Err(WireError::StringTooLong { frame: "Test", len: MAX_STRING_LEN + 1, max: 4096 }));
    }

    #[test]
    fn put_string_refuses_long_strings() {
        let mut out = BytesMut::new();
        assert!(put_string(&mut out, "Abort", &"x".repeat(MAX_STRING_LEN)).is_ok());
        assert_eq!(out.len(), 2 + MAX_STRING_LEN);
        let err = put_string(&mut out, "Abort", &"x".repeat(MAX_STRING_LEN + 1));
        assert_eq!(err, Err(WireError::StringTooLong { frame: "Abort", len: 4097, max: 4096 }));
    }
}
