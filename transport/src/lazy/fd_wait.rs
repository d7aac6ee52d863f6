//! [`wait_driving`]: waits for file descriptors the way `poll(2)` does while driving a
//! current-thread tokio runtime, so the QUIC connection living on that runtime (its packets,
//! acknowledgements and timers, the push reader) advances on the waiting thread itself.
//!
//! The lazy-pages daemon waits here between faults: a fault then wakes the very thread that
//! sends its Fetch and reads the answer, and no runtime worker has to be scheduled on the way.

use std::future::Future;
use std::io;
use std::os::fd::BorrowedFd;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use pagestream_engine::sys::scm_rights::poll_readable;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::sys::watched_fd::watch;

/// Runs what is ready on `rt` (arrived packets included) without blocking.
fn drive_once(rt: &Runtime) {
    // Each `yield_now` lets the scheduler poll the I/O driver; the tasks it wakes run on the
    // next turn, hence two.
    rt.block_on(async {
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
    });
}

/// Waits until one of `fds` is readable or hung up, or `wake` (if given) is notified, for at
/// most `timeout_ms` (-1: forever, 0: just look), driving `rt` (a current-thread runtime)
/// meanwhile; sets `ready` per descriptor as [`poll_readable`] does.
pub fn wait_driving(
    rt: &Runtime,
    fds: &[BorrowedFd<'_>],
    timeout_ms: i32,
    ready: &mut Vec<bool>,
    wake: Option<&Notify>,
) -> io::Result<()> {
    // Registered before anything runs, so a notification from the tasks driven below counts.
    let never = Notify::new();
    let mut woken = pin!(wake.unwrap_or(&never).notified());
    woken.as_mut().enable();
    drive_once(rt);
    poll_readable(fds, 0, ready)?;
    if timeout_ms == 0 || ready.iter().any(|r| *r) {
        return Ok(());
    }
    {
        let _guard = rt.enter();
        let watched = fds.iter().map(|fd| watch(*fd)).collect::<io::Result<Vec<_>>>()?;
        let any_readable = std::future::poll_fn(|cx| {
            if watched.iter().any(|w| w.poll_read_ready(cx).is_ready()) || woken.as_mut().poll(cx).is_ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        rt.block_on(async {
            match u64::try_from(timeout_ms) {
                Ok(ms) => {
                    let _ = tokio::time::timeout(Duration::from_millis(ms), any_readable).await;
                }
                Err(_) => any_readable.await,
            }
        });
    }
    poll_readable(fds, 0, ready)
}
