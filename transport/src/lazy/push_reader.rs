//! [`read_push`]: reads a session's push stream into the [`PushCache`], pausing while the cache
//! is full (QUIC flow control then holds the source back).

use quinn::RecvStream;

use super::frame::LazyFrame;
use super::push_cache::PushCache;
use super::stream::FrameReader;

/// Reads the push stream `recv` into `cache` until it ends or fails.
pub async fn read_push(recv: RecvStream, cache: PushCache) {
    let open = PushOpen::new(cache);
    read_frames(recv, &open.0).await;
}

/// Counts the push as open for as long as it lives: also when the reader is aborted (a broken
/// link), so that no push step keeps waiting for a push that no longer comes.
struct PushOpen(PushCache);

impl PushOpen {
    fn new(cache: PushCache) -> PushOpen {
        cache.reader_started();
        PushOpen(cache)
    }
}

impl Drop for PushOpen {
    fn drop(&mut self) {
        self.0.reader_stopped();
    }
}

async fn read_frames(recv: RecvStream, cache: &PushCache) {
    let Ok(mut frames) = FrameReader::new(recv, cache.page_size()) else { return };
    loop {
        cache.wait_for_room().await;
        match frames.next().await {
            Ok(Some(LazyFrame::Pages { req: 0, id, run, data })) => {
                cache.insert(id, run, &data);
                cache.announce_arrival();
            }
            // The stream ended, broke or carried something else: the push is over (faults
            // then fetch what it did not bring).
            _ => return,
        }
        tokio::task::yield_now().await;
    }
}
