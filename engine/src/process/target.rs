//! [`Target`]: a validated handle on the process being migrated (a pidfd plus its `/proc` files),
//! refusing with a clear error a pid that does not exist, a zombie, a kernel thread, or a process
//! we may not trace.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;

use crate::sys::pidfd;

/// Why a process cannot be a migration source.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {0}")]
    NoSuchProcess(i32),
    #[error("process {0} is a zombie (it has exited and has no memory left)")]
    Zombie(i32),
    #[error("process {0} is a kernel thread (it has no user memory)")]
    KernelThread(i32),
    #[error("not permitted to {op} process {pid}: {err} (need CAP_SYS_PTRACE, or the same user and kernel.yama.ptrace_scope allowing it)")]
    NotPermitted { pid: i32, op: &'static str, err: io::Error },
    #[error("process {pid}: {op}: {err}")]
    Io { pid: i32, op: &'static str, err: io::Error },
}

impl TargetError {
    /// Maps an errno from an operation on `pid` to the clearest error.
    pub fn from_io(pid: i32, op: &'static str, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => TargetError::NoSuchProcess(pid),
            Some(libc::EPERM) | Some(libc::EACCES) => TargetError::NotPermitted { pid, op, err },
            _ => TargetError::Io { pid, op, err },
        }
    }
}

/// The fields of a `/proc/.../stat` file that follow the parenthesised command name (which may
/// itself contain spaces and parentheses): index 0 is the state, 1 the ppid, 6 the flags.
pub fn stat_fields(path: &str) -> std::io::Result<Vec<String>> {
    let stat = fs::read_to_string(path)?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A live user process, pinned by a pidfd.
#[derive(Debug)]
pub struct Target {
    pid: i32,
    pidfd: OwnedFd,
}

impl Target {
    /// Checks that `pid` is a live user process and opens a pidfd on it.
    pub fn open(pid: i32) -> Result<Self, TargetError> {
        if pid <= 0 {
            return Err(TargetError::NoSuchProcess(pid));
        }
        let pidfd = pidfd::pidfd_open(pid).map_err(|e| TargetError::from_io(pid, "open", e))?;
        let fields =
            stat_fields(&format!("/proc/{pid}/stat")).map_err(|e| TargetError::from_io(pid, "read stat of", e))?;
        if matches!(fields.first().map(String::as_str), Some("Z" | "X")) {
            return Err(TargetError::Zombie(pid));
        }
        let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
        if flags & PF_KTHREAD != 0 {
            return Err(TargetError::KernelThread(pid));
        }
        Ok(Self { pid, pidfd })
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd.
    pub fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// Opens `/proc/PID/pagemap` (needs ptrace-read access).
    pub fn open_pagemap(&self) -> Result<File, TargetError> {
        File::open(format!("/proc/{}/pagemap", self.pid))
            .map_err(|e| TargetError::from_io(self.pid, "open pagemap of", e))
    }

    /// Opens `/proc/PID/mem` for reading (reaches pages without PROT_READ).
    pub fn open_mem(&self) -> Result<File, TargetError> {
        File::open(format!("/proc/{}/mem", self.pid)).map_err(|e| TargetError::from_io(self.pid, "open mem of", e))
    }

    /// The thread ids of the process.
    pub fn threads(&self) -> Result<Vec<i32>, TargetError> {
        let dir = fs::read_dir(format!("/proc/{}/task", self.pid))
            .map_err(|e| TargetError::from_io(self.pid, "list threads of", e))?;
        let mut tids: Vec<i32> = dir.filter_map(|d| d.ok()?.file_name().to_str()?.parse().ok()).collect();
        tids.sort_unstable();
        Ok(tids)
    }

    /// Whether the process is still alive (not exited or a zombie).
    pub fn is_alive(&self) -> bool {
        !matches!(crate::process::freeze::proc_state(self.pid), Some('Z' | 'X') | None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_missing_and_kernel_threads() {
        assert!(matches!(Target::open(0), Err(TargetError::NoSuchProcess(0))));
        assert!(matches!(Target::open(i32::MAX), Err(TargetError::NoSuchProcess(_))));
        // kthreadd is pid 2 in the initial pid namespace.
        if fs::read_to_string("/proc/2/comm").map(|c| c.trim() == "kthreadd").unwrap_or(false) {
            let err = Target::open(2).unwrap_err();
            assert!(matches!(err, TargetError::KernelThread(2)), "{err}");
        }
        let me = Target::open(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        assert!(!me.threads().unwrap().is_empty());
    }
}
