//! The ptrace requests nix does not wrap: a thread's blocked-signal mask (`PTRACE_GETSIGMASK` /
//! `PTRACE_SETSIGMASK`), used while injecting a syscall into a stopped thread.

use std::io;

const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;

/// The blocked-signal mask of stopped tracee `tid` (kernel sigset: 64 bits on x86_64).
pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    // SAFETY: the kernel writes 8 bytes (the size we pass) into `mask`.
    let r = unsafe { libc::ptrace(PTRACE_GETSIGMASK, tid, std::mem::size_of::<u64>(), &mut mask as *mut u64) };
    super::cvt(r).map(|_| mask)
}

/// Sets the blocked-signal mask of stopped tracee `tid`.
pub fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    // SAFETY: the kernel reads 8 bytes (the size we pass) from `mask`.
    let r = unsafe { libc::ptrace(PTRACE_SETSIGMASK, tid, std::mem::size_of::<u64>(), &mask as *const u64) };
    super::cvt(r).map(|_| ())
}
