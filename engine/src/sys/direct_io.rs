//! `O_DIRECT` on an open file: writes and reads that bypass the page cache (buffers, offsets and
//! lengths aligned to the file system's block size). On this kind of virtual machine
//! first-touching page-cache memory costs more than copying the data, so bulk image writes go
//! around it where the file system allows.

use std::fs::File;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// The shortest transfer worth making `O_DIRECT`: a direct transfer waits for the disk (~90 us
/// for a page here), so scattered pages are better written and read through the page cache.
pub const DIRECT_MIN_BYTES: usize = 64 << 10;

/// Turns `O_DIRECT` on or off for `file`'s open file description; `false` when refused.
pub fn set_direct(file: &File, on: bool) -> bool {
    let Ok(flags) = fcntl(file, FcntlArg::F_GETFL) else { return false };
    let mut flags = OFlag::from_bits_truncate(flags);
    flags.set(OFlag::O_DIRECT, on);
    fcntl(file, FcntlArg::F_SETFL(flags)).is_ok()
}

/// Whether `err` is the refusal of a direct transfer (a file system without `O_DIRECT`, or a
/// buffer, offset or length it finds misaligned): retry buffered.
pub fn refused(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(libc::EINVAL)
}

/// Writes all of `pieces`, one after the other, at `offset` of `file` (`pwritev`, continued
/// after short writes).
pub fn write_all_vectored_at(file: &File, pieces: &[std::io::IoSlice<'_>], mut offset: u64) -> std::io::Result<()> {
    let mut owned: Vec<std::io::IoSlice<'_>> = pieces.to_vec();
    let mut rest: &mut [std::io::IoSlice<'_>] = &mut owned;
    while !rest.is_empty() {
        let at = i64::try_from(offset).map_err(|_| std::io::Error::other("offset out of range"))?;
        let n = nix::sys::uio::pwritev(file, rest, at)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}
