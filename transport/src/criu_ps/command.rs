//! Commands (client → server): the CRIU constants, [`DstId`], [`PsCommand`] and
//! [`encode_command`].
//!
//! `cmd = (flags << 16) | command`; the flags are `PE_*` bits and mean something only for
//! ADD_F, so they are ignored when decoding any other command (as CRIU's server does).
//! `dst_id = (id << 8) | type` with type 1 (task, `pagemap-<id>.img`) or 2 (shmem,
//! `pagemap-shmem-<id>.img`), except for GET, whose `dst_id` is a raw pid. Fields a command does
//! not use (e.g. `vaddr` of OPEN2) are written as 0 and ignored when decoding.

use bytes::BufMut;
use pagestream_engine::criu::PageFlags;

use super::error::ProtocolError;
use super::header::{HeaderLayout, RawIov};
use super::reply::ReplyKind;

/// Legacy: pages with data; same as ADD_F with `PE_PRESENT`.
pub const PS_IOV_ADD: u32 = 1;
/// Legacy: pages in the parent; same as ADD_F with `PE_PARENT`.
pub const PS_IOV_HOLE: u32 = 2;
/// Legacy: open the image for `dst_id`, no reply.
pub const PS_IOV_OPEN: u32 = 3;
/// Open the image for `dst_id`; the reply is one byte `has_parent`.
pub const PS_IOV_OPEN2: u32 = 4;
/// Ask whether a parent pagemap exists for `dst_id`; the reply is a native `int`.
pub const PS_IOV_PARENT: u32 = 5;
/// Pages with `PE_*` flags in the high 16 bits of `cmd`; data follows only with `PE_PRESENT`.
pub const PS_IOV_ADD_F: u32 = 6;
/// Lazy-pages request for pages of a raw pid; the reply is an ADD_F header plus data.
pub const PS_IOV_GET: u32 = 7;
/// End of session; the reply is an `int32` status.
pub const PS_IOV_CLOSE: u32 = 0x1023;
/// End of session on an inherited socket (`--ps-socket`); replied to like CLOSE.
pub const PS_IOV_FORCE_CLOSE: u32 = 0x1024;

/// Bits of `cmd` below the flags.
pub const PS_CMD_BITS: u32 = 16;
/// Mask of the command in `cmd`.
pub const PS_CMD_MASK: u32 = 0xFFFF;
/// Bits of `dst_id` below the id.
pub const PS_TYPE_BITS: u32 = 8;
/// Mask of the type in `dst_id`.
pub const PS_TYPE_MASK: u64 = 0xFF;
/// `dst_id` type of a task pagemap.
pub const PS_TYPE_PID: u8 = 1;
/// `dst_id` type of a shmem pagemap.
pub const PS_TYPE_SHMEM: u8 = 2;

/// The command word of every GET reply: `PS_IOV_ADD_F | (PE_PRESENT << 16)`.
pub const GET_REPLY_CMD: u32 = PS_IOV_ADD_F | (PageFlags::PRESENT.bits() << PS_CMD_BITS);

/// The smallest page size a codec accepts; layout detection relies on page-aligned addresses
/// having a zero low byte. Real page sizes are 4 KiB and up.
pub const MIN_PAGE_SIZE: u64 = 256;

/// Checks that `page_size` is a power of two of at least [`MIN_PAGE_SIZE`].
pub fn check_page_size(page_size: u64) -> Result<u64, ProtocolError> {
    if page_size.is_power_of_two() && page_size >= MIN_PAGE_SIZE {
        Ok(page_size)
    } else {
        Err(ProtocolError::InvalidPageSize { page_size })
    }
}

/// Which kind of pagemap image a `dst_id` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PagemapKind {
    /// Task memory, `pagemap-<id>.img`, where `id` is the task's virtual pid.
    Task,
    /// Shared memory, `pagemap-shmem-<id>.img`; addresses are offsets in the object.
    Shmem,
}

/// The pagemap image a command is for: `dst_id = (id << 8) | type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DstId {
    /// Task or shmem.
    pub kind: PagemapKind,
    /// Virtual pid or shmem id; at most 56 bits.
    pub id: u64,
}

impl DstId {
    /// A task pagemap.
    pub const fn task(pid: u64) -> DstId {
        DstId { kind: PagemapKind::Task, id: pid }
    }

    /// A shmem pagemap.
    pub const fn shmem(id: u64) -> DstId {
        DstId { kind: PagemapKind::Shmem, id }
    }

    /// The wire value, with type 1 or 2. Fails if `id` needs more than 56 bits.
    pub fn to_raw(self) -> Result<u64, ProtocolError> {
        let ty = match self.kind {
            PagemapKind::Task => PS_TYPE_PID,
            PagemapKind::Shmem => PS_TYPE_SHMEM,
        };
        if self.id >> (64 - PS_TYPE_BITS) != 0 {
            return Err(ProtocolError::IdTooLarge { id: self.id });
        }
        Ok((self.id << PS_TYPE_BITS) | u64::from(ty))
    }

    /// Interprets a wire value, accepting the type numbers CRIU ≤ 3.2 used (`decode_pm()`):
    /// 10, 11, 16, 17 for tasks and 27, 28, 29, 32, 33, 34 for shmem. `command` names the
    /// carrying command in the error.
    pub fn from_raw(dst_id: u64, command: &'static str) -> Result<DstId, ProtocolError> {
        let ty = (dst_id & PS_TYPE_MASK) as u8;
        let kind = match ty {
            1 | 10 | 11 | 16 | 17 => PagemapKind::Task,
            2 | 27 | 28 | 29 | 32 | 33 | 34 => PagemapKind::Shmem,
            _ => return Err(ProtocolError::UnknownPagemapType { command, ty, dst_id }),
        };
        Ok(DstId { kind, id: dst_id >> PS_TYPE_BITS })
    }
}

/// One client → server command, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PsCommand {
    /// Legacy ADD: `nr_pages` pages of data follow (= ADD_F with `PE_PRESENT`).
    Add { dst: DstId, vaddr: u64, nr_pages: u64 },
    /// Legacy HOLE: pages in the parent, no data (= ADD_F with `PE_PARENT`).
    Hole { dst: DstId, vaddr: u64, nr_pages: u64 },
    /// Legacy OPEN: open the image, no reply.
    Open { dst: DstId },
    /// OPEN2: open the image; the server replies `has_parent`.
    Open2 { dst: DstId },
    /// PARENT: does a parent pagemap exist? The server replies with an int.
    Parent { dst: DstId },
    /// ADD_F: pages with flags; data follows only if `flags` has `PE_PRESENT`.
    AddF { dst: DstId, vaddr: u64, nr_pages: u64, flags: PageFlags },
    /// GET (lazy pages): the server replies with up to `nr_pages` pages at `vaddr` of `pid`.
    Get { pid: u64, vaddr: u64, nr_pages: u64 },
    /// End of session; the server replies with a status.
    Close,
    /// End of session on an inherited socket; replied to like CLOSE.
    ForceClose,
}

impl PsCommand {
    /// CRIU's name for the command without the `PS_IOV_` prefix, e.g. `"ADD_F"`.
    pub const fn name(&self) -> &'static str {
        match self {
            PsCommand::Add { .. } => "ADD",
            PsCommand::Hole { .. } => "HOLE",
            PsCommand::Open { .. } => "OPEN",
            PsCommand::Open2 { .. } => "OPEN2",
            PsCommand::Parent { .. } => "PARENT",
            PsCommand::AddF { .. } => "ADD_F",
            PsCommand::Get { .. } => "GET",
            PsCommand::Close => "CLOSE",
            PsCommand::ForceClose => "FORCE_CLOSE",
        }
    }

    /// The flags CRIU's server files the pages under: `PE_PRESENT` for ADD, `PE_PARENT` for
    /// HOLE, the carried flags for ADD_F, `None` for commands that add no pagemap entry.
    pub const fn entry_flags(&self) -> Option<PageFlags> {
        match self {
            PsCommand::Add { .. } => Some(PageFlags::PRESENT),
            PsCommand::Hole { .. } => Some(PageFlags::PARENT),
            PsCommand::AddF { flags, .. } => Some(*flags),
            _ => None,
        }
    }

    /// `(vaddr, nr_pages)` for the commands that carry a page range (ADD, HOLE, ADD_F, GET).
    pub const fn range(&self) -> Option<(u64, u64)> {
        match *self {
            PsCommand::Add { vaddr, nr_pages, .. }
            | PsCommand::Hole { vaddr, nr_pages, .. }
            | PsCommand::AddF { vaddr, nr_pages, .. }
            | PsCommand::Get { vaddr, nr_pages, .. } => Some((vaddr, nr_pages)),
            _ => None,
        }
    }

    /// Bytes of page data that follow the header: `nr_pages * page_size` for ADD and for ADD_F
    /// with `PE_PRESENT`, otherwise 0. Fails if the product overflows a `u64`.
    pub fn payload_len(&self, page_size: u64) -> Result<u64, ProtocolError> {
        let nr_pages = match *self {
            PsCommand::Add { nr_pages, .. } => nr_pages,
            PsCommand::AddF { nr_pages, flags, .. } if flags.is_present() => nr_pages,
            _ => return Ok(0),
        };
        nr_pages.checked_mul(page_size).ok_or(ProtocolError::PagesOverflow {
            command: self.name(),
            nr_pages,
            page_size,
        })
    }

    /// Checks that the command's range, if any, is `nr_pages * page_size` bytes that fit in a
    /// `u64` and do not wrap past `u64::MAX` when added to `vaddr`.
    pub fn check_range(&self, page_size: u64) -> Result<(), ProtocolError> {
        let Some((vaddr, nr_pages)) = self.range() else {
            return Ok(());
        };
        let command = self.name();
        let len =
            nr_pages.checked_mul(page_size).ok_or(ProtocolError::PagesOverflow { command, nr_pages, page_size })?;
        vaddr.checked_add(len).map(|_| ()).ok_or(ProtocolError::RangeWraps { command, vaddr, nr_pages, page_size })
    }

    /// The reply the server owes for this command, if any.
    pub const fn expected_reply(&self) -> Option<ReplyKind> {
        match *self {
            PsCommand::Open2 { .. } => Some(ReplyKind::Open2),
            PsCommand::Parent { .. } => Some(ReplyKind::Parent),
            PsCommand::Close | PsCommand::ForceClose => Some(ReplyKind::Close),
            PsCommand::Get { pid, vaddr, nr_pages } => Some(ReplyKind::Get { pid, vaddr, nr_pages }),
            PsCommand::Add { .. } | PsCommand::Hole { .. } | PsCommand::Open { .. } | PsCommand::AddF { .. } => None,
        }
    }

    /// The header fields. Fails if a `dst` id needs more than 56 bits or ADD_F flags more than
    /// 16 bits.
    pub fn to_raw(&self) -> Result<RawIov, ProtocolError> {
        let plain = |cmd: u32, dst: DstId, vaddr: u64, nr_pages: u64| -> Result<RawIov, ProtocolError> {
            Ok(RawIov { cmd, nr_pages, vaddr, dst_id: dst.to_raw()? })
        };
        match *self {
            PsCommand::Add { dst, vaddr, nr_pages } => plain(PS_IOV_ADD, dst, vaddr, nr_pages),
            PsCommand::Hole { dst, vaddr, nr_pages } => plain(PS_IOV_HOLE, dst, vaddr, nr_pages),
            PsCommand::Open { dst } => plain(PS_IOV_OPEN, dst, 0, 0),
            PsCommand::Open2 { dst } => plain(PS_IOV_OPEN2, dst, 0, 0),
            PsCommand::Parent { dst } => plain(PS_IOV_PARENT, dst, 0, 0),
            PsCommand::AddF { dst, vaddr, nr_pages, flags } => {
                if flags.bits() > PS_CMD_MASK {
                    return Err(ProtocolError::FlagsTooWide { flags: flags.bits() });
                }
                plain(PS_IOV_ADD_F | (flags.bits() << PS_CMD_BITS), dst, vaddr, nr_pages)
            }
            PsCommand::Get { pid, vaddr, nr_pages } => Ok(RawIov { cmd: PS_IOV_GET, nr_pages, vaddr, dst_id: pid }),
            PsCommand::Close => Ok(RawIov { cmd: PS_IOV_CLOSE, ..RawIov::default() }),
            PsCommand::ForceClose => Ok(RawIov { cmd: PS_IOV_FORCE_CLOSE, ..RawIov::default() }),
        }
    }

    /// Interprets header fields. Fails on an unknown command or pagemap type. Does not check
    /// ranges or limits; see [`PsCommand::check_range`].
    pub fn from_raw(raw: &RawIov) -> Result<PsCommand, ProtocolError> {
        let RawIov { cmd, nr_pages, vaddr, dst_id } = *raw;
        let command = cmd & PS_CMD_MASK;
        let dst = |name| DstId::from_raw(dst_id, name);
        Ok(match command {
            PS_IOV_ADD => PsCommand::Add { dst: dst("ADD")?, vaddr, nr_pages },
            PS_IOV_HOLE => PsCommand::Hole { dst: dst("HOLE")?, vaddr, nr_pages },
            PS_IOV_OPEN => PsCommand::Open { dst: dst("OPEN")? },
            PS_IOV_OPEN2 => PsCommand::Open2 { dst: dst("OPEN2")? },
            PS_IOV_PARENT => PsCommand::Parent { dst: dst("PARENT")? },
            PS_IOV_ADD_F => {
                PsCommand::AddF { dst: dst("ADD_F")?, vaddr, nr_pages, flags: PageFlags(cmd >> PS_CMD_BITS) }
            }
            PS_IOV_GET => PsCommand::Get { pid: dst_id, vaddr, nr_pages },
            PS_IOV_CLOSE => PsCommand::Close,
            PS_IOV_FORCE_CLOSE => PsCommand::ForceClose,
            _ => return Err(ProtocolError::UnknownCommand { command, cmd }),
        })
    }
}

/// Appends the header of `command` in `layout` to `out`; the caller sends the page data (if
/// [`PsCommand::payload_len`] is non-zero) right after it. Writes nothing on error.
pub fn encode_command<B: BufMut>(command: &PsCommand, layout: HeaderLayout, out: &mut B) -> Result<(), ProtocolError> {
    command.to_raw()?.encode(layout, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dst_id_encoding() {
        assert_eq!(DstId::task(1234).to_raw(), Ok(0x4D201));
        assert_eq!(DstId::shmem(1234).to_raw(), Ok(0x4D202));
        assert_eq!(DstId::from_raw(0x4D201, "OPEN2"), Ok(DstId::task(1234)));
        assert_eq!(DstId::from_raw(0x4D202, "OPEN2"), Ok(DstId::shmem(1234)));
        let max = (1u64 << 56) - 1;
        assert_eq!(DstId::from_raw(DstId::task(max).to_raw().unwrap(), "ADD"), Ok(DstId::task(max)));
        assert_eq!(DstId::task(1 << 56).to_raw(), Err(ProtocolError::IdTooLarge { id: 1 << 56 }));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn dst_id_wire_bytes_for_pid_1234() {
        let mut out = Vec::new();
        encode_command(&PsCommand::Open2 { dst: DstId::task(1234) }, HeaderLayout::Legacy24, &mut out).unwrap();
        assert_eq!(out[16..24], [0x01, 0xD2, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn legacy_pagemap_types() {
        for ty in [1u64, 10, 11, 16, 17] {
            assert_eq!(DstId::from_raw((7 << 8) | ty, "ADD"), Ok(DstId::task(7)), "type {ty}");
        }
        for ty in [2u64, 27, 28, 29, 32, 33, 34] {
            assert_eq!(DstId::from_raw((7 << 8) | ty, "ADD"), Ok(DstId::shmem(7)), "type {ty}");
        }
        let accepted = [1u64, 2, 10, 11, 16, 17, 27, 28, 29, 32, 33, 34];
        for ty in (0u64..=255).filter(|t| !accepted.contains(t)) {
            assert!(DstId::from_raw((7 << 8) | ty, "ADD").is_err(), "type {ty}");
        }
        let err = DstId::from_raw(0x4D209, "ADD_F").unwrap_err();
        assert_eq!(err.to_string(), "unknown pagemap type 9 in dst_id 0x4d209 of ADD_F");
    }

    #[test]
    fn command_words() {
        let dst = DstId::task(1);
        let add_f = PsCommand::AddF { dst, vaddr: 0x1000, nr_pages: 1, flags: PageFlags::PRESENT | PageFlags::LAZY };
        assert_eq!(add_f.to_raw().unwrap().cmd, 0x0006_0006);
        assert_eq!(GET_REPLY_CMD, 0x0004_0006);
        assert_eq!(PsCommand::Close.to_raw().unwrap().cmd, 0x1023);
        assert_eq!(PsCommand::ForceClose.to_raw().unwrap().cmd, 0x1024);
        let get = PsCommand::Get { pid: 1234, vaddr: 0x1000, nr_pages: 16 };
        assert_eq!(get.to_raw().unwrap(), RawIov { cmd: 7, nr_pages: 16, vaddr: 0x1000, dst_id: 1234 });
        let wide = PsCommand::AddF { dst, vaddr: 0, nr_pages: 1, flags: PageFlags(0x1_0000) };
        assert_eq!(wide.to_raw(), Err(ProtocolError::FlagsTooWide { flags: 0x1_0000 }));
    }

    #[test]
    fn flags_ignored_except_for_add_f() {
        let raw = RawIov { cmd: 0x0004_0004, nr_pages: 9, vaddr: 0x5000, dst_id: 0x4D201 };
        assert_eq!(PsCommand::from_raw(&raw), Ok(PsCommand::Open2 { dst: DstId::task(1234) }));
        let raw = RawIov { cmd: 0x0005_0006, ..raw };
        assert_eq!(
            PsCommand::from_raw(&raw),
            Ok(PsCommand::AddF { dst: DstId::task(1234), vaddr: 0x5000, nr_pages: 9, flags: PageFlags(5) })
        );
        let raw = RawIov { cmd: 0x0001_1023, ..raw };
        assert_eq!(PsCommand::from_raw(&raw), Ok(PsCommand::Close));
    }

    #[test]
    fn unknown_commands() {
        for cmd in [0u32, 8, 0x77, 0x1022, 0x1025, 0x0004_0077] {
            let raw = RawIov { cmd, dst_id: 0x101, ..RawIov::default() };
            let err = PsCommand::from_raw(&raw).unwrap_err();
            assert_eq!(err, ProtocolError::UnknownCommand { command: cmd & 0xFFFF, cmd });
        }
        let raw = RawIov { cmd: 0x77, ..RawIov::default() };
        assert_eq!(
            PsCommand::from_raw(&raw).unwrap_err().to_string(),
            "unknown page-server command 0x77 (command word 0x00000077)"
        );
    }

    #[test]
    fn payload_lengths() {
        let dst = DstId::task(1);
        let ps = 4096;
        assert_eq!(PsCommand::Add { dst, vaddr: 0, nr_pages: 3 }.payload_len(ps), Ok(3 * 4096));
        assert_eq!(PsCommand::Hole { dst, vaddr: 0, nr_pages: 3 }.payload_len(ps), Ok(0));
        for (flags, len) in [(0, 0), (1, 0), (2, 0), (4, 8192), (6, 8192), (7, 8192), (0x14, 8192)] {
            let cmd = PsCommand::AddF { dst, vaddr: 0, nr_pages: 2, flags: PageFlags(flags) };
            assert_eq!(cmd.payload_len(ps), Ok(len), "flags {flags:#x}");
        }
        assert_eq!(PsCommand::Get { pid: 1, vaddr: 0x1000, nr_pages: 2 }.payload_len(ps), Ok(0));
        assert_eq!(PsCommand::Close.payload_len(ps), Ok(0));
        let huge = PsCommand::AddF { dst, vaddr: 0, nr_pages: u64::MAX, flags: PageFlags::PRESENT };
        assert_eq!(
            huge.payload_len(ps).unwrap_err().to_string(),
            "ADD_F nr_pages 18446744073709551615 * page size 4096 overflows"
        );
        let lazy = PsCommand::AddF { dst, vaddr: 0, nr_pages: u64::MAX, flags: PageFlags::LAZY };
        assert_eq!(lazy.payload_len(ps), Ok(0));
        assert!(matches!(lazy.check_range(ps), Err(ProtocolError::PagesOverflow { .. })));
    }

    #[test]
    fn range_checks() {
        let dst = DstId::task(1);
        let top = u64::MAX - 4095;
        assert_eq!(PsCommand::Hole { dst, vaddr: top - 4096, nr_pages: 1 }.check_range(4096), Ok(()));
        let wraps = PsCommand::Hole { dst, vaddr: top, nr_pages: 1 };
        assert_eq!(
            wraps.check_range(4096),
            Err(ProtocolError::RangeWraps { command: "HOLE", vaddr: top, nr_pages: 1, page_size: 4096 })
        );
        assert_eq!(PsCommand::Open2 { dst }.check_range(4096), Ok(()));
    }

    #[test]
    fn entry_flags_and_replies() {
        let dst = DstId::task(1);
        assert_eq!(PsCommand::Add { dst, vaddr: 0, nr_pages: 1 }.entry_flags(), Some(PageFlags::PRESENT));
        assert_eq!(PsCommand::Hole { dst, vaddr: 0, nr_pages: 1 }.entry_flags(), Some(PageFlags::PARENT));
        assert_eq!(PsCommand::Open2 { dst }.entry_flags(), None);
        assert_eq!(PsCommand::Open2 { dst }.expected_reply(), Some(ReplyKind::Open2));
        assert_eq!(PsCommand::Parent { dst }.expected_reply(), Some(ReplyKind::Parent));
        assert_eq!(PsCommand::ForceClose.expected_reply(), Some(ReplyKind::Close));
        assert_eq!(PsCommand::Open { dst }.expected_reply(), None);
        assert_eq!(
            PsCommand::Get { pid: 5, vaddr: 0x2000, nr_pages: 3 }.expected_reply(),
            Some(ReplyKind::Get { pid: 5, vaddr: 0x2000, nr_pages: 3 })
        );
    }

    #[test]
    fn page_sizes() {
        assert_eq!(check_page_size(4096), Ok(4096));
        assert_eq!(check_page_size(65536), Ok(65536));
        for bad in [0, 1, 128, 4095, 6144] {
            assert_eq!(check_page_size(bad), Err(ProtocolError::InvalidPageSize { page_size: bad }));
        }
    }
}
