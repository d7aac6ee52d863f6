//! Raw kernel interfaces: every `unsafe` block of the engine lives in this module, each with a
//! `// SAFETY:` line. Definitions the libc crate and Debian 12's headers lack (`PAGEMAP_SCAN`,
//! userfaultfd write-protect ioctls, `pidfd_getfd`) are spelled out from the kernel's uapi.

pub mod aligned;
pub mod direct_io;
pub mod guardian;
pub mod pagemap_scan;
pub mod pidfd;
pub mod ptrace_ext;
pub mod scm_rights;
pub mod uffd;
pub mod uffd_fill;
pub mod uffd_missing;
pub mod uffd_self;
pub mod vm_read;

use std::io;

/// The kernel's page size from `sysconf(_SC_PAGESIZE)`, if it answers.
pub fn sysconf_page_size() -> Option<u64> {
    // SAFETY: sysconf has no preconditions and only reads a system constant.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// Turns a `-1`-means-errno return into a `Result`.
pub(crate) fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
