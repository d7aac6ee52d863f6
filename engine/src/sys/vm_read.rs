//! `process_vm_readv(2)`: copies another process's memory into local buffers in one syscall per
//! up to [`IOV_MAX`] ranges.

use std::io;

/// Maximum number of iovecs per call (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// One remote range (address, length).
pub type RemoteRange = (u64, usize);

/// Reads `remote` ranges of process `pid`, in order, into consecutive bytes of `local`
/// (whose length must be at least the sum of the range lengths). Returns the bytes read: a
/// short count means the read stopped at the first range that failed (unmapped memory).
pub fn read(pid: i32, local: &mut [u8], remote: &[RemoteRange]) -> io::Result<usize> {
    let total: usize = remote.iter().map(|r| r.1).sum();
    assert!(local.len() >= total && remote.len() <= IOV_MAX, "caller sized the local buffer and batch");
    let liov = libc::iovec { iov_base: local.as_mut_ptr().cast(), iov_len: total };
    let riov: Vec<libc::iovec> =
        remote.iter().map(|&(addr, len)| libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len }).collect();
    // SAFETY: the local iovec covers `total` writable bytes of `local`; remote iovecs are only
    // addresses in the other process, validated by the kernel.
    let n = unsafe { libc::process_vm_readv(pid, &liov, 1, riov.as_ptr(), riov.len() as libc::c_ulong, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
