//! Replies (server → client): [`Reply`], [`ReplyKind`] and [`encode_reply`].
//!
//! Replies are not self-describing; which one comes next follows from the commands sent
//! ([`PsCommand::expected_reply`](super::PsCommand::expected_reply)), in order:
//!
//! | Command | Reply on the wire |
//! |---|---|
//! | OPEN2 | 1 byte `has_parent`, 0 or 1 |
//! | PARENT | native `int`, 1 if a parent pagemap exists, else 0 |
//! | CLOSE, FORCE_CLOSE | native `int32` status (CRIU sends 0) |
//! | GET | header with `cmd = 0x00040006`, `nr_pages = k` (1 ≤ k ≤ requested), the requested `vaddr`, `dst_id` = the requested pid; then `k * page_size` bytes |
//! | others | none |

use bytes::BufMut;

use super::command::{PsCommand, GET_REPLY_CMD};
use super::error::ProtocolError;
use super::header::{HeaderLayout, RawIov};

/// A reply from the page server. For [`Reply::Get`] this is only the header; `nr_pages *
/// page_size` bytes of page data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// Answer to OPEN2: whether a parent pagemap exists.
    Open2 { has_parent: bool },
    /// Answer to PARENT: whether a parent pagemap exists.
    Parent { has_parent: bool },
    /// Answer to CLOSE or FORCE_CLOSE: 0 on success.
    Close { status: i32 },
    /// Answer to GET: `nr_pages` pages of `pid` at `vaddr` follow.
    Get { pid: u64, vaddr: u64, nr_pages: u64 },
}

/// Which reply a client waits for, with the request's fields for GET (used to validate the
/// reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// The 1-byte OPEN2 answer.
    Open2,
    /// The 4-byte PARENT answer.
    Parent,
    /// The 4-byte CLOSE / FORCE_CLOSE status.
    Close,
    /// A GET answer for this request.
    Get { pid: u64, vaddr: u64, nr_pages: u64 },
}

impl ReplyKind {
    /// CRIU's name of the command this answers.
    pub const fn name(&self) -> &'static str {
        match self {
            ReplyKind::Open2 => "OPEN2",
            ReplyKind::Parent => "PARENT",
            ReplyKind::Close => "CLOSE",
            ReplyKind::Get { .. } => "GET",
        }
    }
}

impl Reply {
    /// CRIU's name of the command this answers.
    pub const fn name(&self) -> &'static str {
        match self {
            Reply::Open2 { .. } => "OPEN2",
            Reply::Parent { .. } => "PARENT",
            Reply::Close { .. } => "CLOSE",
            Reply::Get { .. } => "GET",
        }
    }

    /// Bytes of page data that follow the reply: `nr_pages * page_size` for GET, else 0.
    pub fn payload_len(&self, page_size: u64) -> Result<u64, ProtocolError> {
        match *self {
            Reply::Get { nr_pages, .. } => nr_pages.checked_mul(page_size).ok_or(ProtocolError::PagesOverflow {
                command: "GET reply",
                nr_pages,
                page_size,
            }),
            _ => Ok(0),
        }
    }
}

/// Appends `reply` to `out`; for GET the caller sends the page data right after it.
///
/// Refuses (writing nothing) a GET reply with 0 pages, whose pages overflow `u64` or wrap past
/// the end of the address space, or whose count does not fit `layout`. `page_size` must be the
/// session's page size; it is used only for these checks.
pub fn encode_reply<B: BufMut>(
    reply: &Reply,
    layout: HeaderLayout,
    page_size: u64,
    out: &mut B,
) -> Result<(), ProtocolError> {
    match *reply {
        Reply::Open2 { has_parent } => out.put_u8(u8::from(has_parent)),
        Reply::Parent { has_parent } => out.put_i32_ne(i32::from(has_parent)),
        Reply::Close { status } => out.put_i32_ne(status),
        Reply::Get { pid, vaddr, nr_pages } => {
            if nr_pages == 0 {
                return Err(ProtocolError::EmptyGetReply);
            }
            PsCommand::Get { pid, vaddr, nr_pages }.check_range(page_size)?;
            RawIov { cmd: GET_REPLY_CMD, nr_pages, vaddr, dst_id: pid }.encode(layout, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn encoded(reply: Reply, layout: HeaderLayout) -> Result<Vec<u8>, ProtocolError> {
        let mut out = BytesMut::new();
        encode_reply(&reply, layout, 4096, &mut out)?;
        Ok(out.to_vec())
    }

    #[test]
    fn fixed_size_replies() {
        let l = HeaderLayout::Wide32;
        assert_eq!(encoded(Reply::Open2 { has_parent: true }, l).unwrap(), [1]);
        assert_eq!(encoded(Reply::Open2 { has_parent: false }, l).unwrap(), [0]);
        assert_eq!(encoded(Reply::Parent { has_parent: true }, l).unwrap(), 1i32.to_ne_bytes());
        assert_eq!(encoded(Reply::Parent { has_parent: false }, l).unwrap(), 0i32.to_ne_bytes());
        assert_eq!(encoded(Reply::Close { status: 0 }, l).unwrap(), [0; 4]);
        assert_eq!(encoded(Reply::Close { status: -5 }, l).unwrap(), (-5i32).to_ne_bytes());
    }

    #[test]
    fn get_reply_header() {
        let reply = Reply::Get { pid: 1234, vaddr: 0x7f00_0000_2000, nr_pages: 3 };
        for layout in [HeaderLayout::Legacy24, HeaderLayout::Wide32] {
            let bytes = encoded(reply, layout).unwrap();
            assert_eq!(bytes.len(), layout.len());
            let raw = RawIov::decode(layout, &bytes).unwrap();
            assert_eq!(raw, RawIov { cmd: 0x0004_0006, nr_pages: 3, vaddr: 0x7f00_0000_2000, dst_id: 1234 });
        }
        assert_eq!(reply.payload_len(4096), Ok(3 * 4096));
        assert_eq!(Reply::Close { status: 0 }.payload_len(4096), Ok(0));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn get_reply_command_word_bytes() {
        let bytes = encoded(Reply::Get { pid: 1, vaddr: 0x1000, nr_pages: 1 }, HeaderLayout::Legacy24).unwrap();
        assert_eq!(bytes[..4], [0x06, 0x00, 0x04, 0x00]);
    }

    #[test]
    fn refuses_bad_get_replies() {
        let get = |nr_pages, vaddr| Reply::Get { pid: 1, vaddr, nr_pages };
        assert_eq!(encoded(get(0, 0x1000), HeaderLayout::Wide32), Err(ProtocolError::EmptyGetReply));
        assert!(matches!(
            encoded(get(1 << 32, 0x1000), HeaderLayout::Legacy24),
            Err(ProtocolError::CountTooLargeForLayout { .. })
        ));
        assert!(encoded(get(1 << 32, 0x1000), HeaderLayout::Wide32).is_ok());
        assert!(matches!(
            encoded(get(u64::MAX, 0x1000), HeaderLayout::Wide32),
            Err(ProtocolError::PagesOverflow { .. })
        ));
        assert!(matches!(
            encoded(get(2, u64::MAX - 4095), HeaderLayout::Wide32),
            Err(ProtocolError::RangeWraps { .. })
        ));
    }
}
