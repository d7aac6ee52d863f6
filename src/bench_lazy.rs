//! `pagestream bench lazy [--size 64M] [--threads N] [--over local|quic|both] [--json]`: a lazy
//! restore end to end — an image directory of `--size` lazy pages (pseudo-random data, every 8th
//! page zero data), the daemon (`pagestream_engine::lazy::serve`) in this process, and
//! `pagestream-lazy-restorer` (next to this executable) reading every byte back with `--threads`
//! threads. `local` reads the images directly (the userfaultfd floor); `quic` serves them from a
//! `serve-lazy` source in this process over QUIC loopback with mutual TLS (urgent fault stream,
//! background push), twice: the second time with the first restore's working set pushed first
//! (`quic+ws`). Reports the fault service latency p50/p99/max, faults vs pushed pages and pages/s
//! to full residency, per mode, and QUIC's ratios to the local floor.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use pagestream_engine::criu::{ImageDir, ImageDirWriter, PageFlags, PagemapId};
use pagestream_engine::lazy::{
    self, source::lazy_ranges_of, HandoffClient, HandoffListener, ImageSource, LazySummary, PageSource, WorkingSet,
};
use pagestream_engine::page_size;
use pagestream_transport::lazy::{LazyServer, RemoteConfig, RemotePageSource, RemoteStats};
use pagestream_transport::quic::certs::make_dev_certs;
use pagestream_transport::quic::{Security, TlsFiles};

/// Far from where the restorer's own mappings go.
const BASE: u64 = 0x3b00_0000_0000;
const PID: u64 = 4242;

/// Options of `pagestream bench lazy`.
#[derive(clap::Args, Debug)]
pub struct BenchLazyArgs {
    /// Lazy memory to restore (K, M, G suffixes).
    #[arg(long, default_value = "64M", value_parser = pagestream::parse_size)]
    pub size: u64,
    /// Restorer threads reading (and faulting) concurrently.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Where the pages come from: the local images, a source over QUIC loopback, or both.
    #[arg(long, value_enum, default_value = "both")]
    pub over: Over,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--over`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    Local,
    Quic,
    Both,
}

fn write_images(dir: &Path, size: u64, ps: u64) -> Result<()> {
    let mut w = ImageDirWriter::create(dir, ps, 1)?;
    let pm = w.open_pagemap(PagemapId::Task(PID))?;
    let pages = size.div_ceil(ps);
    pm.push_entry(pagestream_engine::criu::PagemapEntry {
        vaddr: BASE,
        nr_pages: pages,
        flags: PageFlags::LAZY | PageFlags::PRESENT,
    })?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut page = vec![0u8; ps as usize];
    for i in 0..pages {
        if i % 8 == 7 {
            page.fill(0);
        } else {
            for chunk in page.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_ne_bytes()[..chunk.len()]);
            }
        }
        pm.write_data(&page)?;
    }
    w.commit()?;
    Ok(())
}

/// One measured restore.
struct Measured {
    mode: &'static str,
    summary: LazySummary,
    remote: Option<RemoteStats>,
    total_ms: f64,
    /// What the restore faulted on (pushed first by the `quic+ws` run).
    working_set: WorkingSet,
}

impl Measured {
    fn pages_per_s(&self) -> f64 {
        let s = self.summary.time_to_full_residency_ms.unwrap_or(0.0) / 1000.0;
        if s > 0.0 {
            self.summary.lazy_pages as f64 / s
        } else {
            0.0
        }
    }
}

/// Runs one restore of `images` with the daemon reading from `source`.
fn restore_once(
    restorer: &Path,
    images: &Path,
    work: &Path,
    threads: usize,
    source: &mut (dyn PageSource + Send),
) -> Result<(LazySummary, WorkingSet, f64)> {
    let ps = page_size();
    let listener = HandoffListener::bind(work)?;
    let plan = ImageDir::open(images, ps)?;
    let started = Instant::now();
    let (stats, out) = std::thread::scope(|s| -> Result<_> {
        let daemon = s.spawn(|| {
            let mut ranges_of = |pid: i32| lazy_ranges_of(&plan, pid);
            lazy::serve(&listener, source, &mut ranges_of)
        });
        let out = Command::new(restorer)
            .arg("-D")
            .arg(images)
            .arg("-W")
            .arg(work)
            .args(["--threads", &threads.to_string()])
            .output()
            .context("running the restorer")?;
        if !out.status.success() {
            drop(HandoffClient::connect(work)); // unblock the daemon's accept
        }
        let stats = daemon.join().map_err(|_| anyhow::anyhow!("the daemon thread panicked"))?;
        Ok((stats, out))
    })?;
    if !out.status.success() {
        bail!("the restorer failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stats = stats.context("the daemon failed")?;
    Ok((stats.summary(), stats.working_set.clone(), started.elapsed().as_secs_f64() * 1000.0))
}

fn local(restorer: &Path, images: &Path, work: &Path, threads: usize) -> Result<Measured> {
    let mut source = ImageSource::open(images, None, page_size())?;
    let (summary, _, total_ms) = restore_once(restorer, images, work, threads, &mut source)?;
    Ok(Measured { mode: "local", summary, remote: None, total_ms, working_set: WorkingSet::default() })
}

/// A restore over QUIC loopback; with `first`, the source pushes that working set first.
fn quic(restorer: &Path, images: &Path, work: &Path, threads: usize, first: Option<&WorkingSet>) -> Result<Measured> {
    let certs = make_dev_certs(&work.join("certs"), &[])?;
    let tls = |side: &str| TlsFiles {
        cacert: certs.dir.join("cacert.pem"),
        cert: certs.dir.join(format!("{side}-cert.pem")),
        key: certs.dir.join(format!("{side}-key.pem")),
    };
    let mut server = LazyServer::bind("127.0.0.1:0".parse()?, &Security::MutualTls(tls("server")), images, true)?;
    if let Some(ws) = first {
        server.push_first(ws);
    }
    let addr = server.local_addr();
    std::thread::scope(|s| -> Result<Measured> {
        let serving = s.spawn(|| server.serve(Some(1), |_| {}));
        let cfg = RemoteConfig::new(Security::MutualTls(tls("client")), "localhost".into());
        let mut source = RemotePageSource::connect(addr, cfg, page_size())?;
        let result = restore_once(restorer, images, work, threads, &mut source);
        let remote = source.finish();
        let (summary, working_set, total_ms) = result?;
        serving.join().map_err(|_| anyhow::anyhow!("the source thread panicked"))??;
        let mode = if first.is_some() { "quic+ws" } else { "quic" };
        Ok(Measured { mode, summary, remote: Some(remote), total_ms, working_set })
    })
}

/// Runs the benchmark and prints the figures.
pub fn run(args: &BenchLazyArgs) -> Result<()> {
    let ps = page_size();
    let restorer = std::env::current_exe()?.with_file_name("pagestream-lazy-restorer");
    if !restorer.exists() {
        bail!("{} not found: build it with `cargo build --release --bins`", restorer.display());
    }
    let tmp = tempfile::tempdir()?;
    let images = tmp.path().join("img");
    write_images(&images, args.size, ps).context("writing the images")?;
    let mut runs = Vec::new();
    if args.over != Over::Quic {
        let work = tmp.path().join("local");
        std::fs::create_dir(&work)?;
        runs.push(local(&restorer, &images, &work, args.threads)?);
    }
    if args.over != Over::Local {
        let work = tmp.path().join("quic");
        std::fs::create_dir(&work)?;
        let first = quic(&restorer, &images, &work, args.threads, None)?;
        // The same restore again, its predecessor's working set pushed first.
        let work = tmp.path().join("quic-ws");
        std::fs::create_dir(&work)?;
        let again = quic(&restorer, &images, &work, args.threads, Some(&first.working_set))?;
        runs.push(first);
        runs.push(again);
    }
    if args.json {
        let per_mode: Vec<_> = runs
            .iter()
            .map(|m| {
                serde_json::json!({
                    "mode": m.mode, "stats": m.summary, "remote": m.remote,
                    "pages_per_s_to_full_residency": m.pages_per_s(), "total_ms": m.total_ms,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "size": args.size, "threads": args.threads, "runs": per_mode }));
        return Ok(());
    }
    for m in &runs {
        let s = &m.summary;
        println!(
            "{:>7}: lazy restore of {} MiB, {} thread(s): {} faults, service p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            m.mode,
            args.size >> 20,
            args.threads,
            s.faults,
            s.fault_latency_p50_us,
            s.fault_latency_p99_us,
            s.fault_latency_max_us
        );
        println!(
            "       {} pages faulted, {} pushed; full residency {:.1} ms after the finish marker ({:.0} pages/s)",
            s.pages_faulted,
            s.pages_pushed,
            s.time_to_full_residency_ms.unwrap_or(0.0),
            m.pages_per_s()
        );
        if let Some(r) = &m.remote {
            println!(
                "       over QUIC: {} fetches ({} pages), {} pages installed from the push",
                r.fetches, r.fetched_pages, r.pushed_pages_used
            );
        }
    }
    if let Some(l) = runs.iter().find(|m| m.mode == "local") {
        for q in runs.iter().filter(|m| m.mode != "local") {
            println!(
                "{} / local: p50 {:.2}x, p99 {:.2}x, pages/s {:.2}x",
                q.mode,
                q.summary.fault_latency_p50_us / l.summary.fault_latency_p50_us.max(f64::MIN_POSITIVE),
                q.summary.fault_latency_p99_us / l.summary.fault_latency_p99_us.max(f64::MIN_POSITIVE),
                q.pages_per_s() / l.pages_per_s().max(f64::MIN_POSITIVE)
            );
        }
    }
    Ok(())
}
