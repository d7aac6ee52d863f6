//! Ground-truth check of a dirty-tracking backend on this kernel (`pagestream selftest track`,
//! also the body of the integration tests and of the guest's soft-dirty scenario).
//!
//! The workload reports exactly which pages it wrote, and which changed content, between two
//! points; the backend's dirty set must contain them (uffd-wp: equal to the written pages;
//! digest: equal to the changed pages; soft-dirty may report more). Areas that appear, vanish
//! or are replaced between rounds must be handled.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use pagestream_engine::process::{MemoryLayout, Target};
use pagestream_engine::track::{DirtyTracker, TrackerKind};
use pagestream_engine::PageRunSet;

use crate::workload_client::{parse_runs, Workload, WorkloadProgram};

fn collect(t: &mut dyn DirtyTracker, pid: i32) -> Result<PageRunSet> {
    let layout = MemoryLayout::read(pid).with_context(|| format!("reading maps of {pid}"))?;
    Ok(t.collect(&layout)?)
}

fn show(s: &PageRunSet) -> String {
    format!("{} pages, first {:?}", s.len_pages(), s.iter().take(5).collect::<Vec<_>>())
}

/// Runs the check with the workload binary at `workload`; `log` receives one line per step.
pub fn ground_truth(kind: TrackerKind, workload: &WorkloadProgram, mut log: impl FnMut(&str)) -> Result<()> {
    let args = ["--size", "16M", "--rate", "20000", "--pattern", "random", "--paused", "--report-ms", "100000"];
    let mut w = Workload::spawn_program(workload, &args)?;
    let area = w.area();
    let mut t = kind.open(Target::open(w.pid)?).with_context(|| format!("starting {kind}"))?;

    let first = collect(t.as_mut(), w.pid)?;
    ensure!(first.intersection(&area) == area, "{kind}: first round lacks written pages");

    for round in 1..=4u64 {
        w.cmd("mark", "marked")?;
        w.cmd("resume", "resumed")?;
        std::thread::sleep(Duration::from_millis(150 + 50 * round));
        w.cmd("pause", "paused")?;
        let dirty = collect(t.as_mut(), w.pid)?.intersection(&area);
        let written = w.pages_since_mark("written")?;
        let changed = w.pages_since_mark("changed")?;
        ensure!(written.len_pages() > 100, "workload wrote too little to test: {}", written.len_pages());
        log(&format!(
            "{kind} round {round}: written {} changed {} dirty {}",
            written.len_pages(),
            changed.len_pages(),
            dirty.len_pages()
        ));
        let truth = if kind == TrackerKind::Digest { &changed } else { &written };
        let mut missed = truth.clone();
        missed.subtract(&dirty);
        let mut extra = dirty.clone();
        extra.subtract(truth);
        ensure!(missed.is_empty(), "{kind} round {round}: missed {}", show(&missed));
        // Soft-dirty may over-report (THP splits, kernel writes); the others are exact.
        if kind != TrackerKind::SoftDirty && !extra.is_empty() {
            bail!("{kind} round {round}: extra {}", show(&extra));
        }
    }

    w.cmd("mark", "marked")?;
    let quiet = collect(t.as_mut(), w.pid)?.intersection(&area);
    ensure!(quiet.is_empty(), "{kind}: nothing was written but {} reported", show(&quiet));
    log(&format!("{kind}: quiet round clean"));

    let runs_of = |line: String, ps| parse_runs(line.split_whitespace().nth(1).unwrap_or(""), ps);
    let extra = runs_of(w.cmd("map 64", "mapped")?, w.page_size)?;
    ensure!(collect(t.as_mut(), w.pid)?.intersection(&extra) == extra, "{kind}: new area not reported whole");
    ensure!(collect(t.as_mut(), w.pid)?.intersection(&extra).is_empty(), "{kind}: unchanged new area reported");
    log(&format!("{kind}: new area reported whole"));

    w.cmd("unmap", "unmapped")?;
    ensure!(collect(t.as_mut(), w.pid)?.intersection(&extra).is_empty(), "{kind}: unmapped area reported");
    w.cmd("map 32", "mapped")?;
    collect(t.as_mut(), w.pid)?;
    // Replaced behind the tracker's back, probably at the same address.
    w.cmd("unmap", "unmapped")?;
    let again = runs_of(w.cmd("map 32", "mapped")?, w.page_size)?;
    ensure!(collect(t.as_mut(), w.pid)?.intersection(&again) == again, "{kind}: replaced area not reported whole");
    log(&format!("{kind}: vanished and replaced areas handled"));

    w.cmd("verify", "verify ok")?;
    Ok(())
}
