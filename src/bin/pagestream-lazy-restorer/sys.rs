//! The test restorer's raw memory operations: mapping its regions at fixed addresses, and
//! reading restored pages (which may block in a userfaultfd fault until the daemon serves it).

use std::io;

/// Maps `len` bytes of private anonymous memory exactly at `addr`; fails if anything is there.
pub fn map_fixed_noreplace(addr: u64, len: u64) -> io::Result<()> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory this process
    // uses can be affected; the new mapping is only accessed through `read_page`.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if p as u64 != addr {
        // A kernel without MAP_FIXED_NOREPLACE put it elsewhere: give it back.
        // SAFETY: unmapping exactly the mapping just created.
        unsafe { libc::munmap(p, len as usize) };
        return Err(io::Error::other(format!("mapped at {p:p} instead of {addr:#x}")));
    }
    Ok(())
}

/// Copies the bytes at `addr` (inside a region mapped by `map_fixed_noreplace`) into `out`.
pub fn read_restored(addr: u64, out: &mut [u8]) {
    // SAFETY: callers pass addresses inside a live, readable region this program mapped and
    // never unmaps; a missing page blocks the load until the lazy-pages daemon installs it.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len()) };
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `madvise(MADV_DONTNEED)` over `[addr, addr+len)` of a restored region (a REMOVE event).
pub fn discard(addr: u64, len: u64) -> io::Result<()> {
    // SAFETY: the range lies in a region this program mapped; its contents are only read
    // through `read_restored`, so dropping them invalidates no reference.
    check(unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) })
}

/// `munmap` of `[addr, addr+len)` of a restored region (an UNMAP event).
pub fn unmap(addr: u64, len: u64) -> io::Result<()> {
    // SAFETY: as in `discard`; callers never read the range afterwards.
    check(unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) })
}

/// Moves `[from, from+len)` to `to` with `mremap(MREMAP_MAYMOVE | MREMAP_FIXED)` (a REMAP event).
pub fn move_to(from: u64, to: u64, len: u64) -> io::Result<()> {
    // SAFETY: `from` is in a region this program mapped and `to` in address space it reserved
    // for the test (nothing of the program lives there); neither is referenced by Rust values.
    let p = unsafe {
        libc::mremap(
            from as *mut libc::c_void,
            len as usize,
            len as usize,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Forks; the child runs `check` and exits 0 if it returned true, 1 otherwise. Returns whether
/// the child succeeded. Call only while the process has a single thread.
pub fn in_child(check: impl FnOnce() -> bool) -> io::Result<bool> {
    // SAFETY: the caller guarantees a single-threaded process, so the child inherits no lock held
    // by another thread; the child only runs `check` and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let ok = check();
        // SAFETY: `_exit` ends the child without running the parent's destructors or atexit.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
}
