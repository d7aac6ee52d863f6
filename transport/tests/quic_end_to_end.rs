//! End to end over loopback QUIC with real certificates: a `QuicSink` sends several rounds (random,
//! text-like and zero pages, pages re-sent and turned zero in later rounds, runs longer than one
//! frame, two pagemaps) to a `Receiver` on a thread; the committed image directory, read back
//! with `ImageChain::page_at`, holds exactly the newest content of every page. Run with LZ4 and
//! without compression, and in insecure mode.

mod quic_common;

use std::time::Duration;

use pagestream_engine::criu::PagemapId;
use pagestream_engine::page_size;
use pagestream_engine::sink::{PageSink, RoundSummary};
use pagestream_engine::PageRun;
use pagestream_transport::quic::{Compression, QuicSink, ReceiverConfig, ReceiverEvent, Security};
use pagestream_transport::wire::Codecs;
use quic_common::*;

const HEAP: u64 = 0x7f12_3400_0000;
const TASK: PagemapId = PagemapId::Task(4242);
const SHM: PagemapId = PagemapId::Shmem(7);

struct Plan {
    expected: Expected,
    /// Per round: data pages, zero pages, distinct pages held after it.
    round_counts: Vec<(u64, u64, u64)>,
}

fn send_data(sink: &mut QuicSink, plan: &mut Plan, id: PagemapId, first: u64, seeds: &[u64]) {
    let ps = page_size();
    let mut data = Vec::with_capacity(seeds.len() * ps as usize);
    for (i, seed) in seeds.iter().enumerate() {
        let p = page(*seed, ps);
        plan.expected.insert((id, first + i as u64 * ps), p.clone());
        data.extend_from_slice(&p);
    }
    sink.send_pages(id, PageRun::new(first, seeds.len() as u64), &data).expect("send_pages");
    plan.round_counts.last_mut().expect("round").0 += seeds.len() as u64;
}

fn send_zero(sink: &mut QuicSink, plan: &mut Plan, id: PagemapId, first: u64, nr: u64) {
    let ps = page_size();
    for i in 0..nr {
        plan.expected.insert((id, first + i * ps), vec![0; ps as usize]);
    }
    sink.send_zero(id, PageRun::new(first, nr)).expect("send_zero");
    plan.round_counts.last_mut().expect("round").1 += nr;
}

fn round(sink: &mut QuicSink, plan: &mut Plan, n: u32, body: impl FnOnce(&mut QuicSink, &mut Plan)) {
    sink.begin_round(n).expect("begin_round");
    plan.round_counts.push((0, 0, 0));
    body(sink, plan);
    let held = plan.expected.len() as u64;
    let last = plan.round_counts.last_mut().expect("round");
    last.2 = held;
    let (data_pages, zero_pages) = (last.0, last.1);
    sink.end_round(&RoundSummary { round: n, data_pages, zero_pages }).expect("end_round");
}

/// Three rounds over two pagemaps; returns what the image must hold.
fn migrate(sink: &mut QuicSink) -> Plan {
    let ps = page_size();
    let mut plan = Plan { expected: Expected::new(), round_counts: Vec::new() };
    // Round 0: a run longer than one frame (1500 pages > 1024), a zero run, a shmem object.
    round(sink, &mut plan, 0, |s, p| {
        let seeds: Vec<u64> = (0..1500).collect();
        send_data(s, p, TASK, HEAP, &seeds);
        send_zero(s, p, TASK, HEAP + 2000 * ps, 40);
        send_data(s, p, SHM, 0, &[3, 4, 5, 6, 7]);
    });
    // Round 1: some pages change, some become zero, a zero page gets data, new pages appear.
    round(sink, &mut plan, 1, |s, p| {
        send_data(s, p, TASK, HEAP + 10 * ps, &[10_001, 10_002, 10_003, 10_004]);
        send_zero(s, p, TASK, HEAP + 30 * ps, 5);
        send_data(s, p, TASK, HEAP + 2005 * ps, &[20_000]);
        send_data(s, p, TASK, HEAP + 5000 * ps, &[30_000, 30_001]);
        send_data(s, p, SHM, 2 * ps, &[40_000]);
    });
    // Round 2 (the "frozen" one): a page that just became zero gets data again, and ten pages
    // of round 0 were unmapped at the source: discarded, they must not be in the image.
    round(sink, &mut plan, 2, |s, p| {
        send_data(s, p, TASK, HEAP + 31 * ps, &[50_000]);
        send_data(s, p, TASK, HEAP + 11 * ps, &[50_001]);
        s.discard(TASK, PageRun::new(HEAP + 1000 * ps, 10)).expect("discard");
        for i in 0..10 {
            p.expected.remove(&(TASK, HEAP + (1000 + i) * ps));
        }
    });
    plan
}

fn end_to_end(compression: Compression, client: Security, server: ReceiverConfig) -> (u64, u64) {
    let ps = page_size();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(server, out.path().join("images"));
    let mut cfg = sender_config(client);
    cfg.compression = compression;
    let mut sink = QuicSink::connect(serving.addr, cfg, ps).expect("connect");
    let want_codecs = match compression {
        Compression::Lz4 => Codecs::ALL,
        Compression::None => Codecs::RAW,
    };
    assert_eq!(sink.agreement().codecs, want_codecs);
    let plan = migrate(&mut sink);
    let receipt = sink.commit().expect("commit");
    let stats = sink.stats();
    drop(sink);

    let (report, events) = serving.wait(Duration::from_secs(30));
    let report = report.expect("session");
    assert_eq!(report.dir, out.path().join("images"));
    assert_eq!(receipt.pages, plan.expected.len() as u64);
    assert_eq!(report.pages, plan.expected.len() as u64);
    assert_eq!(receipt.location, report.dir.display().to_string());
    assert_eq!(report.rounds, 3);
    // Each round was acknowledged only once every page of it was held.
    let done: Vec<(u32, u64, u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            ReceiverEvent::RoundDone { round, data_pages, zero_pages, pages_held, .. } => {
                Some((*round, *data_pages, *zero_pages, *pages_held))
            }
            _ => None,
        })
        .collect();
    let want: Vec<(u32, u64, u64, u64)> =
        plan.round_counts.iter().enumerate().map(|(i, (d, z, h))| (i as u32, *d, *z, *h)).collect();
    assert_eq!(done, want);
    assert!(matches!(events.first(), Some(ReceiverEvent::Connected { .. })));
    assert!(matches!(events.last(), Some(ReceiverEvent::Committed { .. })));

    let absent = [
        (TASK, HEAP + 1500 * ps),
        (TASK, HEAP - ps),
        (SHM, 5 * ps),
        (PagemapId::Task(1), HEAP),
        (TASK, HEAP + 1000 * ps),
        (TASK, HEAP + 1009 * ps),
    ];
    verify_image(&report.dir, ps, &plan.expected, &absent);
    assert!(report.wire_bytes > 0);
    (stats.raw_bytes, stats.wire_bytes)
}

#[test]
fn lz4_session_lands_the_newest_content_of_every_page() {
    let pki = pki();
    let (raw, wire) = end_to_end(Compression::Lz4, client_security(&pki), receiver_config(&pki));
    // A third of the pages is random: LZ4 wins on the rest.
    assert!(wire < raw * 3 / 4, "LZ4 sent {wire} bytes for {raw} bytes of pages");
}

#[test]
fn uncompressed_session_lands_the_newest_content_of_every_page() {
    let pki = pki();
    let (raw, wire) = end_to_end(Compression::None, client_security(&pki), receiver_config(&pki));
    assert!(wire > raw, "raw pages plus headers: {wire} bytes for {raw}");
}

#[test]
fn insecure_session_works_when_both_sides_ask_for_it() {
    end_to_end(Compression::Lz4, Security::Insecure, ReceiverConfig::new(Security::Insecure));
}

#[test]
fn empty_session_commits_an_empty_image() {
    let pki = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("img"));
    let mut sink = QuicSink::connect(serving.addr, sender_config(client_security(&pki)), page_size()).expect("connect");
    sink.begin_round(0).expect("begin");
    sink.end_round(&RoundSummary { round: 0, data_pages: 0, zero_pages: 0 }).expect("end");
    let receipt = sink.commit().expect("commit");
    assert_eq!(receipt.pages, 0);
    let (report, _) = serving.wait(Duration::from_secs(30));
    assert_eq!(report.expect("session").pages, 0);
    assert!(out.path().join("img").is_dir());
}

#[test]
fn session_calls_out_of_order_are_refused_without_breaking_it() {
    let pki = pki();
    let ps = page_size();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("img"));
    let mut sink = QuicSink::connect(serving.addr, sender_config(client_security(&pki)), ps).expect("connect");
    let err = sink.send_pages(TASK, PageRun::new(HEAP, 1), &page(1, ps)).unwrap_err();
    assert!(err.to_string().contains("no round is open"), "{err}");
    sink.begin_round(5).expect("begin");
    let err = sink.send_pages(TASK, PageRun::new(HEAP, 2), &page(1, ps)).unwrap_err();
    assert!(err.to_string().contains("needs"), "{err}");
    let err = sink.send_zero(TASK, PageRun::new(HEAP + 1, 1)).unwrap_err();
    assert!(err.to_string().contains("aligned"), "{err}");
    let err = sink.commit().unwrap_err();
    assert!(err.to_string().contains("still open"), "{err}");
    sink.send_pages(TASK, PageRun::new(HEAP, 1), &page(1, ps)).expect("send");
    sink.end_round(&RoundSummary { round: 5, data_pages: 1, zero_pages: 0 }).expect("end");
    let err = sink.begin_round(5).unwrap_err();
    assert!(err.to_string().contains("does not follow"), "{err}");
    assert_eq!(sink.commit().expect("commit").pages, 1);
    assert!(sink.commit().is_err(), "a second commit is refused");
    assert!(serving.wait(Duration::from_secs(30)).0.is_ok());
}

#[test]
fn sink_and_receiver_can_move_between_threads() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<QuicSink>();
    send_sync::<pagestream_transport::quic::Receiver>();
}
