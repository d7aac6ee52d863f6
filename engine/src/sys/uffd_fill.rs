//! A userfaultfd handed over by a restorer (lazy restore): events read into plain addresses, and
//! `UFFDIO_COPY` / `UFFDIO_ZEROPAGE` / `UFFDIO_WAKE` through the `userfaultfd` crate, with the
//! kernel's answers sorted into [`FillOutcome`] (EEXIST, EAGAIN, partial copies).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use userfaultfd::{Error as UffdError, Event, EventBuffer, Uffd};

/// What the kernel did with one copy or zero-fill request.
#[derive(Debug)]
pub enum FillOutcome {
    /// Every byte was installed.
    Done,
    /// Only this many bytes were installed (the next page exists, or the mm is changing).
    Partial(u64),
    /// The first page is already present (`EEXIST`): someone installed it before us.
    Exists,
    /// The address space is changing (`EAGAIN`, nothing installed): read the pending events first.
    Again,
    /// Any other error (`ENOENT`: the range is no longer registered; `ESRCH`: the process is gone).
    Failed(io::Error),
}

/// One event of a userfaultfd, with addresses as integers of the faulting address space.
#[derive(Debug)]
pub enum UffdEvent {
    /// A thread touched a missing page at `addr`.
    Pagefault { addr: u64, write: bool },
    /// The process forked: the child's userfaultfd.
    Fork(LazyUffd),
    /// `mremap` moved `[from, from+len)` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `madvise(MADV_DONTNEED/REMOVE)` dropped `[start, end)`.
    Remove { start: u64, end: u64 },
    /// `munmap` (or a replacing mmap/mremap) unmapped `[start, end)`.
    Unmap { start: u64, end: u64 },
}

/// A userfaultfd registered by another process (or by a test for its own scratch mappings).
#[derive(Debug)]
pub struct LazyUffd(Uffd);

fn errno_of(e: userfaultfd::Error) -> io::Error {
    match e {
        UffdError::CopyFailed(n) | UffdError::ZeropageFailed(n) => io::Error::from_raw_os_error(n as i32),
        UffdError::SystemError(n) => io::Error::from_raw_os_error(n as i32),
        other => io::Error::other(other.to_string()),
    }
}

impl LazyUffd {
    /// Takes ownership of a received userfaultfd and makes it non-blocking.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let raw = fd.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on an fd we own, with integer arguments only.
        let flags = super::cvt(unsafe { libc::fcntl(raw, libc::F_GETFL) } as libc::c_long)?;
        // SAFETY: as above.
        super::cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, flags as libc::c_int | libc::O_NONBLOCK) } as libc::c_long)?;
        // SAFETY: `into_raw_fd` gives up ownership, which the Uffd (closing on drop) takes over.
        Ok(Self(unsafe { Uffd::from_raw_fd(fd.into_raw_fd()) }))
    }

    /// Installs `src` at `dst` (page aligned, whole pages) and wakes the threads waiting there.
    pub fn copy(&self, dst: u64, src: &[u8]) -> FillOutcome {
        // SAFETY: `src` is a live slice of `src.len()` readable bytes. UFFDIO_COPY only writes
        // into ranges registered with this userfaultfd, which belong to the restored process's
        // address space (or to a test's scratch mapping that no Rust reference covers), never to
        // memory this process reads through references.
        let r = unsafe { self.0.copy(src.as_ptr().cast(), dst as *mut libc::c_void, src.len(), true) };
        match r {
            Ok(n) if n as u64 >= src.len() as u64 => FillOutcome::Done,
            Ok(n) => FillOutcome::Partial(n as u64),
            Err(UffdError::PartiallyCopied(n)) if (n as isize) > 0 => FillOutcome::Partial(n as u64),
            Err(UffdError::PartiallyCopied(_)) => FillOutcome::Again,
            Err(UffdError::CopyFailed(e)) if e as i32 == libc::EEXIST => FillOutcome::Exists,
            Err(UffdError::CopyFailed(e)) if e as i32 == libc::EAGAIN => FillOutcome::Again,
            Err(e) => FillOutcome::Failed(errno_of(e)),
        }
    }

    /// Maps the zero page over `[dst, dst+len)` and wakes the threads waiting there.
    pub fn zeropage(&self, dst: u64, len: u64) -> FillOutcome {
        // SAFETY: as in `copy`: only registered ranges of the restored address space are touched.
        let r = unsafe { self.0.zeropage(dst as *mut libc::c_void, len as usize, true) };
        match r {
            Ok(n) if n as u64 >= len => FillOutcome::Done,
            Ok(n) => FillOutcome::Partial(n as u64),
            Err(UffdError::ZeropageFailed(e)) if e as i32 == libc::EEXIST => FillOutcome::Exists,
            Err(UffdError::ZeropageFailed(e)) if e as i32 == libc::EAGAIN => FillOutcome::Again,
            Err(e) => FillOutcome::Failed(errno_of(e)),
        }
    }

    /// Wakes the threads waiting on `[start, start+len)`.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        self.0.wake(start as *mut libc::c_void, len as usize).map_err(errno_of)
    }

    /// Reads the pending events (none when nothing is pending) into `out`.
    pub fn read_events(&self, buf: &mut EventBuffer, out: &mut Vec<UffdEvent>) -> io::Result<()> {
        for ev in self.0.read_events(buf).map_err(errno_of)? {
            out.push(match ev.map_err(errno_of)? {
                Event::Pagefault { rw, addr, .. } => {
                    UffdEvent::Pagefault { addr: addr as u64, write: rw == userfaultfd::ReadWrite::Write }
                }
                Event::Fork { uffd } => UffdEvent::Fork(Self(uffd)),
                Event::Remap { from, to, len } => {
                    UffdEvent::Remap { from: from as u64, to: to as u64, len: len as u64 }
                }
                Event::Remove { start, end } => UffdEvent::Remove { start: start as u64, end: end as u64 },
                Event::Unmap { start, end } => UffdEvent::Unmap { start: start as u64, end: end as u64 },
            });
        }
        Ok(())
    }
}

impl AsFd for LazyUffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
