//! `pagestream receive --criu-sessions` as a process, fed by `pagestream page-server --to` (both
//! real binaries, mutual TLS on loopback) and a CRIU-like client: two sessions form the chain
//! `DIR/1`, `DIR/2 -> ../1`, `DIR/last`, reported one line each; a destination killed with SIGKILL
//! in the middle of a session leaves CRIU without a CLOSE reply (the source notices within the
//! QUIC idle timeout) and commits nothing.

mod common;
mod criu_page_server_client;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{pagestream, stderr};
use criu_page_server_client::{names, pattern, ps, Client, PageFlags};
use pagestream_engine::criu::ImageChain;
use pagestream_transport::criu_ps::{DstId, HeaderLayout, PsCommand};

const A: DstId = DstId::task(100);
const HEAP: u64 = 0x7f00_0000_0000;
const BIN: &str = env!("CARGO_BIN_EXE_pagestream");

fn tls(dir: &Path, side: &str) -> Vec<String> {
    let f = |n: &str| dir.join(n).display().to_string();
    let (cert, key) = (f(&format!("{side}-cert.pem")), f(&format!("{side}-key.pem")));
    vec!["--tls-cacert".into(), f("cacert.pem"), "--tls-cert".into(), cert, "--tls-key".into(), key]
}

/// Spawns `args`, reads lines from stdout (or stderr) until one contains `marker`; returns the
/// child and the address that follows `marker`.
fn spawn(args: &[String], from_stderr: bool, marker: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let line = if from_stderr {
        let mut r = BufReader::new(child.stderr.take().unwrap());
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        std::thread::spawn(move || r.read_to_string(&mut String::new()));
        l
    } else {
        let mut r = BufReader::new(child.stdout.take().unwrap());
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        std::thread::spawn(move || r.read_to_string(&mut String::new()));
        l
    };
    let addr = line
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address after {marker:?} in {line:?}"));
    (child, addr)
}

fn output(mut child: Child) -> (Option<i32>, String) {
    let status = child.wait().unwrap();
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out).unwrap();
    }
    (status.code(), out)
}

fn destination(root: &Path, certs: &Path, sessions: u32) -> (Child, SocketAddr) {
    let mut args: Vec<String> =
        ["receive", "--criu-sessions", "--listen", "127.0.0.1:0", "--images-dir"].into_iter().map(Into::into).collect();
    args.extend([root.display().to_string(), "--sessions".into(), sessions.to_string()]);
    args.extend(tls(certs, "server"));
    spawn(&args, true, "receiving CRIU page-server sessions on ")
}

fn source(dest: SocketAddr, certs: &Path, sessions: u32) -> (Child, SocketAddr) {
    let mut args: Vec<String> =
        ["page-server", "--listen", "127.0.0.1:0", "--to"].into_iter().map(Into::into).collect();
    args.extend([dest.to_string(), "--sessions".into(), sessions.to_string()]);
    args.extend(tls(certs, "client"));
    spawn(&args, false, "listening on ")
}

fn certs(dir: &Path) {
    let o = pagestream(&["certs", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn receive_criu_sessions_stores_a_relayed_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let certs_dir = tmp.path().join("certs");
    certs(&certs_dir);
    let root = tmp.path().join("ps");
    let (dest, dest_addr) = destination(&root, &certs_dir, 2);
    let (src, addr) = source(dest_addr, &certs_dir, 2);

    let mut c = Client::connect(addr, HeaderLayout::Legacy24);
    assert!(!c.open2(A));
    c.add_f(A, HEAP, 8, PageFlags::PRESENT, &pattern(1, 8));
    assert_eq!(c.close(false), 0);
    let mut c = Client::connect(addr, HeaderLayout::Legacy24);
    assert!(c.parent(A), "the destination holds DIR/1/pagemap-100.img");
    assert!(c.open2(A));
    c.add_f(A, HEAP, 4, PageFlags::PARENT, &[]);
    c.add_f(A, HEAP + 4 * ps(), 4, PageFlags::PRESENT, &pattern(2, 4));
    assert_eq!(c.close(false), 0);

    let (code, out) = output(dest);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("session 1 committed from 127.0.0.1:"), "{out}");
    let s2 = out.lines().find(|l| l.starts_with("session 2 committed from")).expect(&out);
    assert!(s2.contains("4 pages in parent") && s2.contains("has_parent answered yes 2 / no 0"), "{s2}");
    assert!(out.contains("served 2 sessions: 2 committed, 0 failed"), "{out}");
    assert_eq!(output(src).0, Some(0));
    assert_eq!(names(&root), ["1", "2", "last"]);
    assert_eq!(fs::read_link(root.join("2/parent")).unwrap(), Path::new("../1"));
    ImageChain::open(&root.join("last"), None, ps()).unwrap().verify().unwrap();
}

#[test]
fn destination_killed_mid_session_commits_nothing_and_criu_gets_no_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let certs_dir = tmp.path().join("certs");
    certs(&certs_dir);
    let root = tmp.path().join("ps");
    let (mut dest, dest_addr) = destination(&root, &certs_dir, 1);
    let (src, addr) = source(dest_addr, &certs_dir, 1);

    let mut c = Client::connect(addr, HeaderLayout::Legacy24);
    assert!(!c.open2(A));
    c.add_f(A, HEAP, 16, PageFlags::PRESENT, &pattern(1, 16));
    assert!(!c.open2(DstId::task(101)), "the destination has everything so far");
    dest.kill().unwrap(); // SIGKILL: no CONNECTION_CLOSE, the source must notice by itself
    dest.wait().unwrap();
    let started = Instant::now();
    let mut rest =
        c.header(PsCommand::AddF { dst: DstId::task(101), vaddr: HEAP, nr_pages: 1, flags: PageFlags::PRESENT });
    rest.extend(pattern(3, 1));
    rest.extend(c.header(PsCommand::Close));
    let _ = c.raw(&rest);
    assert!(c.hang_up().is_empty(), "no CLOSE reply from a dead destination");
    assert!(started.elapsed() < Duration::from_secs(25), "noticed within the QUIC idle timeout");
    let (code, _) = output(src);
    assert_eq!(code, Some(1));
    let left: Vec<String> = names(&root).into_iter().filter(|n| !n.starts_with('.')).collect();
    assert!(left.is_empty(), "nothing committed: {left:?}");
}
