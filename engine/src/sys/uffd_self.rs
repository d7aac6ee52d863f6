//! `userfaultfd(2)` for the calling process: used to probe the kernel's userfaultfd features.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// A userfaultfd for our own mm (user-mode faults only, close-on-exec).
pub fn create() -> io::Result<OwnedFd> {
    let flags = super::uffd::UFFD_USER_MODE_ONLY as libc::c_long | libc::O_CLOEXEC as libc::c_long;
    // SAFETY: userfaultfd takes only flags and returns a new fd or -1.
    let fd = super::cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) })?;
    // SAFETY: the fd was just created for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
