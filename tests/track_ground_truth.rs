//! Dirty tracking against ground truth on real processes: the workload reports exactly which
//! pages it wrote (and which changed content) between two points, and each backend's dirty set
//! must contain them (uffd-wp: equal to the written pages; digest: equal to the changed pages).
//! Areas that appear, vanish or are replaced between rounds are handled. A backend this kernel
//! lacks is skipped with the reason printed.

use std::time::Duration;

use pagestream::workload_client::{parse_runs, Workload};
use pagestream_engine::process::{MemoryLayout, Target};
use pagestream_engine::track::{DirtyTracker, TrackerKind};
use pagestream_engine::PageRunSet;

fn available(kind: TrackerKind) -> bool {
    match kind.available() {
        Ok(()) => true,
        Err(reason) => {
            eprintln!("skipped: {kind} tracking unavailable on this kernel: {reason}");
            false
        }
    }
}

fn collect(t: &mut dyn DirtyTracker, pid: i32) -> PageRunSet {
    let layout = MemoryLayout::read(pid).expect("maps");
    t.collect(&layout).expect("collect")
}

/// Rounds of: mark, let the workload write for a while, pause, compare.
fn ground_truth(kind: TrackerKind) {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_pagestream-workload"));
    let args = ["--size", "16M", "--rate", "20000", "--pattern", "random", "--paused", "--report-ms", "100000"];
    let mut w = Workload::spawn(exe, &args).unwrap();
    let area = w.area();
    let mut t = kind.open(Target::open(w.pid).expect("target")).expect("tracker");

    let first = collect(t.as_mut(), w.pid);
    assert_eq!(first.intersection(&area), area, "{kind}: first round must hold every written page");

    for round in 1..=4 {
        w.cmd("mark", "marked").unwrap();
        w.cmd("resume", "resumed").unwrap();
        std::thread::sleep(Duration::from_millis(150 + 50 * round));
        w.cmd("pause", "paused").unwrap();
        let dirty = collect(t.as_mut(), w.pid).intersection(&area);
        let written = w.pages_since_mark("written").unwrap();
        let changed = w.pages_since_mark("changed").unwrap();
        assert!(written.len_pages() > 100, "workload wrote too little to test: {}", written.len_pages());
        eprintln!(
            "{kind} round {round}: written {} changed {} dirty {}",
            written.len_pages(),
            changed.len_pages(),
            dirty.len_pages()
        );
        let truth = if kind == TrackerKind::Digest { &changed } else { &written };
        let mut missed = truth.clone();
        missed.subtract(&dirty);
        let mut extra = dirty.clone();
        extra.subtract(truth);
        let show =
            |s: &PageRunSet| format!("{} pages, first {:?}", s.len_pages(), s.iter().take(5).collect::<Vec<_>>());
        assert!(missed.is_empty(), "{kind} round {round}: missed {}", show(&missed));
        // Soft-dirty may over-report (THP splits, kernel writes); the others are exact.
        if kind != TrackerKind::SoftDirty {
            assert!(extra.is_empty(), "{kind} round {round}: extra {}", show(&extra));
        }
    }

    // A quiet round: nothing written, nothing dirty in the area.
    w.cmd("mark", "marked").unwrap();
    let quiet = collect(t.as_mut(), w.pid).intersection(&area);
    assert!(quiet.is_empty(), "{kind}: nothing was written but {quiet:?} reported");

    // An area that appears is reported whole in the round it appears.
    let mapped = w.cmd("map 64", "mapped").unwrap();
    let extra = parse_runs(mapped.split_whitespace().nth(1).unwrap(), w.page_size).unwrap();
    let dirty = collect(t.as_mut(), w.pid);
    assert_eq!(dirty.intersection(&extra), extra, "{kind}: new area");
    assert!(collect(t.as_mut(), w.pid).intersection(&extra).is_empty(), "{kind}: unchanged new area");

    // An area that vanishes is simply gone; one that replaces it at (likely) the same address
    // without a round in between is reported whole.
    w.cmd("unmap", "unmapped").unwrap();
    let after_unmap = collect(t.as_mut(), w.pid);
    assert!(after_unmap.intersection(&extra).is_empty(), "{kind}: unmapped area reported");
    let m1 = w.cmd("map 32", "mapped").unwrap();
    collect(t.as_mut(), w.pid);
    w.cmd("unmap", "unmapped").unwrap();
    let m2 = w.cmd("map 32", "mapped").unwrap();
    let again = parse_runs(m2.split_whitespace().nth(1).unwrap(), w.page_size).unwrap();
    eprintln!("{kind}: replaced area {m1} -> {m2}");
    let dirty = collect(t.as_mut(), w.pid);
    assert_eq!(dirty.intersection(&again), again, "{kind}: replaced area must be reported whole");

    w.cmd("verify", "verify ok").unwrap();
}

#[test]
fn uffd_wp_equals_the_pages_written() {
    if available(TrackerKind::UffdWp) {
        ground_truth(TrackerKind::UffdWp);
    }
}

#[test]
fn digest_equals_the_pages_changed() {
    ground_truth(TrackerKind::Digest);
}

#[test]
fn soft_dirty_contains_the_pages_written() {
    // This host's kernel has no CONFIG_MEM_SOFT_DIRTY; the guest suite covers soft-dirty.
    if available(TrackerKind::SoftDirty) {
        ground_truth(TrackerKind::SoftDirty);
    }
}

#[test]
fn probe_picks_an_available_backend() {
    let k = TrackerKind::probe();
    assert!(k.available().is_ok(), "{k}");
}
