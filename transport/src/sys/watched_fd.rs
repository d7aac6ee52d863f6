//! [`watch`]: a borrowed file descriptor registered with the current tokio reactor for
//! readability, for no longer than the borrow.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A descriptor borrowed for a while (closes nothing when dropped).
pub struct Watched<'a>(BorrowedFd<'a>);

impl AsRawFd for Watched<'_> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers `fd` for readability with the reactor of the current runtime (panics outside one).
pub fn watch(fd: BorrowedFd<'_>) -> io::Result<AsyncFd<Watched<'_>>> {
    // SAFETY: the descriptor stays open and the same for the whole life of the AsyncFd, which
    // cannot outlive the borrow `'_` that `Watched` carries; `as_raw_fd` always returns it.
    unsafe { AsyncFd::register_with_interest(Watched(fd), Interest::READABLE) }.map_err(|e| e.into_parts().1)
}
