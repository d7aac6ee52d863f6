//! Syscall injection with ptrace: makes an unmodified process create a userfaultfd (which binds
//! to the creator's mm) and hands a copy to the tracker, then closes the target's copy.
//!
//! Sequence (validated, see `uffd-wp-injection.md`): pidfd; stop every thread; on one thread
//! save registers and signal mask, block all signals but SIGTRAP; point `rip` at a `syscall`
//! instruction in the target's `[vdso]` with `orig_rax = -1` so the kernel's restart logic leaves
//! the injected state alone; single-step; read `rax`; `pidfd_getfd`; inject `close` the same way;
//! restore registers and mask exactly; detach. Any failure restores the thread before detaching.
//!
//! Sharp edges: single-stepping resets an ignored or blocked SIGTRAP handler of the target to its
//! default; and if the tracker dies between setting the injected registers and restoring them
//! (about 20-60 us, twice per attach) the target runs on with the injected registers. The
//! tracker blocks catchable signals around that window; SIGKILL and the OOM killer cannot be
//! excluded.

use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use nix::sys::ptrace;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::process::maps::MemoryLayout;
use crate::process::seize::SeizedThreads;
use crate::process::target::{Target, TargetError};
use crate::sys::{pidfd, ptrace_ext, uffd};

const SYS_USERFAULTFD: u64 = 323;
const SYS_CLOSE: u64 = 3;

/// Finds a `syscall` instruction (`0f 05`) in the target's `[vdso]`.
fn find_syscall_insn(target: &Target) -> Result<u64, TargetError> {
    let pid = target.pid();
    let layout = MemoryLayout::read(pid).map_err(|e| TargetError::from_io(pid, "read maps of", e))?;
    let vdso = layout.vmas.iter().find(|v| v.path == "[vdso]").ok_or_else(|| TargetError::Io {
        pid,
        op: "find [vdso] in",
        err: std::io::Error::other("no [vdso] mapping"),
    })?;
    let mem: File = target.open_mem()?;
    let mut code = vec![0u8; (vdso.end - vdso.start) as usize];
    mem.read_exact_at(&mut code, vdso.start).map_err(|e| TargetError::from_io(pid, "read [vdso] of", e))?;
    let at = code.windows(2).position(|w| w == [0x0f, 0x05]).ok_or_else(|| TargetError::Io {
        pid,
        op: "find a syscall instruction in",
        err: std::io::Error::other("none in [vdso]"),
    })?;
    Ok(vdso.start + at as u64)
}

/// Runs one syscall in stopped thread `tid`, starting from `saved` registers; returns `rax`.
/// Leaves the thread with the injected registers: the caller restores them.
fn run_syscall(
    pid: i32,
    tid: i32,
    saved: &libc::user_regs_struct,
    insn: u64,
    nr: u64,
    arg0: u64,
) -> Result<i64, TargetError> {
    let t = Pid::from_raw(tid);
    let err = |op: &'static str| move |e: nix::errno::Errno| TargetError::from_io(pid, op, e.into());
    let mut regs = *saved;
    regs.rip = insn;
    regs.rax = nr;
    regs.orig_rax = u64::MAX;
    regs.rdi = arg0;
    ptrace::setregs(t, regs).map_err(err("set registers of"))?;
    ptrace::step(t, None).map_err(err("single-step"))?;
    loop {
        match waitpid(t, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => break,
            Ok(WaitStatus::Stopped(_, sig)) => {
                // Only SIGKILL/SIGSTOP get past the mask; a stop signal is re-sent after detach.
                tracing::debug!(tid, ?sig, "signal during injected syscall; stepping again");
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
                ptrace::step(t, None).map_err(err("single-step"))?;
            }
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return Err(TargetError::NoSuchProcess(pid)),
            Ok(other) => {
                tracing::debug!(tid, ?other, "unexpected stop during injected syscall");
                ptrace::step(t, None).map_err(err("single-step"))?;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(err("wait for")(e)),
        }
    }
    let after = ptrace::getregs(t).map_err(err("get registers of"))?;
    if after.rip != insn + 2 {
        return Err(TargetError::Io {
            pid,
            op: "inject a syscall into",
            err: std::io::Error::other(format!(
                "thread stopped at {:#x}, not after the syscall at {insn:#x}",
                after.rip
            )),
        });
    }
    Ok(after.rax as i64)
}

/// Creates a userfaultfd inside `target` and returns this process's copy of it. The target is
/// left as it was (registers, signal mask, file table) and running, also on error.
pub fn inject_userfaultfd(target: &Target) -> Result<OwnedFd, TargetError> {
    let pid = target.pid();
    let insn = find_syscall_insn(target)?;
    let stopped = SeizedThreads::stop_all(target)?;
    let tid = stopped.tids().first().copied().ok_or(TargetError::NoSuchProcess(pid))?;
    let t = Pid::from_raw(tid);
    let saved = ptrace::getregs(t).map_err(|e| TargetError::from_io(pid, "get registers of", e.into()))?;
    let saved_mask = ptrace_ext::get_sigmask(tid).map_err(|e| TargetError::from_io(pid, "get signal mask of", e))?;
    let only_trap = !(1u64 << (libc::SIGTRAP - 1));
    ptrace_ext::set_sigmask(tid, only_trap).map_err(|e| TargetError::from_io(pid, "set signal mask of", e))?;

    // Our own catchable signals stay blocked while the target runs injected registers.
    let mut old = SigSet::empty();
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old));
    let result = (|| {
        let flags = uffd::UFFD_USER_MODE_ONLY | libc::O_CLOEXEC as u64 | libc::O_NONBLOCK as u64;
        let fd = run_syscall(pid, tid, &saved, insn, SYS_USERFAULTFD, flags)?;
        if fd < 0 {
            let err = std::io::Error::from_raw_os_error((-fd) as i32);
            return Err(TargetError::Io { pid, op: "create a userfaultfd in", err });
        }
        let ours = pidfd::pidfd_getfd(target.pidfd(), fd as RawFd)
            .map_err(|e| TargetError::from_io(pid, "pidfd_getfd from", e));
        let closed = run_syscall(pid, tid, &saved, insn, SYS_CLOSE, fd as u64)?;
        if closed != 0 {
            tracing::warn!(pid, fd, closed, "closing the injected userfaultfd in the target failed");
        }
        ours
    })();
    let restored = ptrace::setregs(t, saved).map_err(|e| TargetError::from_io(pid, "restore registers of", e.into()));
    let mask_restored =
        ptrace_ext::set_sigmask(tid, saved_mask).map_err(|e| TargetError::from_io(pid, "restore signal mask of", e));
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    drop(stopped);
    restored?;
    mask_restored?;
    result
}
