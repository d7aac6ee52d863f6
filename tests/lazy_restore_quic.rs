//! Lazy restore over QUIC on this host, no CRIU: `pagestream serve-lazy -D DIR` on the "source",
//! `pagestream lazy-pages --from` on the "destination" (mutual TLS on loopback), and the test
//! restorer reading every byte back with 1 and 4 threads faulting concurrently. Checked: every
//! byte, the pages coming from the urgent stream and the background push (and, with
//! `--no-push`, every page fetched on faults alone), the source's session ending with Done. Then the link is cut (a UDP relay in the test drops every
//! packet for 5 s, longer than the 3 s QUIC idle timeout) while faults are still to come (the
//! source serving faults only, so that they must cross the link): the
//! restored process waits, the daemon reconnects with the same session, and the restore
//! completes with every byte right. And a working set: the runs one restore faulted on
//! (`--record-working-set`) are pushed first by the next restore's source (`--working-set`).

mod common;
mod lazy_common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{pagestream, stderr};
use lazy_common::{build_images, json_of, restorer, start_daemon_with, wait_pair, wait_with_timeout};

const REGION_PAGES: u64 = 64 + 3 + 40 + 2048;

fn certs(dir: &Path) {
    let o = pagestream(&["certs", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn tls(certs: &Path, side: &str) -> Vec<String> {
    vec![
        "--tls-cacert".into(),
        certs.join("cacert.pem").display().to_string(),
        "--tls-cert".into(),
        certs.join(format!("{side}-cert.pem")).display().to_string(),
        "--tls-key".into(),
        certs.join(format!("{side}-key.pem")).display().to_string(),
    ]
}

/// A child process killed when dropped (a failing test leaves no server behind).
struct Source(Option<Child>);

impl Source {
    fn wait(mut self, limit: Duration) -> std::process::Output {
        wait_with_timeout(self.0.take().expect("not waited yet"), limit)
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `pagestream serve-lazy` for one session; returns it and its address.
fn source(images: &Path, certs: &Path, extra: &[&str]) -> (Source, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagestream"))
        .args(["serve-lazy", "--listen", "127.0.0.1:0", "--sessions", "1", "-D"])
        .arg(images)
        .args(extra)
        .args(tls(certs, "server"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.trim_end().rsplit(" on ").next().filter(|_| line.contains("serving")) {
            let addr = rest.parse().unwrap();
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::stderr()));
            return (Source(Some(child)), addr);
        }
        line.clear();
    }
    let _ = child.kill();
    let status = child.wait();
    panic!("serve-lazy did not start ({status:?})");
}

fn daemon_args(from: SocketAddr, certs: &Path) -> Vec<String> {
    let mut v = vec!["--from".to_string(), from.to_string(), "--tls-server-name".into(), "localhost".into()];
    v.extend(tls(certs, "client"));
    v
}

/// A restore with `threads` faulting threads; `push: false` runs the source with `--no-push`;
/// the restorer starts `late` after the daemon; `daemon_extra` are more daemon options.
fn restore_over_quic(threads: usize, push: bool, late: Duration, daemon_extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let (images, lazy_pages) = build_images(tmp.path());
    let certs_dir = tmp.path().join("certs");
    certs(&certs_dir);
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let (src, addr) = source(&images, &certs_dir, if push { &[] } else { &["--no-push"] });
    let mut args = daemon_args(addr, &certs_dir);
    args.extend(daemon_extra.iter().map(|a| a.to_string()));
    let daemon = start_daemon_with(&images, &work, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let threads = threads.to_string();
    std::thread::sleep(late);
    let (r, d) = wait_pair(restorer(&images, &work, &["--threads", &threads]), daemon);
    let (rs, ds) = (String::from_utf8_lossy(&r.stderr), String::from_utf8_lossy(&d.stderr));
    assert!(r.status.success(), "restorer failed: {rs}\ndaemon: {ds}");
    assert!(d.status.success(), "daemon failed: {ds}\nrestorer: {rs}");
    let rj = json_of(&r);
    assert_eq!((rj["pages_verified"].as_u64(), rj["mismatches"].as_u64()), (Some(REGION_PAGES), Some(0)), "{rj}");
    let dj = json_of(&d);
    eprintln!("restorer {rj}\ndaemon {dj}");
    let n = |k: &str| dj[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {dj}"));
    let remote = |k: &str| dj["remote"][k].as_u64().unwrap_or_else(|| panic!("remote.{k} missing in {dj}"));
    assert_eq!(n("lazy_pages"), lazy_pages, "{dj}");
    assert_eq!(n("pages_faulted") + n("pages_pushed"), lazy_pages, "{dj}");
    assert_eq!(remote("source_lazy_pages"), lazy_pages, "{dj}");
    assert_eq!(remote("fetched_pages") + remote("pushed_pages_used"), lazy_pages, "{dj}");
    // The daemon keeps its link alive while it waits for the restorer.
    assert_eq!(remote("reconnects"), 0, "{dj}");
    if push {
        // Whether any fault outruns the push is a race; that the push carried pages is not.
        assert!(remote("pushed_pages_used") > 0, "the background push was used: {dj}");
    } else {
        assert_eq!((remote("fetched_pages"), remote("pushed_pages_received")), (lazy_pages, 0), "{dj}");
    }
    let out = src.wait(Duration::from_secs(30));
    assert!(out.status.success(), "serve-lazy: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("session 1 complete"), "{out:?}");
}

#[test]
fn one_thread_over_quic_reads_every_byte() {
    restore_over_quic(1, true, Duration::ZERO, &[]);
}

#[test]
fn four_threads_fault_concurrently_over_quic() {
    // A push window of a few frames and a cache far smaller than the image: the push pauses
    // while the cache is full and goes on as the daemon installs pages.
    restore_over_quic(4, true, Duration::ZERO, &["--push-window", "512K", "--push-wait-ms", "1", "--push-cache", "1M"]);
}

#[test]
fn faults_alone_over_the_urgent_stream_bring_every_page() {
    restore_over_quic(2, false, Duration::ZERO, &[]);
}

/// The restorer connects after longer than the daemon's idle timeout (3 s): the daemon's
/// connection, driven by its own thread, must stay alive while it waits on the handoff socket.
#[test]
fn a_restorer_coming_late_finds_the_link_alive() {
    restore_over_quic(1, true, Duration::from_secs(4), &[]);
}

/// A UDP relay between the daemon and the source that drops everything while `cut` is set.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(upstream).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (front, back) = (Arc::new(front), Arc::new(back));
        {
            let (front, back, cut, stop, client) =
                (front.clone(), back.clone(), cut.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        if !cut.load(Ordering::Relaxed) {
                            let _ = back.send(&buf[..n]);
                        }
                    }
                }
            });
        }
        {
            let (cut, stop) = (cut.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = back.recv(&mut buf) {
                        let to = *client.lock().unwrap();
                        if let (Some(to), false) = (to, cut.load(Ordering::Relaxed)) {
                            let _ = front.send_to(&buf[..n], to);
                        }
                    }
                }
            });
        }
        Relay { addr, cut, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_link_cut_mid_restore_is_survived_and_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, lazy_pages) = build_images(tmp.path());
    let certs_dir = tmp.path().join("certs");
    certs(&certs_dir);
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // Faults only: every page after the pause needs the network, whatever the push would have
    // managed before the cut.
    let (src, addr) = source(&images, &certs_dir, &["--no-push"]);
    let relay = Relay::start(addr);
    let args = daemon_args(relay.addr, &certs_dir);
    let daemon = start_daemon_with(&images, &work, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut r = restorer(&images, &work, &["--threads", "2", "--pause-ms", "1500"]);
    let mut err = BufReader::new(r.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("paused") {
        line.clear();
    }
    assert!(line.contains("paused"), "the restorer never paused");
    relay.cut.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(5));
    relay.cut.store(false, Ordering::Relaxed);
    let (r, d) = wait_pair(r, daemon);
    let ds = String::from_utf8_lossy(&d.stderr);
    assert!(r.status.success(), "the restored process did not survive the outage; daemon: {ds}");
    assert!(d.status.success(), "daemon failed: {ds}");
    let rj = json_of(&r);
    assert_eq!((rj["pages_verified"].as_u64(), rj["mismatches"].as_u64()), (Some(REGION_PAGES), Some(0)), "{rj}");
    let dj = json_of(&d);
    eprintln!("daemon {dj}");
    assert_eq!(dj["pages_faulted"].as_u64().unwrap() + dj["pages_pushed"].as_u64().unwrap(), lazy_pages, "{dj}");
    assert!(dj["remote"]["reconnects"].as_u64().unwrap() >= 1, "{dj}");
    assert!(dj["remote"]["longest_outage_ms"].as_u64().unwrap() >= 1000, "{dj}");
    let out = src.wait(Duration::from_secs(30));
    assert!(out.status.success(), "serve-lazy: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("connection(s)"), "{out:?}");
}

#[test]
fn a_recorded_working_set_is_pushed_first_next_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, _) = build_images(tmp.path());
    let certs_dir = tmp.path().join("certs");
    certs(&certs_dir);
    let ws = tmp.path().join("working-set");
    let ws_arg = ws.display().to_string();
    for (pass, source_extra, daemon_extra) in [
        (1, vec!["--no-push"], vec!["--record-working-set", ws_arg.as_str()]),
        (2, vec!["--working-set", ws_arg.as_str()], vec![]),
    ] {
        let work = tmp.path().join(format!("work{pass}"));
        std::fs::create_dir(&work).unwrap();
        let (src, addr) = source(&images, &certs_dir, &source_extra);
        let mut args = daemon_args(addr, &certs_dir);
        args.extend(daemon_extra.iter().map(|s| s.to_string()));
        let daemon = start_daemon_with(&images, &work, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let (r, d) = wait_pair(restorer(&images, &work, &["--threads", "1"]), daemon);
        assert!(r.status.success() && d.status.success(), "pass {pass}: {}", String::from_utf8_lossy(&d.stderr));
        assert_eq!(json_of(&r)["mismatches"].as_u64(), Some(0));
        let out = src.wait(Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("pass {pass}: {text}");
        if pass == 1 {
            // Every page installed by a fault is in the working set, once.
            let recorded = std::fs::read_to_string(&ws).unwrap();
            let pages: u64 = recorded.lines().map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum();
            assert_eq!(Some(pages), json_of(&d)["pages_faulted"].as_u64(), "{recorded}");
            assert!(pages > 0);
        } else {
            let first: u64 = text
                .split(" of them first")
                .next()
                .and_then(|h| h.rsplit('(').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("{text}"));
            assert!(first > 0, "the working set was pushed first: {text}");
        }
    }
}
