//! Waiting for a child process while collecting its resource usage (`wait4`): CPU seconds and
//! peak RSS of the sender and receiver in the benchmarks. The package's only raw syscall.

use std::io;
use std::process::Child;
use std::time::Duration;

/// What a finished child used.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident set size in bytes.
    pub max_rss: u64,
}

/// Waits for `child` and returns its exit code and resource usage.
pub fn wait(child: &mut Child) -> io::Result<Usage> {
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills; zeroed is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok(Usage { code, cpu: tv(ru.ru_utime) + tv(ru.ru_stime), max_rss: ru.ru_maxrss as u64 * 1024 })
}
