//! Unit tests of [`PushCache`](super::PushCache): where the push stands, taking and dropping
//! pages, pending, and waiting for the push.

use super::*;

const PS: u64 = 4096;
const ID: PagemapId = PagemapId::Task(3);

fn run(page: u64, n: u64) -> PageRun {
    PageRun::new(page * PS, n)
}

fn push(cache: &PushCache, page: u64, n: u64) {
    let data = Bytes::from((0..n * PS).map(|i| (page + i / PS) as u8).collect::<Vec<u8>>());
    cache.insert(ID, run(page, n), &data);
}

#[test]
fn knows_what_the_push_brings_next_in_both_directions() {
    let c = PushCache::new(PS, 16 << 20);
    c.reader_started();
    assert!(!c.expects(ID, run(0, 1), u64::MAX), "nothing pushed yet");
    push(&c, 0, 64);
    push(&c, 64, 64);
    assert!(c.expects(ID, run(128, 16), 64 * PS));
    assert!(c.expects(ID, run(140, 16), 64 * PS));
    assert!(!c.expects(ID, run(300, 16), 64 * PS), "too far ahead");
    assert!(!c.expects(ID, run(10, 16), 64 * PS), "behind the push");
    // Downwards: each run below the previous one.
    push(&c, 500, 64);
    push(&c, 436, 64);
    assert!(c.expects(ID, run(420, 16), 64 * PS));
    assert!(!c.expects(ID, run(600, 16), 64 * PS), "above a downward push");
    // A jump far down (the push following a fetch) goes upwards from there.
    push(&c, 100, 16);
    assert!(c.expects(ID, run(116, 16), 64 * PS));
    assert!(!c.expects(ID, run(90, 4), 64 * PS));
    // Without a push being read, nothing is expected.
    c.reader_stopped();
    assert!(!c.expects(ID, run(116, 16), 64 * PS));
}

#[test]
fn takes_whole_runs_drops_unwanted_and_late_copies() {
    let c = PushCache::new(PS, 1 << 20);
    push(&c, 0, 8);
    let mut out = vec![0u8; (4 * PS) as usize];
    assert!(!c.take(ID, run(6, 4), &mut out), "pages 8 and 9 are missing");
    assert!(c.take(ID, run(2, 4), &mut out));
    assert!(out.chunks(PS as usize).enumerate().all(|(i, p)| p.iter().all(|&b| b == 2 + i as u8)));
    // Pages 0 and 1 are no longer wanted: dropped on the way to page 6.
    assert_eq!(c.first_wanted(ID, &mut |a| a >= 6 * PS), Some(6 * PS));
    assert_eq!(c.first_wanted(ID, &mut |_| true), Some(6 * PS));
    c.served_elsewhere(ID, run(6, 4));
    push(&c, 8, 2);
    assert_eq!(c.first_wanted(ID, &mut |_| true), None, "fetched pages are not kept");
    assert_eq!(c.counts(), (10, 4));
}

#[test]
fn pending_only_while_a_reader_lives_and_the_cache_has_room() {
    let c = PushCache::new(PS, 4 * PS as usize);
    assert!(!c.pending());
    c.reader_started();
    assert!(c.pending());
    push(&c, 0, 4);
    assert!(!c.pending(), "full: the push is paused");
    let mut out = vec![0u8; (4 * PS) as usize];
    assert!(c.take(ID, run(0, 4), &mut out));
    assert!(c.pending());
    // A new reader may start before the aborted one is gone.
    c.reader_started();
    c.reader_stopped();
    assert!(c.pending());
    c.reader_stopped();
    assert!(!c.pending());
}

#[test]
fn a_released_pagemap_is_dropped_now_and_on_arrival() {
    let c = PushCache::new(PS, 1 << 20);
    push(&c, 0, 8);
    c.release(ID);
    assert_eq!(c.first_wanted(ID, &mut |_| true), None);
    push(&c, 8, 8);
    assert_eq!(c.first_wanted(ID, &mut |_| true), None);
    assert_eq!(c.counts(), (16, 16));
}

#[test]
fn waits_for_the_push_until_it_arrives_or_passes() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let c = PushCache::new(PS, 1 << 20);
    c.reader_started();
    push(&c, 0, 16);
    let (c2, arrives) = (
        c.clone(),
        rt.spawn({
            let c = c.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                push(&c, 16, 16);
                c.announce_arrival();
                tokio::time::sleep(Duration::from_millis(5)).await;
                push(&c, 40, 16);
                c.announce_arrival();
            }
        }),
    );
    let long = Duration::from_secs(10);
    assert!(rt.block_on(c2.wait_for(ID, run(20, 4), long)), "the push brought it");
    // The push jumps past pages 32..40: waiting for them ends when it passes, not at the limit.
    let at = std::time::Instant::now();
    assert!(!rt.block_on(c2.wait_for(ID, run(34, 4), long)));
    assert!(at.elapsed() < long / 2);
    rt.block_on(arrives).expect("pusher");
    assert!(!rt.block_on(c2.wait_for(ID, run(100, 1), Duration::from_millis(1))), "times out");
    // A push that stops ends the wait at once.
    c2.reader_stopped();
    let at = std::time::Instant::now();
    assert!(!rt.block_on(c2.wait_for(ID, run(56, 4), long)));
    assert!(at.elapsed() < long / 2);
}
