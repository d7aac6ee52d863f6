//! `pagestream bench lazy [--size 64M] [--threads N] [--json]`: a local lazy restore end to end —
//! an image directory of `--size` lazy pages (pseudo-random data, every 8th page zero data), the
//! daemon (`pagestream_engine::lazy::serve`) in this process, and `pagestream-lazy-restorer`
//! (next to this executable) reading every byte back with `--threads` threads. Reports the fault
//! service latency p50/p99/max, faults vs pushed pages and pages/s to full residency.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use pagestream_engine::criu::{ImageDir, ImageDirWriter, PageFlags, PagemapId};
use pagestream_engine::lazy::{self, source::lazy_ranges_of, HandoffClient, HandoffListener, ImageSource};
use pagestream_engine::page_size;

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
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
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
    let listener = HandoffListener::bind(tmp.path())?;
    let mut source = ImageSource::open(&images, None, ps)?;
    let plan = ImageDir::open(&images, ps)?;
    let started = Instant::now();
    let (stats, out) = std::thread::scope(|s| -> Result<_> {
        let daemon = s.spawn(|| {
            let mut ranges_of = |pid: i32| Ok(lazy_ranges_of(&plan, pid));
            lazy::serve(&listener, &mut source, &mut ranges_of)
        });
        let out = Command::new(&restorer)
            .arg("-D")
            .arg(&images)
            .arg("-W")
            .arg(tmp.path())
            .args(["--threads", &args.threads.to_string()])
            .output()
            .context("running the restorer")?;
        if !out.status.success() {
            drop(HandoffClient::connect(tmp.path())); // unblock the daemon's accept
        }
        let stats = daemon.join().map_err(|_| anyhow::anyhow!("the daemon thread panicked"))?;
        Ok((stats, out))
    })?;
    if !out.status.success() {
        bail!("the restorer failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stats = stats.context("the daemon failed")?;
    let total = started.elapsed();
    let s = stats.summary();
    let residency_s = s.time_to_full_residency_ms.unwrap_or(0.0) / 1000.0;
    let pages_per_s = if residency_s > 0.0 { s.lazy_pages as f64 / residency_s } else { 0.0 };
    if args.json {
        let v = serde_json::json!({
            "size": args.size, "threads": args.threads, "stats": s,
            "pages_per_s_to_full_residency": pages_per_s, "total_ms": total.as_secs_f64() * 1000.0,
        });
        println!("{v}");
    } else {
        println!(
            "lazy restore of {} MiB, {} thread(s): {} faults, service p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            args.size >> 20,
            args.threads,
            s.faults,
            s.fault_latency_p50_us,
            s.fault_latency_p99_us,
            s.fault_latency_max_us
        );
        println!(
            "{} pages faulted, {} pushed; full residency {:.1} ms after the finish marker ({:.0} pages/s)",
            s.pages_faulted,
            s.pages_pushed,
            s.time_to_full_residency_ms.unwrap_or(0.0),
            pages_per_s
        );
    }
    Ok(())
}
