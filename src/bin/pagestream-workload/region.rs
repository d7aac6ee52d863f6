//! The workload's memory: one private anonymous mapping, page aligned, owned for the life of the
//! process. The only `unsafe` of the workload lives here.

use std::io;

/// A private anonymous read-write mapping.
pub struct Region {
    base: *mut u8,
    len: usize,
}

impl Region {
    /// Maps `len` bytes (a multiple of the page size).
    pub fn map(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { base: p.cast(), len })
    }

    /// Start address.
    pub fn base(&self) -> u64 {
        self.base as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The whole mapping as bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is live, readable and `len` long for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    /// The whole mapping as mutable bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }
}

impl Region {
    /// Removes all access (`PROT_NONE`): the pages keep their content but the process can no
    /// longer touch them, like a guard or a parked arena.
    pub fn protect_none(&mut self) -> io::Result<()> {
        // SAFETY: changes the protection of exactly the mapping this value owns; no Rust
        // reference into it is used again until it is unmapped (`bytes*` are not called after).
        let r = unsafe { libc::mprotect(self.base.cast(), self.len, libc::PROT_NONE) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns; no reference outlives `self`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
