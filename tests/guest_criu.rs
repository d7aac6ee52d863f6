//! Real CRIU 3.17 and soft-dirty on Debian 12's stock 6.1 kernel, in the test guest (see
//! `tests/common/guest.rs`), with no pagestream code in the data path: the baseline every later
//! claim about CRIU interop stands on.
//!
//! All scenarios of this file share one guest boot (the first test to get here starts it, the
//! others wait for it); each test then checks its own scenario's status and output. The scenario
//! scripts are `tests/vm/scenarios/*.sh`; their output lines are what the assertions parse.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::guest::{self, line, num, GuestOutput, SharedBoot};

const MIB: u64 = 1 << 20;
/// The working set the scenarios give the workload (`--size 32M`).
const WORKLOAD_BYTES: u64 = 32 * MIB;

const SCENARIOS: &[(&str, &str, u64)] = &[
    ("criu_check", include_str!("vm/scenarios/criu_check.sh"), 30),
    ("soft_dirty", include_str!("vm/scenarios/soft_dirty.sh"), 60),
    ("criu_dump_restore", include_str!("vm/scenarios/criu_dump_restore.sh"), 120),
    ("criu_predump_chain", include_str!("vm/scenarios/criu_predump_chain.sh"), 120),
    ("criu_page_server", include_str!("vm/scenarios/criu_page_server.sh"), 120),
    ("criu_lazy_remote", include_str!("vm/scenarios/criu_lazy_remote.sh"), 120),
];

static BOOT: SharedBoot = SharedBoot {
    name: "guest_criu",
    scenarios: SCENARIOS,
    forbidden: &[("CORRUPT", "the workload saw corrupted memory")],
    cell: OnceLock::new(),
};

fn binaries() -> [(&'static str, &'static Path); 1] {
    [("pagestream-workload", Path::new(env!("CARGO_BIN_EXE_pagestream-workload")))]
}

/// The output of scenario `name` once it passed in the guest (see [`SharedBoot::passed`]).
fn scenario(name: &str) -> Option<&'static GuestOutput> {
    BOOT.passed(name, &binaries())
}

/// The workload's verification count after restore is larger than before the dump: the restored
/// process ran at least one more complete self-check of its memory.
fn assert_restored_alive(out: &GuestOutput) {
    let before = num(line(out, "before verifies="), "verifies");
    let after = num(line(out, "after verifies="), "verifies");
    assert!(after > before, "{}: verifies went {before} -> {after}:\n{}", out.name, out.output);
    assert!(out.output.lines().any(|l| l.starts_with("progress ") && l.ends_with(" ok")), "{}", out.output);
}

#[test]
fn criu_check_passes_on_debian_6_1_kernel() {
    let Some(out) = scenario("criu_check") else { return };
    assert!(out.output.contains("Version: 3.17"), "not CRIU 3.17:\n{}", out.output);
    assert!(out.output.lines().any(|l| l == "Looks good."), "{}", out.output);
    let errors: Vec<&str> = out.output.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(
        errors.len() <= 2 && errors.iter().all(|l| l.ends_with("exited, status=1")),
        "criu check printed errors other than the two iptables probes: {errors:?}"
    );
    guest::report_pass("criu_check_passes_on_debian_6_1_kernel", out);
}

#[test]
fn soft_dirty_set_by_writes_and_cleared_by_clear_refs() {
    let Some(out) = scenario("soft_dirty") else { return };
    let pages = num(line(out, "workload pid="), "pages");
    let after_fill = line(out, "after fill: soft-dirty ");
    assert_eq!(after_fill.split_whitespace().nth(3), Some(pages.to_string().as_str()), "{after_fill}");
    assert_eq!(line(out, "after clear_refs: soft-dirty ").trim_end(), "after clear_refs: soft-dirty 0");
    let wrote = line(out, "workload wrote: ").trim_start_matches("workload wrote: ");
    let dirty = line(out, "soft-dirty now: ").trim_start_matches("soft-dirty now: ");
    assert_eq!(wrote, dirty, "the soft-dirty pages are not exactly the pages written");
    let written: u64 = wrote.split_whitespace().next().and_then(|n| n.parse().ok()).expect("page count");
    assert!(written > 0 && written < pages, "{written} of {pages} pages written: nothing left to show as clean");
    guest::report_pass("soft_dirty_set_by_writes_and_cleared_by_clear_refs", out);
}

#[test]
fn criu_dump_then_restore_keeps_workload_running_intact() {
    let Some(out) = scenario("criu_dump_restore") else { return };
    let dumped = line(out, "dumped pid=");
    assert!(num(dumped, "pages_bytes") >= WORKLOAD_BYTES, "dump misses the working set: {dumped}");
    let restored = line(out, "restored pid=");
    assert_eq!(num(dumped, "pid"), num(restored, "pid"), "restored under another PID");
    assert!(restored.contains("comm=pagestream-work"), "{restored}");
    assert_restored_alive(out);
    guest::report_pass("criu_dump_then_restore_keeps_workload_running_intact", out);
}

#[test]
fn criu_predump_track_mem_chain_later_rounds_smaller_and_restore_intact() {
    let Some(out) = scenario("criu_predump_chain") else { return };
    let r1 = num(line(out, "round pre1 "), "pages_bytes");
    let r2 = num(line(out, "round pre2 "), "pages_bytes");
    let r3 = num(line(out, "round final "), "pages_bytes");
    assert!(r1 >= WORKLOAD_BYTES, "first pre-dump must carry the whole working set: {r1} bytes");
    assert!(r2 < r1 / 2 && r3 < r1 / 2, "later rounds not much smaller: {r1} / {r2} / {r3} bytes");
    assert_restored_alive(out);
    guest::note(&format!("guest: pre-dump chain pages: {} KiB, {} KiB, final {} KiB", r1 >> 10, r2 >> 10, r3 >> 10));
    guest::report_pass("criu_predump_track_mem_chain_later_rounds_smaller_and_restore_intact", out);
}

#[test]
fn criu_dump_through_page_server_then_restore_intact() {
    let Some(out) = scenario("criu_page_server") else { return };
    let received = line(out, "page-server received ");
    assert!(num(received, "pages_bytes") >= WORKLOAD_BYTES, "page server got too little: {received}");
    assert!(num(received, "pagemaps") >= 1, "{received}");
    assert_restored_alive(out);
    guest::report_pass("criu_dump_through_page_server_then_restore_intact", out);
}

#[test]
fn criu_remote_lazy_pages_migration_in_pid_namespace_intact() {
    let Some(out) = scenario("criu_lazy_remote") else { return };
    let local = num(line(out, "dump done: "), "pages_bytes");
    assert!(local < 4 * MIB, "{local} bytes dumped eagerly: the working set should have stayed lazy");
    line(out, "lazy migration complete");
    assert_restored_alive(out);
    guest::report_pass("criu_remote_lazy_pages_migration_in_pid_namespace_intact", out);
}
