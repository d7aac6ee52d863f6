//! [`SeizedThreads`]: every thread of a process stopped with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`
//! (no signal the process could see), detached on drop.
//!
//! Used for the brief atomic stops of the engine: reading and clearing soft-dirty bits, and
//! injecting a syscall. A thread that reports a signal-delivery stop first gets that signal
//! delivered unchanged before it is interrupted again.

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::target::{Target, TargetError};

/// `PTRACE_EVENT_STOP`: the stop `PTRACE_INTERRUPT` produces.
const PTRACE_EVENT_STOP: i32 = 128;

/// All threads of a process, ptrace-stopped.
#[derive(Debug)]
pub struct SeizedThreads {
    pid: i32,
    tids: Vec<i32>,
}

impl SeizedThreads {
    /// Seizes and interrupts every thread of `target`, re-listing threads until no new one
    /// appears. On error every thread seized so far is detached again.
    pub fn stop_all(target: &Target) -> Result<Self, TargetError> {
        let pid = target.pid();
        let mut me = SeizedThreads { pid, tids: Vec::new() };
        loop {
            let mut new = false;
            for tid in target.threads()? {
                if me.tids.contains(&tid) {
                    continue;
                }
                match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
                    Ok(()) => {}
                    Err(Errno::ESRCH) => continue, // the thread exited meanwhile
                    Err(e) => return Err(TargetError::from_io(pid, "ptrace-seize", e.into())),
                }
                me.tids.push(tid);
                new = true;
                ptrace::interrupt(Pid::from_raw(tid))
                    .map_err(|e| TargetError::from_io(pid, "ptrace-interrupt", e.into()))?;
                wait_for_interrupt_stop(pid, tid)?;
            }
            if !new {
                break;
            }
        }
        if me.tids.is_empty() {
            return Err(TargetError::NoSuchProcess(pid));
        }
        Ok(me)
    }

    /// The stopped threads (the thread-group leader first when it is alive).
    pub fn tids(&self) -> &[i32] {
        &self.tids
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// Waits until `tid` reports the `PTRACE_EVENT_STOP` of an interrupt, delivering any signal it
/// reports first.
pub fn wait_for_interrupt_stop(pid: i32, tid: i32) -> Result<(), TargetError> {
    loop {
        match waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceEvent(_, _, PTRACE_EVENT_STOP)) => return Ok(()),
            Ok(WaitStatus::Stopped(_, sig)) => {
                // A signal-delivery stop: let the signal through unchanged, then wait again for
                // the pending interrupt.
                ptrace::cont(Pid::from_raw(tid), sig)
                    .map_err(|e| TargetError::from_io(pid, "ptrace-cont", e.into()))?;
            }
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                return Err(TargetError::NoSuchProcess(pid));
            }
            Ok(other) => {
                tracing::debug!(tid, ?other, "unexpected wait status while stopping");
                ptrace::cont(Pid::from_raw(tid), None)
                    .map_err(|e| TargetError::from_io(pid, "ptrace-cont", e.into()))?;
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(TargetError::from_io(pid, "wait for", e.into())),
        }
    }
}

impl Drop for SeizedThreads {
    fn drop(&mut self) {
        for &tid in &self.tids {
            if let Err(e) = ptrace::detach(Pid::from_raw(tid), None) {
                if e != Errno::ESRCH {
                    tracing::warn!(tid, error = %e, "ptrace detach failed");
                }
            }
        }
    }
}
