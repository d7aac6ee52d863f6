//! The workload's memory areas: page-aligned anonymous mappings (the engine's `AlignedBuf`),
//! plus the one raw call the workload makes itself, `mprotect(PROT_NONE)`.

use std::io;

use pagestream_engine::sys::aligned::AlignedBuf;

/// A private anonymous read-write mapping, possibly made inaccessible later.
pub struct Region {
    buf: AlignedBuf,
    protected: bool,
}

impl Region {
    /// Maps `len` bytes (a multiple of the page size).
    pub fn map(len: usize) -> io::Result<Self> {
        Ok(Self { buf: AlignedBuf::new(len)?, protected: false })
    }

    /// Start address.
    pub fn base(&self) -> u64 {
        self.buf.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// The whole mapping as bytes (not after `protect_none`).
    pub fn bytes(&self) -> &[u8] {
        assert!(!self.protected, "reading a PROT_NONE area");
        self.buf.as_slice()
    }

    /// The whole mapping as mutable bytes (not after `protect_none`).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        assert!(!self.protected, "writing a PROT_NONE area");
        self.buf.as_mut_slice()
    }

    /// Removes all access (`PROT_NONE`): the pages keep their content but the process can no
    /// longer touch them, like a guard or a parked arena.
    pub fn protect_none(&mut self) -> io::Result<()> {
        // SAFETY: changes the protection of exactly the mapping `buf` owns; `bytes*` refuse to
        // hand out references afterwards, and unmapping on drop is still valid.
        let r = unsafe { libc::mprotect(self.buf.as_ptr() as *mut libc::c_void, self.buf.len(), libc::PROT_NONE) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.protected = true;
        Ok(())
    }
}
