//! Dirty tracking against ground truth on real processes, per backend (see
//! `pagestream::selftest_track`): uffd-wp equals the pages written, digest the pages changed,
//! soft-dirty contains the pages written. A backend this kernel lacks is skipped with the reason
//! printed (soft-dirty runs in the real-kernel guest instead).

use std::path::PathBuf;

use pagestream::selftest_track::ground_truth;
use pagestream::workload_client::WorkloadProgram;
use pagestream_engine::track::TrackerKind;

fn check(kind: TrackerKind) {
    if let Err(reason) = kind.available() {
        eprintln!("skipped: {kind} tracking unavailable on this kernel: {reason}");
        return;
    }
    let exe = WorkloadProgram { exe: PathBuf::from(env!("CARGO_BIN_EXE_pagestream-workload")), prefix: Vec::new() };
    ground_truth(kind, &exe, |line| eprintln!("{line}")).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn uffd_wp_equals_the_pages_written() {
    check(TrackerKind::UffdWp);
}

#[test]
fn digest_equals_the_pages_changed() {
    check(TrackerKind::Digest);
}

#[test]
fn soft_dirty_contains_the_pages_written() {
    check(TrackerKind::SoftDirty);
}

#[test]
fn probe_picks_an_available_backend() {
    let k = TrackerKind::probe();
    assert!(k.available().is_ok(), "{k}");
}

#[test]
fn selftest_command_reports_each_backend() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pagestream"))
        .args(["selftest", "track", "--tracker", "digest"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("digest: PASS"), "{stdout}");
}
