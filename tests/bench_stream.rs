//! `pagestream bench stream`: with `--link-mbit` the migration really goes over the shaped link
//! (the plain TCP copy is held to the link's rate, QUIC's memory rate to what the rate allows
//! after zero pages are elided) and the network namespace is gone afterwards (needs root and
//! iproute2); with `--workload python` a python3 heap is moved, all of it, and compresses.

mod common;

use std::process::Command;

use serde_json::Value;

const MBIT: f64 = 200.0;

#[test]
fn bench_stream_goes_over_the_shaped_link_and_cleans_up() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: a shaped link needs root (network namespace, veth pair)");
        return;
    }
    if !common::require_tool("tc", &["-V"]) {
        return;
    }
    let child = Command::new(env!("CARGO_BIN_EXE_pagestream"))
        .args(["bench", "stream", "--sizes", "16M", "--link-mbit", &MBIT.to_string(), "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pagestream bench stream");
    let netns = format!("pagestream-bench-{}", child.id());
    let out = child.wait_with_output().expect("wait for the benchmark");
    assert!(out.status.success(), "bench stream failed: {}", common::stderr(&out));
    let lines: Vec<Value> =
        common::stdout(&out).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let mode = |m: &str| lines.iter().find(|v| v["mode"] == m).unwrap_or_else(|| panic!("no {m} line in {lines:?}"));
    let gbps = |m: &str| mode(m)["gbps"].as_f64().expect("gbps");
    let link_gbps = MBIT * 1e6 / 8.0 / 1e9;
    // Every page crosses the link in the TCP copy: it cannot beat the link (10% for the token
    // bucket's burst at the start).
    assert!(gbps("tcp_plain") <= link_gbps * 1.1, "TCP moved {} GB/s over a {MBIT} Mbit/s link", gbps("tcp_plain"));
    // Without compression QUIC sends ~70% of the pages (the workload's zero pages are elided).
    let none = mode("quic_none");
    let wire = none["wire_ratio"].as_f64().expect("wire_ratio");
    assert!(wire > 0.9, "uncompressed wire ratio {wire}");
    assert!(gbps("quic_none") <= link_gbps / 0.7 * 1.1, "QUIC moved {} GB/s at {MBIT} Mbit/s", gbps("quic_none"));
    assert!(gbps("quic_lz4") > 0.0);
    let summary = lines.iter().find(|v| v.get("lz4_vs_none").is_some()).expect("a summary line");
    assert_eq!(summary["link"]["mbit"], 200);
    let left = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    assert!(!common::stdout(&left).contains(&netns), "{netns} was left behind");
}

#[test]
fn a_link_rate_of_zero_or_a_delay_without_a_rate_is_refused() {
    let o = common::pagestream(&["bench", "stream", "--link-mbit", "0"]);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("--link-mbit"), "{}", common::stderr(&o));
    let o = common::pagestream(&["bench", "stream", "--link-delay-ms", "5"]);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("--link-mbit"), "{}", common::stderr(&o));
}

#[test]
fn bench_stream_moves_a_python_heap() {
    if !common::require_tool("python3", &["--version"]) {
        return;
    }
    let out = common::pagestream(&["bench", "stream", "--workload", "python", "--sizes", "32M", "--json"]);
    assert!(out.status.success(), "bench stream failed: {}", common::stderr(&out));
    let lines: Vec<Value> =
        common::stdout(&out).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let summary = lines.iter().find(|v| v.get("lz4_vs_none").is_some()).expect("a summary line");
    assert_eq!(summary["workload"], "python");
    let memory = summary["memory_bytes"].as_f64().expect("memory_bytes");
    // The resident size it grew to also counts python's own text and libraries, which are not moved.
    assert!(memory >= 32.0 * 1024.0 * 1024.0 * 0.75, "only {memory} bytes of the python process held data");
    let mode = |m: &str| lines.iter().find(|v| v["mode"] == m).unwrap_or_else(|| panic!("no {m} line in {lines:?}"));
    // The TCP copy moved the same pages the migrations did.
    assert_eq!(mode("tcp_plain")["size_bytes"].as_f64(), Some(memory));
    // A dict of small records compresses well (the demo workload's mix does not get under 0.7).
    let ratio = mode("quic_lz4")["wire_ratio"].as_f64().expect("wire_ratio");
    assert!(ratio < 0.6, "LZ4 wire ratio {ratio} on a python heap");
}
