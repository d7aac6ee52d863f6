//! `pagestream track`: watch which pages of a running process change, round after round, with
//! any tracking backend (a dirty-rate meter, and the tracker's command-line face).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pagestream_engine::process::{MemoryLayout, Target};
use pagestream_engine::track::TrackerKind;
use serde_json::json;

/// Tracks `pid` for `rounds` rounds `interval` apart and prints each round.
pub fn run(pid: i32, kind: Option<TrackerKind>, rounds: u32, interval: Duration, as_json: bool) -> Result<()> {
    let kind = kind.unwrap_or_else(TrackerKind::probe);
    let target = Target::open(pid)?;
    let mut tracker = kind.open(target).with_context(|| format!("starting {kind} tracking of process {pid}"))?;
    let ps = pagestream_engine::page_size();
    let mut out = std::io::stdout().lock();
    if !as_json {
        writeln!(out, "tracking process {pid} with {kind}")?;
    }
    let mut last = Instant::now();
    for round in 0..=rounds {
        if round > 0 {
            std::thread::sleep(interval.saturating_sub(last.elapsed()));
        }
        let since = last.elapsed();
        let layout = MemoryLayout::read(pid).with_context(|| format!("reading the memory map of process {pid}"))?;
        let t0 = Instant::now();
        let dirty = tracker.collect(&layout)?;
        let collect = t0.elapsed();
        last = Instant::now();
        let mib = dirty.len_bytes() as f64 / (1 << 20) as f64;
        let rate = if round == 0 { 0.0 } else { mib / since.as_secs_f64() };
        if as_json {
            let line = json!({
                "round": round,
                "tracker": kind,
                "dirty_pages": dirty.len_pages(),
                "dirty_runs": dirty.run_count(),
                "collect_ms": collect.as_secs_f64() * 1e3,
                "dirty_mib_per_s": rate,
                "migrated_bytes": layout.migrated_set(ps).len_bytes(),
            });
            writeln!(out, "{line}")?;
        } else if round == 0 {
            writeln!(out, "round 0: {} pages hold data ({mib:.1} MiB), scanned in {collect:.2?}", dirty.len_pages())?;
        } else {
            writeln!(
                out,
                "round {round}: {} dirty pages ({mib:.1} MiB) in {} runs, scanned in {collect:.2?}; {rate:.1} MiB/s dirtied",
                dirty.len_pages(),
                dirty.run_count()
            )?;
        }
    }
    Ok(())
}
