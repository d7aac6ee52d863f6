//! userfaultfd write-protect ioctls (`include/uapi/linux/userfaultfd.h`) for async uffd-wp dirty
//! tracking: `UFFDIO_API` with `WP_ASYNC | WP_UNPOPULATED`, `UFFDIO_REGISTER` in WP mode and
//! `UFFDIO_WRITEPROTECT`. (MISSING/COPY for lazy restore use the `userfaultfd` crate.)

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

pub const UFFD_API: u64 = 0xAA;
pub const UFFD_USER_MODE_ONLY: u64 = 1;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

const UFFDIO_API: u64 = 0xC018_AA3F;
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFDIO_UNREGISTER: u64 = 0x8010_AA01;
const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

fn ioctl<T>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the #[repr(C)] struct the request number encodes (size and
    // direction), valid for reads and writes for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `UFFDIO_API` handshake requesting `features`; returns the features the kernel granted.
pub fn api(fd: BorrowedFd<'_>, features: u64) -> io::Result<u64> {
    let mut a = UffdioApi { api: UFFD_API, features, ioctls: 0 };
    ioctl(fd, UFFDIO_API, &mut a)?;
    Ok(a.features)
}

/// Registers `[start, start+len)` in write-protect mode.
pub fn register_wp(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRegister { range: UffdioRange { start, len }, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
    ioctl(fd, UFFDIO_REGISTER, &mut r)
}

/// Unregisters `[start, start+len)`.
pub fn unregister(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRange { start, len };
    ioctl(fd, UFFDIO_UNREGISTER, &mut r)
}

/// Write-protects `[start, start+len)` (`protect = false` removes the protection).
pub fn writeprotect(fd: BorrowedFd<'_>, start: u64, len: u64, protect: bool) -> io::Result<()> {
    let mode = if protect { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 };
    let mut w = UffdioWriteprotect { range: UffdioRange { start, len }, mode };
    ioctl(fd, UFFDIO_WRITEPROTECT, &mut w)
}
