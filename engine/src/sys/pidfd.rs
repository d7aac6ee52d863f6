//! `pidfd_open(2)` and `pidfd_getfd(2)`: a stable handle on a process and a copy of one of its
//! file descriptors.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A pidfd for `pid`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = super::cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A copy, in this process, of `target_fd` of the process behind `pidfd` (needs ptrace access).
pub fn pidfd_getfd(pidfd: &OwnedFd, target_fd: RawFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes a pidfd, an fd number in that process and flags (0).
    let fd = super::cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) })?;
    // SAFETY: a fresh fd the kernel installed in our table for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
