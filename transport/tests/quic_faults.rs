//! Failure paths of the QUIC transport over loopback: peers with certificates from another CA,
//! a receiver closed or a link cut in the middle of a round, a sender that aborts or vanishes,
//! handshake mismatches, garbage on a data stream, and a round whose pages do not match the
//! sender's digest. Every failure must reach both sides
//! promptly with a clear error, and the receiver must leave no directory behind.

mod quic_common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagestream_engine::criu::PagemapId;
use pagestream_engine::page_size;
use pagestream_engine::round_digest::RoundDigest;
use pagestream_engine::sink::{PageSink, RoundSummary, SinkError};
use pagestream_engine::PageRun;
use pagestream_transport::quic::endpoint::{client_bind_addr, make_endpoint, shared_transport, Side};
use pagestream_transport::quic::session::ControlStream;
use pagestream_transport::quic::tls::quic_client_config;
use pagestream_transport::quic::{QuicSink, Security, TlsFiles, TransportError};
use pagestream_transport::wire::{Codecs, ControlFrame, DataLimits, Hello, RunEncoder};
use quic_common::*;

const HEAP: u64 = 0x7f00_0000_0000;
const TASK: PagemapId = PagemapId::Task(77);

/// Sends `pages` pages of round `round` in runs of 64.
fn send_some(sink: &mut QuicSink, round: u32, pages: u64) -> Result<(), SinkError> {
    let ps = page_size();
    let mut at = 0;
    while at < pages {
        let n = (pages - at).min(64);
        let data: Vec<u8> = (0..n).flat_map(|i| page(at + i + u64::from(round) * 1_000_000, ps)).collect();
        sink.send_pages(TASK, PageRun::new(HEAP + at * ps, n), &data)?;
        at += n;
    }
    Ok(())
}

fn assert_nothing_written(out: &tempfile::TempDir) {
    assert_eq!(entries(out.path()), Vec::<String>::new(), "the receiver left something behind");
}

#[test]
fn client_certificate_from_another_ca_is_refused_and_nothing_is_written() {
    let (ours, theirs) = (pki(), pki());
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&ours), out.path().join("images"));
    // Trusts the receiver's CA, but presents a certificate the receiver's CA never signed.
    let intruder = Security::MutualTls(TlsFiles {
        cacert: ours.certs.cacert.clone(),
        cert: theirs.certs.client_cert.clone(),
        key: theirs.certs.client_key.clone(),
    });
    let err = QuicSink::connect(serving.addr, sender_config(intruder), page_size()).err().expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, TransportError::Connect { .. }), "{msg}");
    let (result, events) = serving.wait(Duration::from_secs(15));
    let err = result.expect_err("the receiver must refuse the session").to_string();
    assert!(err.contains("certificate") || err.contains("Issuer"), "{err}");
    assert!(events.is_empty());
    assert_nothing_written(&out);
}

#[test]
fn receiver_certificate_from_another_ca_is_refused_by_the_sender() {
    let (ours, theirs) = (pki(), pki());
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&theirs), out.path().join("images"));
    let err =
        QuicSink::connect(serving.addr, sender_config(client_security(&ours)), page_size()).err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("UnknownIssuer") || msg.contains("certificate"), "{msg}");
    assert!(serving.wait(Duration::from_secs(15)).0.is_err());
    assert_nothing_written(&out);
}

#[test]
fn insecure_sender_cannot_talk_to_a_mutual_tls_receiver() {
    let ours = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&ours), out.path().join("images"));
    let result = QuicSink::connect(serving.addr, sender_config(Security::Insecure), page_size());
    assert!(result.is_err(), "an unauthenticated sender was let in");
    assert!(serving.wait(Duration::from_secs(15)).0.is_err());
    assert_nothing_written(&out);
}

#[test]
fn receiver_closed_mid_round_fails_the_sender_promptly() {
    let pki = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("images"));
    let mut sink = QuicSink::connect(serving.addr, sender_config(client_security(&pki)), page_size()).expect("connect");
    sink.begin_round(0).expect("begin");
    send_some(&mut sink, 0, 256).expect("send");
    let receiver = serving.receiver.clone();
    let (result, _) = {
        receiver.close();
        serving.wait(Duration::from_secs(15))
    };
    assert!(result.is_err());
    let started = Instant::now();
    let err = send_some(&mut sink, 0, 4096)
        .and_then(|()| sink.end_round(&RoundSummary { round: 0, data_pages: 4352, zero_pages: 0 }))
        .expect_err("the sender must notice");
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert!(err.to_string().contains("shut down"), "{err}");
    // Every later call fails the same way, at once.
    assert!(sink.commit().is_err());
    assert_nothing_written(&out);
}

/// A UDP relay between the sender and the receiver that can silently drop everything.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(server: SocketAddr) -> Relay {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("relay socket");
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (cut2, stop2) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            // Bounded: a relay never outlives its test.
            while !stop2.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                if cut2.load(Ordering::SeqCst) {
                    continue;
                }
                let to = if from == server {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    server
                };
                let _ = socket.send_to(&buf[..n], to);
            }
        });
        Relay { addr, cut, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn cut_link_is_detected_by_both_sides_within_the_idle_timeout() {
    let pki = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let mut rcfg = receiver_config(&pki);
    rcfg.idle_timeout = Duration::from_secs(2);
    let serving = Serving::start(rcfg, out.path().join("images"));
    let relay = Relay::start(serving.addr);
    let mut cfg = sender_config(client_security(&pki));
    cfg.idle_timeout = Duration::from_secs(2);
    let mut sink = QuicSink::connect(relay.addr, cfg, page_size()).expect("connect");
    sink.begin_round(0).expect("begin");
    send_some(&mut sink, 0, 128).expect("send");
    relay.cut.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let err = send_some(&mut sink, 0, 128)
        .and_then(|()| sink.end_round(&RoundSummary { round: 0, data_pages: 256, zero_pages: 0 }))
        .expect_err("the sender must notice the cut");
    // 2 s of idle timeout (quinn stretches it to 3 PTOs when a loaded machine inflates the RTT);
    // a hang would last the 30 s acknowledgement timeout.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(err.to_string().contains("idle timeout"), "{err}");
    let (result, _) = serving.wait(Duration::from_secs(20));
    let err = result.expect_err("the receiver must notice the cut").to_string();
    assert!(err.contains("idle timeout"), "{err}");
    assert_nothing_written(&out);
}

#[test]
fn sender_abort_mid_round_fails_the_receiver_and_leaves_no_directory() {
    let pki = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("images"));
    let mut sink = QuicSink::connect(serving.addr, sender_config(client_security(&pki)), page_size()).expect("connect");
    sink.begin_round(0).expect("begin");
    send_some(&mut sink, 0, 300).expect("send");
    sink.end_round(&RoundSummary { round: 0, data_pages: 300, zero_pages: 0 }).expect("end");
    sink.begin_round(1).expect("begin");
    send_some(&mut sink, 1, 100).expect("send");
    sink.abort("the operator pressed ^C");
    let (result, _) = serving.wait(Duration::from_secs(15));
    match result {
        Err(TransportError::Aborted(reason)) => assert_eq!(reason, "the operator pressed ^C"),
        other => panic!("expected the sender's abort, got {other:?}"),
    }
    assert!(sink.send_zero(TASK, PageRun::new(HEAP, 1)).is_err(), "an aborted sink stays aborted");
    assert_nothing_written(&out);
}

#[test]
fn sender_vanishing_mid_round_fails_the_receiver_and_leaves_no_directory() {
    let pki = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("images"));
    let mut sink = QuicSink::connect(serving.addr, sender_config(client_security(&pki)), page_size()).expect("connect");
    sink.begin_round(0).expect("begin");
    send_some(&mut sink, 0, 200).expect("send");
    drop(sink);
    let started = Instant::now();
    let (result, _) = serving.wait(Duration::from_secs(15));
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    let err = result.expect_err("no commit, no success").to_string();
    assert!(err.contains("dropped"), "{err}");
    assert_nothing_written(&out);
}

#[test]
fn page_size_mismatch_is_refused_with_a_clear_message() {
    let pki = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("images"));
    let other = if page_size() == 4096 { 16384 } else { 4096 };
    let err = QuicSink::connect(serving.addr, sender_config(client_security(&pki)), other).err().expect("refused");
    assert!(matches!(err, TransportError::Rejected(_)), "{err}");
    assert!(err.to_string().contains("page size mismatch"), "{err}");
    assert!(matches!(SinkError::from(err), SinkError::Refused(_)));
    let (result, _) = serving.wait(Duration::from_secs(15));
    assert!(result.expect_err("refused").to_string().contains("page size mismatch"));
    assert_nothing_written(&out);
}

/// A hand-made client: connects with the given TLS files and hands the connection and its
/// control stream to `script`.
fn raw_client<T>(
    addr: SocketAddr,
    security: &Security,
    script: impl AsyncFnOnce(&quinn::Connection, &mut ControlStream) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    rt.block_on(async {
        let endpoint = make_endpoint(client_bind_addr(addr), None).expect("endpoint");
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic_client_config(security).expect("tls")));
        cfg.transport_config(shared_transport(Side::Client, Duration::from_secs(5)).expect("transport"));
        let conn = endpoint.connect_with(cfg, addr, "localhost").expect("connect").await.expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("control stream");
        let mut control = ControlStream::new(send, recv);
        script(&conn, &mut control).await
    })
}

#[test]
fn protocol_version_mismatch_gets_a_reject() {
    let pki = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("images"));
    let answer = raw_client(serving.addr, &client_security(&pki), async |_conn, control| {
        let mut hello = Hello::new(page_size(), Codecs::ALL, 1024, [9; 16]);
        hello.version = 7;
        control.send(&ControlFrame::Hello(hello)).await.expect("send");
        control.recv().await
    });
    match answer {
        Ok(Some(ControlFrame::Reject { reason })) => {
            assert!(reason.contains("protocol version mismatch"), "{reason}");
            assert!(reason.contains("version 7"), "{reason}");
        }
        other => panic!("expected a Reject, got {other:?}"),
    }
    let (result, _) = serving.wait(Duration::from_secs(15));
    assert!(result.expect_err("rejected").to_string().contains("version"));
    assert_nothing_written(&out);
}

#[test]
fn garbage_on_a_data_stream_fails_the_session_cleanly() {
    let pki = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("images"));
    let seen = raw_client(serving.addr, &client_security(&pki), async |conn, control| {
        let hello = Hello::new(page_size(), Codecs::ALL, 1024, [5; 16]);
        control.send(&ControlFrame::Hello(hello)).await.expect("send");
        assert!(matches!(control.recv().await, Ok(Some(ControlFrame::Hello(_)))));
        control.send(&ControlFrame::RoundBegin { round: 0 }).await.expect("send");
        let mut data = conn.open_uni().await.expect("data stream");
        // A Run frame header announcing 2 GiB, then noise.
        let mut garbage = vec![0x20, 0, 0, 0, 0x80];
        garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8));
        let _ = data.write_all(&garbage).await;
        control.recv().await
    });
    let (result, _) = serving.wait(Duration::from_secs(15));
    let err = result.expect_err("garbage must fail the session");
    assert!(matches!(err, TransportError::Protocol(_)), "{err}");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    match seen {
        Ok(Some(ControlFrame::Abort { reason })) => assert!(reason.contains("exceeds the limit"), "{reason}"),
        Err(e) => assert!(e.to_string().contains("exceeds the limit"), "{e}"),
        other => panic!("expected the receiver to abort, got {other:?}"),
    }
    assert_nothing_written(&out);
}

#[test]
fn a_round_whose_pages_do_not_match_the_senders_digest_fails_and_nothing_is_written() {
    let pki = pki();
    let out = tempfile::tempdir().expect("tempdir");
    let serving = Serving::start(receiver_config(&pki), out.path().join("images"));
    let ps = page_size();
    let seen = raw_client(serving.addr, &client_security(&pki), async |conn, control| {
        let hello = Hello::new(ps, Codecs::ALL, 1024, [6; 16]);
        control.send(&ControlFrame::Hello(hello)).await.expect("send");
        assert!(matches!(control.recv().await, Ok(Some(ControlFrame::Hello(_)))));
        control.send(&ControlFrame::RoundBegin { round: 0 }).await.expect("send");
        let data = [page(1, ps), page(2, ps)].concat();
        let mut frames = bytes::BytesMut::new();
        let mut enc = RunEncoder::new(DataLimits::new(ps, 1024, Codecs::ALL).expect("limits"));
        enc.encode_pages_into(0, TASK, PageRun::new(HEAP, 2), &data, &mut frames).expect("encode");
        let mut stream = conn.open_uni().await.expect("data stream");
        stream.write_all(&frames).await.expect("write");
        stream.finish().expect("finish");
        // The right counts, the digest of other bytes (as if a page had been corrupted in transit).
        let mut wrong = RoundDigest::new(ps);
        wrong.add_pages(HEAP, &[page(1, ps), page(3, ps)].concat());
        let end = ControlFrame::RoundEnd { round: 0, data_pages: 2, zero_pages: 0, digest: wrong.value() };
        control.send(&end).await.expect("send");
        control.recv().await
    });
    let (result, _) = serving.wait(Duration::from_secs(15));
    let err = result.expect_err("a digest mismatch must fail the session");
    assert!(err.to_string().contains("do not match the sender's digest"), "{err}");
    match seen {
        Ok(Some(ControlFrame::Abort { reason })) => assert!(reason.contains("digest"), "{reason}"),
        Err(e) => assert!(e.to_string().contains("do not match the sender's digest"), "{e}"),
        other => panic!("expected the receiver to abort, got {other:?}"),
    }
    assert_nothing_written(&out);
}
