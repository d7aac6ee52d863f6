//! `pagestream page-server` as the target of real CRIU 3.17's `--page-server`, in the test guest
//! (Debian 12's 6.1 kernel, see `tests/common/guest.rs`): a plain dump restored from `DIR/last`,
//! and a pre-dump chain (two `pre-dump --track-mem` rounds and a final `dump --track-mem
//! --prev-images-dir`) whose later sessions carry only dirty pages and restore through the chain.
//!
//! Both again relayed by `pagestream page-server --to` over QUIC (mutual TLS, loopback) to
//! `pagestream receive --criu-sessions`, restored from the destination's `DIR/last`.
//!
//! And one `criu dump` with only the CRIU plugin on the source side (`--libdir`): the destination
//! ends with the complete, marked directory, `criu restore -D` of it works with nothing copied by
//! hand, an unmarked directory is refused, and a failed dump commits nothing.
//!
//! And a lazy restore with pagestream on both ends: `criu restore --lazy-pages` with `pagestream
//! lazy-pages --from` as the daemon, pages served by `pagestream serve-lazy` over QUIC, from a
//! plain dump's images and from `criu dump --lazy-pages` (fetched from CRIU's lazy page server
//! with PS_IOV_GET; CRIU 4.1.1's lazy page server fails on this host's kernel, so this one runs in
//! the guest only); and CRIU's own `criu lazy-pages --page-server` fetching the pages of a dump
//! from `pagestream page-server` with PS_IOV_GET.
//!
//! The scenarios share one guest boot; their scripts are `tests/vm/scenarios/ps_*.sh` and
//! `plugin_dump_restore.sh`.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::guest::{self, line, num, GuestOutput, SharedBoot};

const MIB: u64 = 1 << 20;
/// The working set the scenarios give the workload (`--size 32M`).
const WORKLOAD_BYTES: u64 = 32 * MIB;

const SCENARIOS: &[(&str, &str, u64)] = &[
    ("ps_dump_restore", include_str!("vm/scenarios/ps_dump_restore.sh"), 150),
    ("ps_predump_chain", include_str!("vm/scenarios/ps_predump_chain.sh"), 240),
    ("ps_relay_dump_restore", include_str!("vm/scenarios/ps_relay_dump_restore.sh"), 150),
    ("ps_relay_predump_chain", include_str!("vm/scenarios/ps_relay_predump_chain.sh"), 300),
    ("plugin_dump_restore", include_str!("vm/scenarios/plugin_dump_restore.sh"), 200),
    ("ps_lazy_quic", include_str!("vm/scenarios/ps_lazy_quic.sh"), 200),
    ("ps_lazy_criu_source", include_str!("vm/scenarios/ps_lazy_criu_source.sh"), 240),
    ("ps_lazy_criu_daemon", include_str!("vm/scenarios/ps_lazy_criu_daemon.sh"), 200),
];

static BOOT: SharedBoot = SharedBoot {
    name: "guest_page_server",
    scenarios: SCENARIOS,
    forbidden: &[("CORRUPT", "the workload saw corrupted memory"), ("FAILED", "a page-server session failed")],
    cell: OnceLock::new(),
};

fn binaries() -> Vec<(&'static str, &'static Path)> {
    static PLUGIN: OnceLock<std::path::PathBuf> = OnceLock::new();
    vec![
        ("pagestream", Path::new(env!("CARGO_BIN_EXE_pagestream"))),
        ("pagestream-workload", Path::new(env!("CARGO_BIN_EXE_pagestream-workload"))),
        ("libpagestream_criu.so", PLUGIN.get_or_init(common::plugin_so).as_path()),
    ]
}

/// The output of scenario `name` once it passed in the guest (see [`SharedBoot::passed`]).
fn scenario(name: &str) -> Option<&'static GuestOutput> {
    BOOT.passed(name, &binaries())
}

/// The number right before `what` in `line` (e.g. "3 pages in parent").
fn count_before(line: &str, what: &str) -> u64 {
    let head =
        line.split(what).next().filter(|h| h.len() < line.len()).unwrap_or_else(|| panic!("{what:?} in {line:?}"));
    head.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {line:?}"))
}

/// The restored workload ran at least one more complete self-check of its memory.
fn assert_restored_alive(out: &GuestOutput) {
    let before = num(line(out, "before verifies="), "verifies");
    let after = num(line(out, "after verifies="), "verifies");
    assert!(after > before, "{}: verifies went {before} -> {after}:\n{}", out.name, out.output);
    assert!(out.output.lines().any(|l| l.starts_with("progress ") && l.ends_with(" ok")), "{}", out.output);
}

#[test]
fn criu_dump_to_pagestream_page_server_then_restore_from_last() {
    let Some(out) = scenario("ps_dump_restore") else { return };
    let received = line(out, "page-server received ");
    assert!(num(received, "pages_bytes") >= WORKLOAD_BYTES, "pagestream got too little: {received}");
    assert!(num(received, "pagemaps") >= 1, "{received}");
    let session = line(out, "session 1 committed from 127.0.0.1:");
    assert!(session.contains("has_parent answered yes 0 /"), "a first session has no parent: {session}");
    assert!(session.contains("24-byte headers"), "CRIU 3.17 uses the 24-byte header: {session}");
    assert_eq!(line(out, "last -> ").trim_end(), "last -> 1");
    assert!(line(out, "ok: ps/last: ").contains("chain of 1 image directory"), "{}", out.output);
    assert_restored_alive(out);
    guest::note(&format!("guest: criu dump through pagestream page-server: {}", line(out, "dump took ")));
    guest::report_pass("criu_dump_to_pagestream_page_server_then_restore_from_last", out);
}

#[test]
fn criu_predump_chain_through_pagestream_sends_only_dirty_pages_and_restores() {
    let Some(out) = scenario("ps_predump_chain") else { return };
    let sizes: Vec<u64> =
        (1..=3).map(|k| num(line(out, &format!("session {k} pages_bytes=")), "pages_bytes")).collect();
    let (s1, s2, s3) = (sizes[0], sizes[1], sizes[2]);
    assert!(s1 >= WORKLOAD_BYTES, "the first pre-dump must carry the whole working set: {s1} bytes");
    assert!(s2 < s1 / 2 && s3 < s1 / 2, "later sessions not much smaller: {s1} / {s2} / {s3} bytes");
    assert!(line(out, "session 1 pages_bytes=").ends_with("parent="), "session 1 has no parent link");
    assert!(line(out, "session 2 pages_bytes=").ends_with("parent=../1"), "{}", out.output);
    assert!(line(out, "session 3 pages_bytes=").ends_with("parent=../2"), "{}", out.output);
    assert_eq!(line(out, "last -> ").trim_end(), "last -> 3");
    let first = line(out, "session 1 committed from ");
    assert!(first.contains("has_parent answered yes 0 /"), "{first}");
    for k in [2, 3] {
        let s = line(out, &format!("session {k} committed from "));
        assert!(!s.contains("has_parent answered yes 0 /"), "session {k} must be told about its parent: {s}");
        assert!(count_before(s, " pages in parent") > 0, "session {k} sent no PE_PARENT holes: {s}");
    }
    assert!(line(out, "ok: ps/last: ").contains("chain of 3 image directories"), "{}", out.output);
    assert_restored_alive(out);
    guest::note(&format!(
        "guest: pre-dump chain through pagestream: pages {} KiB, {} KiB, final {} KiB",
        s1 >> 10,
        s2 >> 10,
        s3 >> 10
    ));
    guest::report_pass("criu_predump_chain_through_pagestream_sends_only_dirty_pages_and_restores", out);
}

#[test]
fn criu_dump_relayed_over_quic_then_restore_from_last() {
    let Some(out) = scenario("ps_relay_dump_restore") else { return };
    let relayed = line(out, "relayed pages_bytes=");
    assert!(num(relayed, "pages_bytes") >= WORKLOAD_BYTES, "the destination got too little: {relayed}");
    let source = line(out, "session relayed from 127.0.0.1:");
    assert!(source.contains("committed as session 1 at 127.0.0.1:"), "{source}");
    assert!(source.contains("24-byte headers"), "CRIU 3.17 uses the 24-byte header: {source}");
    let dest = line(out, "session 1 committed from 127.0.0.1:");
    assert!(dest.contains("has_parent answered yes 0 /"), "a first session has no parent: {dest}");
    assert_eq!(line(out, "last -> ").trim_end(), "last -> 1");
    assert!(line(out, "ok: ps/last: ").contains("chain of 1 image directory"), "{}", out.output);
    assert_restored_alive(out);
    guest::note(&format!("guest: criu dump relayed over QUIC: {}", line(out, "dump took ")));
    guest::report_pass("criu_dump_relayed_over_quic_then_restore_from_last", out);
}

#[test]
fn criu_predump_chain_relayed_over_quic_sends_only_dirty_pages_and_restores() {
    let Some(out) = scenario("ps_relay_predump_chain") else { return };
    let sizes: Vec<u64> =
        (1..=3).map(|k| num(line(out, &format!("session {k} pages_bytes=")), "pages_bytes")).collect();
    let (s1, s2, s3) = (sizes[0], sizes[1], sizes[2]);
    assert!(s1 >= WORKLOAD_BYTES, "the first pre-dump must carry the whole working set: {s1} bytes");
    assert!(s2 < s1 / 2 && s3 < s1 / 2, "later sessions not much smaller: {s1} / {s2} / {s3} bytes");
    assert!(line(out, "session 2 pages_bytes=").ends_with("parent=../1"), "{}", out.output);
    assert!(line(out, "session 3 pages_bytes=").ends_with("parent=../2"), "{}", out.output);
    assert_eq!(line(out, "last -> ").trim_end(), "last -> 3");
    let relayed = out.output.lines().filter(|l| l.starts_with("session relayed from 127.0.0.1:")).count();
    assert_eq!(relayed, 3, "the source relayed three sessions:\n{}", out.output);
    for k in [2, 3] {
        let s = line(out, &format!("session {k} committed from "));
        assert!(!s.contains("has_parent answered yes 0 /"), "session {k} must be told about its parent: {s}");
        assert!(count_before(s, " pages in parent") > 0, "session {k} sent no PE_PARENT holes: {s}");
    }
    assert!(line(out, "ok: ps/last: ").contains("chain of 3 image directories"), "{}", out.output);
    assert_restored_alive(out);
    guest::note(&format!(
        "guest: pre-dump chain relayed over QUIC: pages {} KiB, {} KiB, final {} KiB",
        s1 >> 10,
        s2 >> 10,
        s3 >> 10
    ));
    guest::report_pass("criu_predump_chain_relayed_over_quic_sends_only_dirty_pages_and_restores", out);
}

#[test]
fn one_criu_dump_with_the_plugin_leaves_a_restorable_directory_at_the_destination() {
    let Some(out) = scenario("plugin_dump_restore") else { return };
    assert!(line(out, "pagestream: the dump failed").contains("the destination keeps nothing"), "{}", out.output);
    line(out, "failed dump committed nothing");
    let dest = line(out, "session 1 committed from 127.0.0.1:");
    assert!(dest.contains("a complete dump with "), "{dest}");
    let summary = line(out, "pagestream: dump committed as session 1 at the destination:");
    assert!(count_before(summary, " pages (") * 4096 >= WORKLOAD_BYTES, "{summary}");
    assert_eq!(line(out, "last -> ").trim_end(), "last -> 1");
    assert!(line(out, "pagestream: refusing to restore from ").contains("did not commit"), "{}", out.output);
    assert_restored_alive(out);
    guest::note(&format!("guest: criu dump with the pagestream plugin: {}", line(out, "dump took ")));
    guest::report_pass("one_criu_dump_with_the_plugin_leaves_a_restorable_directory_at_the_destination", out);
}

#[test]
fn criu_lazy_restore_with_pagestream_on_both_ends_over_quic() {
    let Some(out) = scenario("ps_lazy_quic") else { return };
    assert!(num(line(out, "lazy entries="), "entries") > 0, "{}", out.output);
    let summary = line(out, "lazy summary ");
    let json: serde_json::Value = serde_json::from_str(summary.trim_start_matches("lazy summary ")).unwrap();
    let lazy = json["lazy_pages"].as_u64().unwrap();
    assert!(lazy * 4096 >= WORKLOAD_BYTES, "{summary}");
    assert_eq!(json["pages_faulted"].as_u64().unwrap() + json["pages_pushed"].as_u64().unwrap(), lazy, "{summary}");
    assert_eq!(json["remote"]["source_lazy_pages"].as_u64(), Some(lazy), "{summary}");
    line(out, "session 1 complete: ");
    assert_restored_alive(out);
    guest::note(&format!("guest: lazy restore over QUIC: {}", line(out, "restore returned after ")));
    guest::report_pass("criu_lazy_restore_with_pagestream_on_both_ends_over_quic", out);
}

#[test]
fn criu_dump_lazy_pages_served_through_pagestream_over_quic() {
    let Some(out) = scenario("ps_lazy_criu_source") else { return };
    let dump = line(out, "dump done: ");
    assert!(num(dump, "entries") > 0, "{dump}");
    assert!(num(dump, "pages_bytes") < WORKLOAD_BYTES / 4, "the lazy pages stay at the source: {dump}");
    let summary = line(out, "lazy summary ");
    let json: serde_json::Value = serde_json::from_str(summary.trim_start_matches("lazy summary ")).unwrap();
    let lazy = json["lazy_pages"].as_u64().unwrap();
    assert!(lazy * 4096 >= WORKLOAD_BYTES, "{summary}");
    assert_eq!(json["pages_faulted"].as_u64().unwrap() + json["pages_pushed"].as_u64().unwrap(), lazy, "{summary}");
    line(out, "session 1 complete: ");
    line(out, "lazy migration complete");
    assert_restored_alive(out);
    guest::report_pass("criu_dump_lazy_pages_served_through_pagestream_over_quic", out);
}

#[test]
fn criu_lazy_pages_daemon_fetches_from_pagestream_page_server() {
    let Some(out) = scenario("ps_lazy_criu_daemon") else { return };
    assert!(num(line(out, "lazy entries="), "entries") > 0, "{}", out.output);
    let served = line(out, "lazy-pages client from 127.0.0.1:");
    assert!(served.contains("served from ps/1:") && served.contains("nothing written"), "{served}");
    assert!(count_before(served, " pages (") * 4096 >= WORKLOAD_BYTES, "{served}");
    assert_restored_alive(out);
    guest::report_pass("criu_lazy_pages_daemon_fetches_from_pagestream_page_server", out);
}
