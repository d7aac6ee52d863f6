//! [`read_push`]: reads a session's push stream into the [`PushCache`], pausing while the cache
//! is full (QUIC flow control then holds the source back).

use bytes::BytesMut;
use quinn::RecvStream;

use super::frame::{LazyDecoder, LazyFrame};
use super::push_cache::PushCache;

/// Bytes read from the push stream per call.
const READ_CHUNK: usize = 256 << 10;

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

async fn read_frames(mut recv: RecvStream, cache: &PushCache) {
    let Ok(mut dec) = LazyDecoder::new(cache.page_size()) else { return };
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        cache.wait_for_room().await;
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
        let mut any = false;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(LazyFrame::Pages { req: 0, id, run, data })) => {
                    cache.insert(id, run, &data);
                    any = true;
                }
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => break,
            }
        }
        if any {
            cache.announce_arrival();
        }
        tokio::task::yield_now().await;
    }
}
