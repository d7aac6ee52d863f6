//! The fixed-size header, `struct page_server_iov`, in its two layouts.
//!
//! CRIU sends the header as raw memory, so every field is in the **host's native byte order**
//! and this module reads and writes it with `from_ne_bytes`/`to_ne_bytes`. Both ends of a
//! session must therefore have the same endianness (CRIU does not support anything else either);
//! on x86_64, aarch64 and riscv64 that means little-endian.
//!
//! | Layout | CRIU | Bytes | Fields |
//! |---|---|---|---|
//! | [`HeaderLayout::Legacy24`] | ≤ 4.1.1 | 24 | `u32 cmd, u32 nr_pages, u64 vaddr, u64 dst_id` |
//! | [`HeaderLayout::Wide32`] | ≥ 4.2 | 32 | `u32 cmd, 4 bytes padding, u64 nr_pages, u64 vaddr, u64 dst_id` |
//!
//! The Wide32 padding is written as zeros and ignored on read. [`detect_layout`] guesses the
//! layout from the first 24 bytes of a client's first header.

use bytes::BufMut;

use super::command::{
    PS_CMD_MASK, PS_IOV_ADD, PS_IOV_ADD_F, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_GET, PS_IOV_HOLE, PS_IOV_OPEN,
    PS_IOV_OPEN2, PS_IOV_PARENT,
};
use super::error::ProtocolError;

/// Which `struct page_server_iov` the peer uses. There is no negotiation on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderLayout {
    /// CRIU ≤ 4.1.1: 24 bytes with a 32-bit page count.
    Legacy24,
    /// CRIU ≥ 4.2: 32 bytes with a 64-bit page count (after 4 bytes of padding).
    Wide32,
}

impl HeaderLayout {
    /// Size of the header in bytes.
    #[allow(clippy::len_without_is_empty)] // a header is never empty
    pub const fn len(self) -> usize {
        match self {
            HeaderLayout::Legacy24 => 24,
            HeaderLayout::Wide32 => 32,
        }
    }

    /// The largest page count this layout can carry.
    pub const fn max_nr_pages(self) -> u64 {
        match self {
            HeaderLayout::Legacy24 => u32::MAX as u64,
            HeaderLayout::Wide32 => u64::MAX,
        }
    }
}

/// The number of bytes [`detect_layout`] needs: the size of the smaller header.
pub const DETECT_LEN: usize = HeaderLayout::Legacy24.len();

/// The header's fields as numbers, before `cmd` and `dst_id` are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RawIov {
    /// `(flags << 16) | command`.
    pub cmd: u32,
    /// Page count (32-bit on the wire in [`HeaderLayout::Legacy24`]).
    pub nr_pages: u64,
    /// Start address (task memory) or byte offset (shmem).
    pub vaddr: u64,
    /// `(id << 8) | type`, or a raw pid for GET.
    pub dst_id: u64,
}

impl RawIov {
    /// Appends the header in `layout` to `out`.
    ///
    /// Fails, writing nothing, if `layout` is [`HeaderLayout::Legacy24`] and `nr_pages` does not
    /// fit in 32 bits.
    pub fn encode<B: BufMut>(&self, layout: HeaderLayout, out: &mut B) -> Result<(), ProtocolError> {
        match layout {
            HeaderLayout::Legacy24 => {
                let nr_pages = u32::try_from(self.nr_pages).map_err(|_| ProtocolError::CountTooLargeForLayout {
                    command: command_name(self.cmd),
                    nr_pages: self.nr_pages,
                })?;
                out.put_u32_ne(self.cmd);
                out.put_u32_ne(nr_pages);
            }
            HeaderLayout::Wide32 => {
                out.put_u32_ne(self.cmd);
                out.put_u32_ne(0);
                out.put_u64_ne(self.nr_pages);
            }
        }
        out.put_u64_ne(self.vaddr);
        out.put_u64_ne(self.dst_id);
        Ok(())
    }

    /// Reads a header in `layout` from the start of `bytes`.
    ///
    /// Returns `None` if `bytes` is shorter than [`HeaderLayout::len`]; extra bytes are ignored.
    pub fn decode(layout: HeaderLayout, bytes: &[u8]) -> Option<RawIov> {
        let hdr = bytes.get(..layout.len())?;
        let cmd = read_u32(hdr, 0)?;
        match layout {
            HeaderLayout::Legacy24 => Some(RawIov {
                cmd,
                nr_pages: u64::from(read_u32(hdr, 4)?),
                vaddr: read_u64(hdr, 8)?,
                dst_id: read_u64(hdr, 16)?,
            }),
            HeaderLayout::Wide32 => {
                Some(RawIov { cmd, nr_pages: read_u64(hdr, 8)?, vaddr: read_u64(hdr, 16)?, dst_id: read_u64(hdr, 24)? })
            }
        }
    }
}

/// Guesses the layout of a client's **first** header from its first [`DETECT_LEN`] bytes.
///
/// Returns `Ok(None)` if fewer than [`DETECT_LEN`] bytes are given. The rules (a heuristic; CRIU
/// itself has no detection):
///
/// * ADD, HOLE, OPEN, OPEN2, PARENT, ADD_F carry a typed `dst_id`. Bytes 16..24 hold `dst_id` in
///   Legacy24, whose low 8 bits are a non-zero type, and `vaddr` in Wide32, which is page-aligned
///   (0 for OPEN/OPEN2/PARENT), so its low 8 bits are 0. Low 8 bits 0 → Wide32, else Legacy24.
/// * GET: bytes 8..16 hold `nr_pages` in Wide32 (CRIU asks for at most 1024) and a page-aligned
///   `vaddr ≥ page_size` in Legacy24. A value below `page_size` → Wide32, else Legacy24.
/// * CLOSE / FORCE_CLOSE first (an empty session): Legacy24. If the client really sent a
///   32-byte CLOSE, its last 8 bytes are left over; the session ends at CLOSE anyway, and
///   [`CommandDecoder`](super::CommandDecoder) discards exactly those 8 bytes.
/// * Any other command: [`ProtocolError::UnknownCommand`].
///
/// The fields are compared as native-endian numbers, so "low 8 bits" is meant numerically.
pub fn detect_layout(first: &[u8], page_size: u64) -> Result<Option<HeaderLayout>, ProtocolError> {
    let (Some(cmd), Some(at8), Some(at16)) = (read_u32(first, 0), read_u64(first, 8), read_u64(first, 16)) else {
        return Ok(None);
    };
    let layout = match cmd & PS_CMD_MASK {
        PS_IOV_ADD | PS_IOV_HOLE | PS_IOV_OPEN | PS_IOV_OPEN2 | PS_IOV_PARENT | PS_IOV_ADD_F => {
            if at16 & 0xFF == 0 {
                HeaderLayout::Wide32
            } else {
                HeaderLayout::Legacy24
            }
        }
        PS_IOV_GET => {
            if at8 < page_size {
                HeaderLayout::Wide32
            } else {
                HeaderLayout::Legacy24
            }
        }
        PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => HeaderLayout::Legacy24,
        command => return Err(ProtocolError::UnknownCommand { command, cmd }),
    };
    Ok(Some(layout))
}

/// The CRIU name of the command in the low 16 bits of `cmd`, or `"unknown command"`.
pub(crate) fn command_name(cmd: u32) -> &'static str {
    match cmd & PS_CMD_MASK {
        PS_IOV_ADD => "ADD",
        PS_IOV_HOLE => "HOLE",
        PS_IOV_OPEN => "OPEN",
        PS_IOV_OPEN2 => "OPEN2",
        PS_IOV_PARENT => "PARENT",
        PS_IOV_ADD_F => "ADD_F",
        PS_IOV_GET => "GET",
        PS_IOV_CLOSE => "CLOSE",
        PS_IOV_FORCE_CLOSE => "FORCE_CLOSE",
        _ => "unknown command",
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_ne_bytes(raw))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_ne_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RawIov {
        RawIov { cmd: 0x0006_0006, nr_pages: 3, vaddr: 0x7f00_0000_1000, dst_id: 0x4D201 }
    }

    #[test]
    fn header_sizes() {
        assert_eq!(HeaderLayout::Legacy24.len(), 24);
        assert_eq!(HeaderLayout::Wide32.len(), 32);
        for layout in [HeaderLayout::Legacy24, HeaderLayout::Wide32] {
            let mut out = Vec::new();
            sample().encode(layout, &mut out).unwrap();
            assert_eq!(out.len(), layout.len());
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn exact_bytes_little_endian() {
        let mut legacy = Vec::new();
        sample().encode(HeaderLayout::Legacy24, &mut legacy).unwrap();
        assert_eq!(
            legacy,
            [
                0x06, 0x00, 0x06, 0x00, 0x03, 0x00, 0x00, 0x00, // cmd, nr_pages
                0x00, 0x10, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, // vaddr
                0x01, 0xD2, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, // dst_id
            ]
        );
        let mut wide = Vec::new();
        sample().encode(HeaderLayout::Wide32, &mut wide).unwrap();
        assert_eq!(
            wide,
            [
                0x06, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, // cmd, padding
                0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // nr_pages
                0x00, 0x10, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00, // vaddr
                0x01, 0xD2, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, // dst_id
            ]
        );
    }

    #[test]
    fn decode_round_trips_and_ignores_padding() {
        for layout in [HeaderLayout::Legacy24, HeaderLayout::Wide32] {
            let mut out = Vec::new();
            sample().encode(layout, &mut out).unwrap();
            if layout == HeaderLayout::Wide32 {
                out[4..8].copy_from_slice(&[0xAA; 4]);
            }
            out.extend_from_slice(&[0xEE; 5]);
            assert_eq!(RawIov::decode(layout, &out), Some(sample()));
            assert_eq!(RawIov::decode(layout, &out[..layout.len() - 1]), None);
        }
    }

    #[test]
    fn legacy_refuses_wide_counts() {
        let iov = RawIov { nr_pages: u64::from(u32::MAX) + 1, ..sample() };
        let mut out = Vec::new();
        let err = iov.encode(HeaderLayout::Legacy24, &mut out).unwrap_err();
        assert_eq!(err.to_string(), "ADD_F nr_pages 4294967296 does not fit the 32-bit count of the 24-byte header");
        assert!(out.is_empty(), "nothing written on error");
        let max = RawIov { nr_pages: u64::from(u32::MAX), ..sample() };
        max.encode(HeaderLayout::Legacy24, &mut out).unwrap();
        assert_eq!(RawIov::decode(HeaderLayout::Legacy24, &out), Some(max));
    }

    #[test]
    fn detection_needs_24_bytes() {
        let mut out = Vec::new();
        sample().encode(HeaderLayout::Legacy24, &mut out).unwrap();
        assert_eq!(detect_layout(&out[..23], 4096), Ok(None));
        assert_eq!(detect_layout(&out, 4096), Ok(Some(HeaderLayout::Legacy24)));
    }

    #[test]
    fn detection_rejects_unknown_first_command() {
        let mut out = Vec::new();
        RawIov { cmd: 0x77, ..sample() }.encode(HeaderLayout::Wide32, &mut out).unwrap();
        let err = detect_layout(&out, 4096).unwrap_err();
        assert_eq!(err.to_string(), "unknown page-server command 0x77 (command word 0x00000077)");
    }
}
