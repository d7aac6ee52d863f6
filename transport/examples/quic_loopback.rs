//! A quick loopback measurement of the QUIC page transport (not a benchmark harness: one run,
//! one number per setting). Sends SIZE MiB of mixed pages (30% zero, 40% text-like, 30% random,
//! like the test workload) in one round from a `QuicSink` to a `Receiver` in the same process,
//! with mutual TLS, and prints GB/s of memory moved, bytes on the wire and the process's CPU time.
//!
//! ```sh
//! cargo run --release -p pagestream-transport --example quic_loopback -- [SIZE_MIB] [lz4|none|both] [STREAMS]
//! ```

use std::time::{Duration, Instant};

use pagestream_engine::criu::PagemapId;
use pagestream_engine::page_size;
use pagestream_engine::sink::{PageSink, RoundSummary};
use pagestream_engine::PageRun;
use pagestream_transport::quic::{make_dev_certs, Compression, QuicSink, Receiver, Security, SenderConfig};

/// 0 = zero, 1 = text-like, 2 = random, for page `i`.
fn kind(i: u64) -> u64 {
    match (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % 10 {
        0..=2 => 0,
        3..=6 => 1,
        _ => 2,
    }
}

fn fill(i: u64, out: &mut [u8]) {
    match kind(i) {
        0 => out.fill(0),
        1 => {
            let line = format!("{i:08} key=value; the quick brown fox jumps over the lazy dog\n");
            for (dst, src) in out.iter_mut().zip(line.bytes().cycle()) {
                *dst = src;
            }
        }
        _ => {
            let mut x = i | 1;
            for b in out.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn run(memory: &[u8], compression: Compression, streams: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ps = page_size();
    let dir = tempfile::tempdir()?;
    let certs = make_dev_certs(&dir.path().join("certs"), &[])?;
    let receiver = Receiver::bind("127.0.0.1:0".parse()?, Security::MutualTls(certs.server_tls()))?;
    let addr = receiver.local_addr();
    let images = dir.path().join("images");
    let serving = std::thread::spawn(move || receiver.serve_one(&images, |_| {}));

    let mut cfg = SenderConfig::new(Security::MutualTls(certs.client_tls()));
    cfg.compression = compression;
    cfg.data_streams = streams;
    let mut sink = QuicSink::connect(addr, cfg, ps)?;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let id = PagemapId::Task(1);
    let base = 0x7f00_0000_0000u64;
    let pages = memory.len() as u64 / ps;
    let (mut data_pages, mut zero_pages) = (0, 0);
    sink.begin_round(0)?;
    let mut i = 0;
    while i < pages {
        let zero = kind(i) == 0;
        let mut j = i + 1;
        while j < pages && (kind(j) == 0) == zero && j - i < 256 {
            j += 1;
        }
        let run = PageRun::new(base + i * ps, j - i);
        if zero {
            sink.send_zero(id, run)?;
            zero_pages += j - i;
        } else {
            sink.send_pages(id, run, &memory[(i * ps) as usize..(j * ps) as usize])?;
            data_pages += j - i;
        }
        i = j;
    }
    let t_sent = t0.elapsed().as_secs_f64();
    sink.end_round(&RoundSummary { round: 0, data_pages, zero_pages })?;
    let t_round = t0.elapsed().as_secs_f64();
    let receipt = sink.commit()?;
    println!("  all frames queued at {t_sent:.3} s, round acknowledged at {t_round:.3} s");
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let stats = sink.stats();
    let cstats = sink.connection_stats();
    let udp = cstats.udp_tx;
    let path = cstats.path;
    println!(
        "  path: mtu {} cwnd {} rtt {:?} lost {} packets, {} congestion events, probes {} (lost {}), black holes {}",
        path.current_mtu,
        path.cwnd,
        path.rtt,
        path.lost_packets,
        path.congestion_events,
        path.sent_plpmtud_probes,
        path.lost_plpmtud_probes,
        path.black_holes_detected
    );
    drop(sink);
    let report = serving.join().map_err(|_| "receiver thread panicked")??;
    let gb = memory.len() as f64 / 1e9;
    println!(
        "{compression:?}, {streams} streams: {:.0} MiB moved in {t_round:.3} s = {:.2} GB/s of memory (until the \
         round was acknowledged; {:.2} GB/s including the commit at {secs:.3} s); data {} MiB -> wire {} MiB \
         (ratio {:.2}), UDP {} MiB in {} datagrams; CPU {cpu:.2} s ({:.2} s/GB, both sides, commit included); \
         {} pages committed",
        memory.len() as f64 / 1048576.0,
        gb / t_round,
        gb / secs,
        stats.raw_bytes >> 20,
        stats.wire_bytes >> 20,
        stats.wire_bytes as f64 / stats.raw_bytes.max(1) as f64,
        udp.bytes >> 20,
        udp.datagrams,
        cpu / gb,
        receipt.pages,
    );
    assert_eq!(report.pages, pages);
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).map_or(Ok(256), |s| s.parse())?;
    let which = args.get(2).map_or("both", String::as_str);
    let streams: usize = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let ps = page_size();
    let mut memory = vec![0u8; (mib << 20) as usize];
    for (i, page) in memory.chunks_exact_mut(ps as usize).enumerate() {
        fill(i as u64, page);
    }
    let modes: &[Compression] = match which {
        "lz4" => &[Compression::Lz4],
        "none" => &[Compression::None],
        _ => &[Compression::Lz4, Compression::None],
    };
    for mode in modes {
        run(&memory, *mode, streams)?;
    }
    Ok(())
}
