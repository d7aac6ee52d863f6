//! The relay's own frames (sans-IO): what travels on the one bidirectional QUIC stream that
//! carries a forwarded CRIU page-server session.
//!
//! Every frame is `[u8 type][u32 body length, LE][body]`, integers little-endian:
//!
//! | type | frame | direction | body |
//! | --- | --- | --- | --- |
//! | 0x01 | [`RelayFrame::Begin`] | source → destination | `u32 version`, `u64 page_size`, `u32 flags` |
//! | 0x02 | [`RelayFrame::Command`] | source → destination | `u32 cmd`, `u64 nr_pages`, `u64 vaddr`, `u64 dst_id` (CRIU's header fields) |
//! | 0x03 | [`RelayFrame::Data`] | source → destination | `u8 encoding`, `u32 len`, payload |
//! | 0x04 | [`RelayFrame::Abort`] | source → destination | UTF-8 reason |
//! | 0x05 | [`RelayFrame::File`] | source → destination | `u64 size`, UTF-8 name; `size` bytes follow as Data |
//! | 0x06 | [`RelayFrame::Commit`] | source → destination | (empty) |
//! | 0x11 | [`RelayFrame::Reply`] | destination → source | the reply bytes CRIU is owed (OPEN2, PARENT) |
//! | 0x12 | [`RelayFrame::Committed`] | destination → source | `u64 session`, the CLOSE reply bytes (none after Commit) |
//! | 0x13 | [`RelayFrame::Failed`] | destination → source | UTF-8 reason |
//!
//! Begin's flag [`BEGIN_WITH_FILES`] announces a whole dump (the CRIU plugin): the destination
//! then answers CRIU's CLOSE with a Reply and keeps the session staged while File frames bring
//! the dump's other image files; Commit asks for the commit, answered by Committed.
//!
//! A Data frame carries the next `len` (1 ..= [`MAX_CHUNK`]) bytes of the current entry's page
//! data: encoding 0 (all zero, no payload), 1 (raw, `len` bytes) or 2 (one LZ4 block of 1 ..= `len`
//! bytes that decompresses to exactly `len`). [`FrameEncoder`] picks zero, then LZ4 when smaller,
//! else raw. Reply bytes are CRIU's native-endian reply, passed through verbatim (CRIU needs both
//! ends to share a byte order anyway).
//!
//! [`FrameDecoder`] checks each frame's length against its type's limit before buffering it,
//! decompresses only into a buffer of exactly `len`, never panics on arbitrary bytes, and stays
//! failed after its first error.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use lz4_flex::block::{compress_into_with_table, decompress_into, get_maximum_output_size, CompressTable};

use crate::criu_ps::{ProtocolError, PsCommand, RawIov};
use crate::sticky::Sticky;

/// The relay protocol version carried by Begin.
pub const RELAY_VERSION: u32 = 2;
/// Begin flag: image files follow CRIU's CLOSE, and Commit ends the session.
pub const BEGIN_WITH_FILES: u32 = 1;
/// The longest file name a File frame carries.
pub const MAX_FILE_NAME: usize = 255;
/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 5;
/// The most page-data bytes one Data frame carries (decoded).
pub const MAX_CHUNK: usize = 1 << 20;
/// The longest reply a Reply or Committed frame may carry.
pub const MAX_REPLY: usize = 16;
/// The longest reason (bytes of UTF-8) of an Abort or Failed frame.
pub const MAX_REASON: usize = 1024;

const BEGIN: u8 = 0x01;
const COMMAND: u8 = 0x02;
const DATA: u8 = 0x03;
const ABORT: u8 = 0x04;
const FILE: u8 = 0x05;
const COMMIT: u8 = 0x06;
const REPLY: u8 = 0x11;
const COMMITTED: u8 = 0x12;
const FAILED: u8 = 0x13;

const BEGIN_BODY: usize = 16;
const COMMAND_BODY: usize = 28;
const DATA_HEAD: usize = 5;

/// One relay frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayFrame {
    /// A session starts: protocol version, the dumping host's page size, flags
    /// ([`BEGIN_WITH_FILES`]).
    Begin { version: u32, page_size: u64, flags: u32 },
    /// A CRIU command, as decoded from CRIU's stream.
    Command(PsCommand),
    /// The next bytes of the current entry's page data (decoded: zero chunks are zeros).
    Data(Bytes),
    /// The source gives the session up (CRIU's stream was bad or went away).
    Abort { reason: String },
    /// An image file of `size` bytes follows as Data frames (sessions begun with files).
    File { name: String, size: u64 },
    /// Every file was sent: commit the session.
    Commit,
    /// The reply bytes owed to CRIU for OPEN2 / PARENT.
    Reply(Bytes),
    /// The session is durable as `DIR/session`; `reply` is the CLOSE reply owed to CRIU.
    Committed { session: u64, reply: Bytes },
    /// The destination failed the session; nothing of it was kept.
    Failed { reason: String },
}

impl RelayFrame {
    /// The frame's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            RelayFrame::Begin { .. } => "Begin",
            RelayFrame::Command(_) => "Command",
            RelayFrame::Data(_) => "Data",
            RelayFrame::Abort { .. } => "Abort",
            RelayFrame::File { .. } => "File",
            RelayFrame::Commit => "Commit",
            RelayFrame::Reply(_) => "Reply",
            RelayFrame::Committed { .. } => "Committed",
            RelayFrame::Failed { .. } => "Failed",
        }
    }
}

/// How a Data frame's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkEncoding {
    /// All zero; no payload.
    Zero,
    /// The bytes as they are.
    Raw,
    /// One LZ4 block.
    Lz4,
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A type byte the relay does not define.
    #[error("unknown relay frame type {ty:#04x}")]
    UnknownType { ty: u8 },
    /// A body length outside its frame's bounds.
    #[error("{frame} frame body of {len} bytes (allowed {min}..={max})")]
    BadLength { frame: &'static str, len: u64, min: u64, max: u64 },
    /// A body whose contents break the frame's rules.
    #[error("{frame} frame: {reason}")]
    BadBody { frame: &'static str, reason: String },
    /// A Command frame that is not a CRIU command.
    #[error("Command frame: {0}")]
    Command(#[from] ProtocolError),
    /// The stream ended inside a frame.
    #[error("the relay stream ended inside a frame ({got} of {need} bytes)")]
    Truncated { got: u64, need: u64 },
}

fn bad(frame: &'static str, reason: impl Into<String>) -> FrameError {
    FrameError::BadBody { frame, reason: reason.into() }
}

/// Builds frames; keeps LZ4's hash table and scratch buffer between Data frames.
pub struct FrameEncoder {
    lz4: bool,
    table: CompressTable,
    scratch: Vec<u8>,
}

impl FrameEncoder {
    /// An encoder; `lz4: false` sends page data raw (zero chunks are still elided).
    pub fn new(lz4: bool) -> FrameEncoder {
        FrameEncoder { lz4, table: CompressTable::large(), scratch: Vec::new() }
    }

    /// Appends `frame` to `out`; for Data returns the encoding chosen. Writes nothing on error.
    pub fn encode(&mut self, frame: &RelayFrame, out: &mut BytesMut) -> Result<Option<ChunkEncoding>, FrameError> {
        match frame {
            RelayFrame::Begin { version, page_size, flags } => {
                put_header(out, BEGIN, BEGIN_BODY);
                out.put_u32_le(*version);
                out.put_u64_le(*page_size);
                out.put_u32_le(*flags);
            }
            RelayFrame::Command(command) => {
                let raw = command.to_raw()?;
                put_header(out, COMMAND, COMMAND_BODY);
                out.put_u32_le(raw.cmd);
                out.put_u64_le(raw.nr_pages);
                out.put_u64_le(raw.vaddr);
                out.put_u64_le(raw.dst_id);
            }
            RelayFrame::Data(data) => return self.encode_data(data, out).map(Some),
            RelayFrame::Abort { reason } => put_reason(out, ABORT, "Abort", reason)?,
            RelayFrame::Failed { reason } => put_reason(out, FAILED, "Failed", reason)?,
            RelayFrame::File { name, size } => {
                if name.is_empty() || name.len() > MAX_FILE_NAME {
                    return Err(bad("File", format!("name of {} bytes (allowed 1..={MAX_FILE_NAME})", name.len())));
                }
                put_header(out, FILE, 8 + name.len());
                out.put_u64_le(*size);
                out.put_slice(name.as_bytes());
            }
            RelayFrame::Commit => put_header(out, COMMIT, 0),
            RelayFrame::Reply(reply) => {
                check_reply("Reply", reply.len())?;
                put_header(out, REPLY, reply.len());
                out.put_slice(reply);
            }
            RelayFrame::Committed { session, reply } => {
                if reply.len() > MAX_REPLY {
                    return Err(bad("Committed", format!("reply of {} bytes (at most {MAX_REPLY})", reply.len())));
                }
                put_header(out, COMMITTED, 8 + reply.len());
                out.put_u64_le(*session);
                out.put_slice(reply);
            }
        }
        Ok(None)
    }

    /// Appends a Data frame of `data` (1 ..= [`MAX_CHUNK`] bytes): zero marker, LZ4 when smaller,
    /// else raw.
    pub fn encode_data(&mut self, data: &[u8], out: &mut BytesMut) -> Result<ChunkEncoding, FrameError> {
        if data.is_empty() || data.len() > MAX_CHUNK {
            return Err(bad("Data", format!("{} bytes of page data (allowed 1..={MAX_CHUNK})", data.len())));
        }
        let len = data.len() as u32;
        if pagestream_engine::page::is_zero(data) {
            put_data(out, ChunkEncoding::Zero, len, &[]);
            return Ok(ChunkEncoding::Zero);
        }
        if self.lz4 {
            self.scratch.resize(get_maximum_output_size(data.len()), 0);
            if let Ok(n) = compress_into_with_table(data, &mut self.scratch, &mut self.table) {
                if n > 0 && n < data.len() {
                    put_data(out, ChunkEncoding::Lz4, len, &self.scratch[..n]);
                    return Ok(ChunkEncoding::Lz4);
                }
            }
        }
        put_data(out, ChunkEncoding::Raw, len, data);
        Ok(ChunkEncoding::Raw)
    }
}

fn put_header(out: &mut BytesMut, ty: u8, body_len: usize) {
    out.put_u8(ty);
    // Every body is bounded far below 4 GiB (MAX_CHUNK + DATA_HEAD at most).
    out.put_u32_le(body_len as u32);
}

fn put_data(out: &mut BytesMut, encoding: ChunkEncoding, len: u32, payload: &[u8]) {
    put_header(out, DATA, DATA_HEAD + payload.len());
    out.put_u8(match encoding {
        ChunkEncoding::Zero => 0,
        ChunkEncoding::Raw => 1,
        ChunkEncoding::Lz4 => 2,
    });
    out.put_u32_le(len);
    out.put_slice(payload);
}

fn put_reason(out: &mut BytesMut, ty: u8, frame: &'static str, reason: &str) -> Result<(), FrameError> {
    if reason.len() > MAX_REASON {
        return Err(bad(frame, format!("reason of {} bytes (at most {MAX_REASON})", reason.len())));
    }
    put_header(out, ty, reason.len());
    out.put_slice(reason.as_bytes());
    Ok(())
}

fn check_reply(frame: &'static str, len: usize) -> Result<(), FrameError> {
    if len == 0 || len > MAX_REPLY {
        return Err(bad(frame, format!("reply of {len} bytes (allowed 1..={MAX_REPLY})")));
    }
    Ok(())
}

/// `reason` cut to at most [`MAX_REASON`] bytes on a character boundary.
pub fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// `(name, min, max)` body length of a frame type.
fn limits(ty: u8) -> Option<(&'static str, usize, usize)> {
    Some(match ty {
        BEGIN => ("Begin", BEGIN_BODY, BEGIN_BODY),
        COMMAND => ("Command", COMMAND_BODY, COMMAND_BODY),
        DATA => ("Data", DATA_HEAD, DATA_HEAD + MAX_CHUNK),
        ABORT => ("Abort", 0, MAX_REASON),
        FILE => ("File", 9, 8 + MAX_FILE_NAME),
        COMMIT => ("Commit", 0, 0),
        FAILED => ("Failed", 0, MAX_REASON),
        REPLY => ("Reply", 1, MAX_REPLY),
        COMMITTED => ("Committed", 8, 8 + MAX_REPLY),
        _ => return None,
    })
}

/// Streaming decoder of relay frames (either direction). Poisoned by its first error.
#[derive(Debug, Clone, Default)]
pub struct FrameDecoder {
    sticky: Sticky<FrameError>,
    need: usize,
}

impl FrameDecoder {
    /// A fresh decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Takes the next complete frame from the front of `buf`; `Ok(None)`: more bytes needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RelayFrame>, FrameError> {
        let mut sticky = std::mem::take(&mut self.sticky);
        let result = sticky.decode(buf, |buf| self.step(buf));
        self.sticky = sticky;
        result
    }

    /// Call at the end of the stream: fails if it ended inside a frame (or the decoder failed).
    pub fn finish(&self) -> Result<(), FrameError> {
        let need = self.need.max(FRAME_HEADER_LEN) as u64;
        self.sticky.finish(|got| FrameError::Truncated { got: got as u64, need })
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<RelayFrame>, FrameError> {
        self.need = FRAME_HEADER_LEN;
        let Some(head) = buf.get(..FRAME_HEADER_LEN) else { return Ok(None) };
        let ty = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let (frame, min, max) = limits(ty).ok_or(FrameError::UnknownType { ty })?;
        if len < min || len > max {
            return Err(FrameError::BadLength { frame, len: len as u64, min: min as u64, max: max as u64 });
        }
        self.need = FRAME_HEADER_LEN + len;
        if buf.len() < self.need {
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let body = buf.split_to(len).freeze();
        parse_body(ty, frame, body).map(Some)
    }
}

fn parse_body(ty: u8, frame: &'static str, body: Bytes) -> Result<RelayFrame, FrameError> {
    let u32_at = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&body[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad(frame, "text is not UTF-8"));
    // Lengths were checked against `limits`, so the fixed offsets below are in bounds.
    Ok(match ty {
        BEGIN => RelayFrame::Begin { version: u32_at(0), page_size: u64_at(4), flags: u32_at(12) },
        COMMAND => {
            let raw = RawIov { cmd: u32_at(0), nr_pages: u64_at(4), vaddr: u64_at(12), dst_id: u64_at(20) };
            RelayFrame::Command(PsCommand::from_raw(&raw)?)
        }
        DATA => RelayFrame::Data(parse_data(&body)?),
        ABORT => RelayFrame::Abort { reason: text(&body)? },
        FILE => RelayFrame::File { size: u64_at(0), name: text(&body[8..])? },
        COMMIT => RelayFrame::Commit,
        FAILED => RelayFrame::Failed { reason: text(&body)? },
        REPLY => RelayFrame::Reply(body),
        _ => RelayFrame::Committed { session: u64_at(0), reply: body.slice(8..) },
    })
}

fn parse_data(body: &Bytes) -> Result<Bytes, FrameError> {
    let len = u32::from_le_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let payload = &body[DATA_HEAD..];
    if len == 0 || len > MAX_CHUNK {
        return Err(bad("Data", format!("chunk of {len} bytes (allowed 1..={MAX_CHUNK})")));
    }
    let wrong =
        |what: &str| Err(bad("Data", format!("{what} chunk of {len} bytes with {} bytes of payload", payload.len())));
    match body[0] {
        0 if payload.is_empty() => Ok(Bytes::from(vec![0u8; len])),
        0 => wrong("zero"),
        1 if payload.len() == len => Ok(body.slice(DATA_HEAD..)),
        1 => wrong("raw"),
        2 if !payload.is_empty() && payload.len() <= len => {
            let mut out = vec![0u8; len];
            match decompress_into(payload, &mut out) {
                Ok(got) if got == len => Ok(Bytes::from(out)),
                Ok(got) => Err(bad("Data", format!("LZ4 chunk decompressed to {got} bytes, not {len}"))),
                Err(e) => Err(bad("Data", format!("corrupt LZ4 chunk of {len} bytes: {e}"))),
            }
        }
        2 => wrong("LZ4"),
        e => Err(bad("Data", format!("unknown encoding {e}"))),
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
