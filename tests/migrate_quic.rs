//! End-to-end migrations over loopback QUIC with mutual TLS, through the CLI as users run it:
//! `pagestream demo` byte-for-byte per tracker; `send`/`receive` between processes, whose images
//! pass `image verify` and decode with crit; a peer from another CA refused; and faults (the
//! receiver killed, the sender killed in a live round and in the frozen final round): the source
//! keeps running and is never left frozen, the receiver leaves no directory, both exit non-zero.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{pagestream, require_tool, stderr, stdout};
use pagestream::workload_client::Workload;
use pagestream_engine::process::freeze::proc_state;
use pagestream_engine::track::TrackerKind;

fn workload(size: &str, rate: &str) -> Workload {
    let exe = Path::new(env!("CARGO_BIN_EXE_pagestream-workload"));
    Workload::spawn(exe, &["--size", size, "--rate", rate, "--pattern", "hot", "--report-ms", "200"]).unwrap()
}

fn certs(dir: &Path) -> PathBuf {
    let o = pagestream(&["certs", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir.to_path_buf()
}

fn tls(dir: &Path, side: &str) -> Vec<String> {
    let f = |n: &str| dir.join(n).display().to_string();
    vec![
        "--tls-cacert".into(),
        f("cacert.pem"),
        "--tls-cert".into(),
        f(&format!("{side}-cert.pem")),
        "--tls-key".into(),
        f(&format!("{side}-key.pem")),
    ]
}

/// Starts `pagestream receive` on a free port; returns the child and its address.
fn receive(images: &Path, certs: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagestream"))
        .args(["receive", "--listen", "127.0.0.1:0", "--images-dir", images.to_str().unwrap()])
        .args(tls(certs, "server"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr =
        line.split_whitespace().find(|w| w.starts_with("127.0.0.1:")).unwrap_or_else(|| panic!("{line}")).to_string();
    // Keep draining stderr so the receiver never blocks on it.
    std::thread::spawn(move || for _ in err.lines() {});
    (child, addr)
}

fn send(pid: i32, addr: &str, certs: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pagestream"));
    c.args(["send", "--pid", &pid.to_string(), "--to", addr, "--tls-server-name", "localhost"])
        .args(tls(certs, "client"))
        .args(extra);
    c
}

fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "process did not exit within {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The workload runs again (not stopped) and passes a full self-check.
fn assert_alive_and_intact(w: &mut Workload) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_state(w.pid) == Some('T') {
        assert!(Instant::now() < deadline, "source left frozen");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.wait_for("progress").unwrap();
    w.cmd("verify", "verify ok").unwrap();
}

#[test]
fn demo_is_byte_exact_with_every_tracker() {
    for kind in TrackerKind::ALL {
        if let Err(reason) = kind.available() {
            eprintln!("skipped: demo with {kind}: {reason}");
            continue;
        }
        let o = pagestream(&["demo", "--size", "32M", "--tracker", &kind.to_string(), "--json"]);
        assert!(o.status.success(), "{kind}: {}{}", stdout(&o), stderr(&o));
        let summary: serde_json::Value =
            serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
        assert_eq!(summary["verified"], true, "{kind}: {summary}");
        assert_eq!(summary["tracker"], kind.to_string());
        assert!(summary["rounds"].as_u64().unwrap() >= 2, "{summary}");
        assert!(summary["memory_bytes"].as_u64().unwrap() >= 32 << 20);
        let rounds: Vec<serde_json::Value> =
            stdout(&o).lines().filter(|l| l.contains("\"round\"")).map(|l| serde_json::from_str(l).unwrap()).collect();
        for key in ["round", "dirty_pages", "zero_pages", "sent_pages", "wire_bytes", "duration_ms", "est_downtime_ms"]
        {
            assert!(rounds.iter().all(|r| r.get(key).is_some()), "{key} missing in {rounds:?}");
        }
    }
}

#[test]
fn demo_keeps_images_that_verify_and_decode_with_crit() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("kept");
    let o = pagestream(&["demo", "--size", "16M", "--images-dir", images.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("verified: true"), "{}", stdout(&o));
    let snapshots: usize = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("receiver_snapshots: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the demo reports the receiver's snapshots");
    assert!(snapshots >= 1, "{}", stdout(&o));
    assert!(images.join(format!("pre-{snapshots}")).is_dir());
    let parent = std::fs::read_link(images.join("parent")).expect("a chain over the receiver's snapshots");
    assert!(parent.to_string_lossy().starts_with("pre-"), "{parent:?}");
    let o = pagestream(&["image", "verify", images.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    if require_tool("crit", &["--help"]) {
        let pagemap = std::fs::read_dir(&images)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .find(|n| n.starts_with("pagemap-"))
            .expect("a pagemap image");
        let shown = common::crit(&images, &["show", &pagemap]);
        assert!(shown.contains("\"pages_id\"") && shown.contains("PE_"), "{shown}");
        // The receiver's background snapshot of round 0 is the chain's base, inside the directory.
        let shown = common::crit(&images.join("pre-1"), &["show", &pagemap]);
        assert!(shown.contains("PE_PRESENT"), "{shown}");
    }
    // A second demo into the same directory is refused before anything runs.
    let o = pagestream(&["demo", "--size", "16M", "--images-dir", images.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("exists already"), "{}", stderr(&o));
}

#[test]
fn send_and_receive_leave_running_images_verify_and_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let c = certs(&tmp.path().join("certs"));
    let images = tmp.path().join("images");
    let (mut rx, addr) = receive(&images, &c);
    let mut w = workload("32M", "5000");
    let o = send(w.pid, &addr, &c, &["--leave-running", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(wait_exit(&mut rx, 30).success());
    assert_alive_and_intact(&mut w);

    let o = pagestream(&["image", "verify", images.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    if require_tool("crit", &["--help"]) {
        let file = format!("pagemap-{}.img", w.pid);
        common::crit(&images, &["decode", "-i", &file]);
        let shown = common::crit(&images, &["show", &file]);
        assert!(shown.contains("PE_PRESENT"), "{shown}");
    }
}

#[test]
fn a_peer_from_another_ca_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let good = certs(&tmp.path().join("good"));
    let other = certs(&tmp.path().join("other"));
    let images = tmp.path().join("images");
    let (mut rx, addr) = receive(&images, &good);
    let mut w = workload("8M", "2000");
    let o = send(w.pid, &addr, &other, &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("error"), "{err}");
    assert!(!wait_exit(&mut rx, 30).success());
    assert!(!images.exists());
    assert_alive_and_intact(&mut w);
}

#[test]
fn receiver_killed_mid_round_leaves_source_running() {
    let tmp = tempfile::tempdir().unwrap();
    let c = certs(&tmp.path().join("certs"));
    let images = tmp.path().join("images");
    let (mut rx, addr) = receive(&images, &c);
    let mut w = workload("512M", "20000");
    let mut tx = send(w.pid, &addr, &c, &[]).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    rx.kill().unwrap();
    rx.wait().unwrap();
    let st = wait_exit(&mut tx, 60);
    let mut err = String::new();
    std::io::Read::read_to_string(tx.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("migration failed"), "{err}");
    assert!(!images.exists());
    assert_alive_and_intact(&mut w);
}

fn sender_killed(in_final_round: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let c = certs(&tmp.path().join("certs"));
    let images = tmp.path().join("images");
    let (mut rx, addr) = receive(&images, &c);
    let mut w = workload("256M", "20000");
    // A generous downtime budget makes round 0 the only live round.
    let mut tx = send(w.pid, &addr, &c, &["--downtime-ms", "100000"]).stderr(Stdio::null()).spawn().unwrap();
    if in_final_round {
        let deadline = Instant::now() + Duration::from_secs(60);
        while proc_state(w.pid) != Some('T') {
            assert!(Instant::now() < deadline, "the final round never froze the source");
            std::thread::sleep(Duration::from_micros(500));
        }
    } else {
        std::thread::sleep(Duration::from_millis(200));
        assert_ne!(proc_state(w.pid), Some('T'));
    }
    tx.kill().unwrap();
    tx.wait().unwrap();
    assert!(!wait_exit(&mut rx, 60).success(), "receiver must fail when the sender dies");
    assert!(!images.exists(), "no image directory after a failed migration");
    assert_alive_and_intact(&mut w);
}

#[test]
fn sender_killed_mid_round_leaves_source_running() {
    sender_killed(false);
}

#[test]
fn sender_killed_in_the_frozen_final_round_leaves_source_running() {
    sender_killed(true);
}
