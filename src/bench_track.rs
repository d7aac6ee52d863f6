//! `pagestream bench track`: cost of one tracking round per backend on the test workload (clean,
//! 10% dirty, 100% dirty; medians of several rounds) and the PageReader's read throughput.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use pagestream::workload_client::{workload_next_to_me, Workload};
use pagestream_engine::process::{MemoryLayout, Target};
use pagestream_engine::read::PageReader;
use pagestream_engine::track::{DirtyTracker, TrackerKind};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn timed_collect(t: &mut dyn DirtyTracker, pid: i32) -> Result<(f64, u64)> {
    let layout = MemoryLayout::read(pid)?;
    let t0 = Instant::now();
    let dirty = t.collect(&layout)?;
    Ok((t0.elapsed().as_secs_f64() * 1e3, dirty.len_pages()))
}

/// Runs the benchmark on a workload of `size` bytes, `repeat` rounds per figure.
pub fn run(size: u64, repeat: usize, as_json: bool) -> Result<()> {
    let exe = workload_next_to_me()?;
    let size_arg = size.to_string();
    let mut out = std::io::stdout().lock();
    for kind in TrackerKind::ALL {
        if let Err(reason) = kind.available() {
            if as_json {
                writeln!(out, "{}", json!({ "backend": kind, "size_bytes": size, "skipped": reason }))?;
            } else {
                writeln!(out, "{kind:>10}: skipped ({reason})")?;
            }
            continue;
        }
        let mut w = Workload::spawn_program(&exe, &["--size", &size_arg, "--paused", "--report-ms", "100000000"])?;
        let mut t = kind.open(Target::open(w.pid)?).with_context(|| format!("starting {kind}"))?;
        timed_collect(t.as_mut(), w.pid)?; // first round: everything
        let (mut clean, mut ten, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeat {
            clean.push(timed_collect(t.as_mut(), w.pid)?.0);
            w.cmd("dirty 100", "dirtied")?;
            ten.push(timed_collect(t.as_mut(), w.pid)?.0);
            w.cmd("dirty 1000", "dirtied")?;
            all.push(timed_collect(t.as_mut(), w.pid)?.0);
        }
        let target = Target::open(w.pid)?;
        let mut reader = PageReader::new(&target, w.page_size)?;
        let mut gbps = Vec::new();
        for _ in 0..repeat {
            let t0 = Instant::now();
            let mut bytes = 0u64;
            reader.read(w.area().iter(), |_, b| bytes += b.len() as u64)?;
            gbps.push(bytes as f64 / t0.elapsed().as_secs_f64() / 1e9);
        }
        let (c, p10, p100, r) = (median(clean), median(ten), median(all), median(gbps));
        if as_json {
            let line = json!({
                "backend": kind, "size_bytes": w.pages * w.page_size,
                "scan_clean_ms": c, "scan_10pct_ms": p10, "scan_100pct_ms": p100, "read_gbps": r,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{kind:>10}: clean {c:8.2} ms  10% dirty {p10:8.2} ms  100% dirty {p100:8.2} ms  read {r:.2} GB/s"
            )?;
        }
        drop(t);
        w.cmd("exit", "bye")?;
    }
    Ok(())
}
