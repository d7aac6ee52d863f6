//! The thaw guardian: a forked child that thaws the frozen source if the migrating process dies
//! (even by SIGKILL) before it released the freeze, so the source is never left frozen.
//!
//! The guardian is started before anything is frozen. It holds the read end of a close-on-exec
//! pipe on which the parent announces, *before* acting, each process it is about to SIGSTOP (a
//! pid) or that it is about to freeze the cgroup (-1), and finally that the freeze ended as
//! planned (0). If the pipe reaches EOF first, the parent died with the source frozen, and the
//! guardian sends SIGCONT to every announced process and/or writes `0` to `cgroup.freeze`. The
//! child does only async-signal-safe calls after `fork` (the parent may have other threads), on
//! memory allocated before it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The parent's end of a running guardian.
#[derive(Debug)]
pub struct Guardian {
    pipe: Option<OwnedFd>,
    child: libc::pid_t,
}

impl Guardian {
    /// Forks a guardian that, if this process dies before [`Guardian::release`], thaws what was
    /// announced: processes with SIGCONT, the cgroup by writing `0` to `cgroup_freeze`.
    pub fn spawn(cgroup_freeze: Option<&std::path::Path>) -> io::Result<Guardian> {
        let freeze_file = match cgroup_freeze {
            Some(p) => Some(
                CString::new(p.as_os_str().as_encoded_bytes())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in cgroup path"))?,
            ),
            None => None,
        };
        let mut pids: Box<[libc::pid_t; MAX_PIDS]> = Box::new([0; MAX_PIDS]);
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds into the array we pass.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created for us and are owned here only.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: after fork the child calls only async-signal-safe functions (close, read, kill,
        // open, write, _exit) on memory prepared before the fork, then exits without unwinding.
        let child = unsafe { libc::fork() };
        if child < 0 {
            return Err(io::Error::last_os_error());
        }
        if child == 0 {
            // SAFETY: see above; this branch never returns.
            unsafe { guardian_main(rd.as_raw_fd(), wr.as_raw_fd(), &mut pids, freeze_file.as_ref()) }
        }
        drop(rd);
        Ok(Guardian { pipe: Some(wr), child })
    }

    fn announce(&self, record: i32) -> io::Result<()> {
        let Some(pipe) = &self.pipe else { return Ok(()) };
        let bytes = record.to_ne_bytes();
        // SAFETY: writing 4 bytes from a valid buffer to a pipe we own (atomic: < PIPE_BUF).
        let n = unsafe { libc::write(pipe.as_raw_fd(), bytes.as_ptr().cast(), 4) };
        if n == 4 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Announces that `pid` is about to be stopped (call before sending SIGSTOP).
    pub fn will_stop(&self, pid: i32) -> io::Result<()> {
        self.announce(pid)
    }

    /// Announces that the cgroup is about to be frozen.
    pub fn will_freeze_cgroup(&self) -> io::Result<()> {
        self.announce(-1)
    }

    /// Tells the guardian the freeze ended as planned, and reaps it.
    pub fn release(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if self.pipe.is_some() {
            let _ = self.announce(0);
            drop(self.pipe.take());
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(self.child, &mut status, 0) };
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Processes one guardian remembers (more are frozen but not thawed by it).
const MAX_PIDS: usize = 4096;

/// The guardian child's whole life.
///
/// # Safety
/// Only to be called in the child right after `fork`.
unsafe fn guardian_main(
    rd: libc::c_int,
    wr: libc::c_int,
    pids: &mut [libc::pid_t; MAX_PIDS],
    freeze_file: Option<&CString>,
) -> ! {
    // SAFETY (whole function): async-signal-safe calls on memory prepared before fork.
    unsafe {
        libc::close(wr);
        let (mut count, mut cgroup) = (0usize, false);
        let released = loop {
            let mut rec = [0u8; 4];
            let mut got = 0usize;
            while got < 4 {
                let n = libc::read(rd, rec.as_mut_ptr().add(got).cast(), 4 - got);
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                if n <= 0 {
                    break;
                }
                got += n as usize;
            }
            if got < 4 {
                break false; // EOF: the parent is gone
            }
            match i32::from_ne_bytes(rec) {
                0 => break true,
                -1 => cgroup = true,
                pid if count < MAX_PIDS => {
                    pids[count] = pid;
                    count += 1;
                }
                _ => {}
            }
        };
        if !released {
            // The parent died with the source frozen: thaw it.
            for &p in &pids[..count] {
                libc::kill(p, libc::SIGCONT);
            }
            if let (true, Some(f)) = (cgroup, freeze_file) {
                let fd = libc::open(f.as_ptr(), libc::O_WRONLY);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
        }
        libc::_exit(0)
    }
}
