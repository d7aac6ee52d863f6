//! Backpressure of `QuicSink`: with a window of a few pages the sender still completes a session
//! of 24 MiB of pages, had to wait for room, and never had more bytes queued than the window;
//! runs are split to fit the window. A window smaller than one page's frame is refused.

mod quic_common;

use std::time::Duration;

use pagestream_engine::criu::PagemapId;
use pagestream_engine::page_size;
use pagestream_engine::sink::{PageSink, RoundSummary};
use pagestream_engine::PageRun;
use pagestream_transport::quic::{Compression, QuicSink, TransportError};
use quic_common::*;

#[test]
fn tiny_window_completes_and_never_queues_more_than_the_window() {
    let pki = pki();
    let ps = page_size();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("images"));
    let mut cfg = sender_config(client_security(&pki));
    let window = 4 * ps as usize + 64;
    cfg.window_bytes = window;
    cfg.compression = Compression::None;
    cfg.data_streams = 2;
    let mut sink = QuicSink::connect(serving.addr, cfg, ps).expect("connect");
    assert_eq!(sink.max_run_pages(), 4, "runs are cut to fit the window");
    let id = PagemapId::Task(9);
    let pages = (24u64 << 20) / ps;
    let mut expected = Expected::new();
    sink.begin_round(0).expect("begin");
    let mut at = 0;
    while at < pages {
        let n = (pages - at).min(256);
        let data: Vec<u8> = (0..n).flat_map(|i| page((at + i) * 3, ps)).collect();
        for i in 0..n {
            expected.insert((id, (at + i) * ps), page((at + i) * 3, ps));
        }
        sink.send_pages(id, PageRun::new(at * ps, n), &data).expect("send");
        assert!(sink.queue_high_water() <= window, "queued {} > window {window}", sink.queue_high_water());
        at += n;
    }
    sink.end_round(&RoundSummary { round: 0, data_pages: pages, zero_pages: 0 }).expect("end");
    sink.commit().expect("commit");
    assert!(sink.queue_high_water() > 0 && sink.queue_high_water() <= window, "{}", sink.queue_high_water());
    assert!(sink.window_waits() > 0, "a 24 MiB round through a {window}-byte window never waited");
    let (report, _) = serving.wait(Duration::from_secs(60));
    let report = report.expect("session");
    verify_image(&report.dir, ps, &expected, &[]);
}

#[test]
fn window_smaller_than_one_page_is_refused() {
    let pki = pki();
    let mut cfg = sender_config(client_security(&pki));
    cfg.window_bytes = page_size() as usize;
    // Nothing listens there: the configuration is refused before any packet is sent.
    let err = QuicSink::connect("127.0.0.1:9".parse().expect("addr"), cfg, page_size()).err().expect("refused");
    assert!(matches!(err, TransportError::Config(_)), "{err}");
    assert!(err.to_string().contains("window_bytes"), "{err}");
}
