//! The thaw guardian: a forked child that thaws the frozen source if the migrating process dies
//! (even by SIGKILL) before it released the freeze, so the source is never left frozen.
//!
//! The child holds the read end of a close-on-exec pipe. The parent writes one byte to say how
//! the freeze ended (`K`: the source was stopped for good or thawed already); if instead the pipe
//! reaches EOF, the parent died with the source frozen, and the child sends SIGCONT to the
//! processes it was given and/or writes `0` to the cgroup's `cgroup.freeze`. The child does only
//! async-signal-safe calls after `fork` (the parent may have other threads).

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
    /// Forks a guardian that thaws `pids` (SIGCONT) and/or the cgroup freeze file `cgroup_freeze`
    /// if this process dies before [`Guardian::release`].
    pub fn spawn(pids: &[i32], cgroup_freeze: Option<&std::path::Path>) -> io::Result<Guardian> {
        let freeze_file = match cgroup_freeze {
            Some(p) => Some(
                CString::new(p.as_os_str().as_encoded_bytes())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in cgroup path"))?,
            ),
            None => None,
        };
        let pids: Vec<libc::pid_t> = pids.to_vec();
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
            unsafe { guardian_main(rd.as_raw_fd(), wr.as_raw_fd(), &pids, freeze_file.as_ref()) }
        }
        drop(rd);
        Ok(Guardian { pipe: Some(wr), child })
    }

    /// Tells the guardian the freeze ended as planned, and reaps it.
    pub fn release(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            // SAFETY: writing one byte from a valid buffer to a pipe we own.
            unsafe { libc::write(pipe.as_raw_fd(), b"K".as_ptr().cast(), 1) };
            drop(pipe);
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

/// The guardian child's whole life.
///
/// # Safety
/// Only to be called in the child right after `fork`.
unsafe fn guardian_main(rd: libc::c_int, wr: libc::c_int, pids: &[libc::pid_t], freeze_file: Option<&CString>) -> ! {
    // SAFETY (whole function): async-signal-safe calls on memory prepared before fork.
    unsafe {
        libc::close(wr);
        let mut byte = 0u8;
        let n = loop {
            let n = libc::read(rd, (&mut byte as *mut u8).cast(), 1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break n;
        };
        if n <= 0 {
            // The parent died with the source frozen: thaw it.
            for &p in pids {
                libc::kill(p, libc::SIGCONT);
            }
            if let Some(f) = freeze_file {
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
