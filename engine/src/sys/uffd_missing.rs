//! The restorer's side of a lazy restore: a userfaultfd opened with the non-cooperative event
//! features CRIU requests (masked by what the kernel offers) and ranges registered in MISSING mode.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `UFFD_FEATURE_EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP`, what `criu restore
/// --lazy-pages` asks for.
pub const CRIU_LAZY_FEATURES: u64 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6);
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

fn open(flags: libc::c_long) -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd takes only flags and returns a new fd or -1.
    let fd = super::cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) })?;
    // SAFETY: the fd was just created for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens a userfaultfd (`O_CLOEXEC | O_NONBLOCK`, kernel faults included when allowed, as CRIU
/// does) and completes `UFFDIO_API` with `wanted & supported` features. Returns it and the
/// features enabled.
pub fn open_for_lazy_restore(wanted: u64) -> io::Result<(OwnedFd, u64)> {
    let base = (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_long;
    let open_any = || match open(base) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            open(base | super::uffd::UFFD_USER_MODE_ONLY as libc::c_long)
        }
        other => other,
    };
    // UFFDIO_API may be called once per descriptor: ask a probe which features exist first.
    let probe = open_any()?;
    let supported = super::uffd::api(probe.as_fd(), 0)?;
    let fd = open_any()?;
    let enabled = wanted & supported;
    super::uffd::api(fd.as_fd(), enabled)?;
    Ok((fd, enabled))
}

/// Registers `[start, start+len)` for MISSING faults.
pub fn register_missing(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRegister { start, len, mode: UFFDIO_REGISTER_MODE_MISSING, ioctls: 0 };
    // SAFETY: UFFDIO_REGISTER takes a pointer to a live `struct uffdio_register`, which this is.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut r as *mut UffdioRegister) };
    super::cvt(ret as libc::c_long).map(|_| ())
}
