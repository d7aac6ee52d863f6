//! CRIU page-server sessions relayed over QUIC: a CRIU-like client (built from the codec) dumps to
//! `pagestream page-server --to` (the real binary), which relays over loopback QUIC with mutual
//! TLS (certificates from `pagestream certs`) to a [`RelayReceiver`] — the destination that
//! `pagestream receive --criu-sessions` runs — writing `DIR/1`, `DIR/2 -> parent ../1`,
//! `DIR/last`. Checked: the chain verifies and holds the bytes sent (zero, LZ4 and raw chunks),
//! has_parent comes from the destination, both header layouts pass; bad input from CRIU and an
//! entry the destination refuses fail their session (no CLOSE reply, nothing committed) and the
//! next session works; a destination that goes away mid-session leaves CRIU without a CLOSE reply
//! and nothing committed; a native receiver refuses the relay's ALPN (and CRIU is hung up on); an
//! inherited socket (`--listen-fd`) is relayed too, its FORCE_CLOSE answered after the commit.

mod common;
mod criu_page_server_client;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{pagestream, stderr};
use criu_page_server_client::{names, pattern, ps, Client, PageFlags};
use pagestream_engine::criu::session_dirs::SessionDirs;
use pagestream_engine::criu::{ImageChain, PageLookup};
use pagestream_transport::criu_ps::session::pagemap_id;
use pagestream_transport::criu_ps::tcp_server::ServeTotals;
use pagestream_transport::criu_ps::{DstId, HeaderLayout, PsCommand};
use pagestream_transport::quic::{Receiver, Security, TlsFiles};
use pagestream_transport::relay::{DestinationSummary, RelayConfig, RelayReceiver, RelaySource};

const A: DstId = DstId::task(100);
const B: DstId = DstId::task(101);
const C: DstId = DstId::task(102);
const SHM: DstId = DstId::shmem(5000);
const HEAP: u64 = 0x7f00_0000_0000;
const TEXT: u64 = 0x40_0000;
/// Pages of B's big entry: 100 zero pages then 100 pages of data (several chunks).
const BIG: u64 = 200;

fn certs(dir: &Path) -> PathBuf {
    let o = pagestream(&["certs", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir.to_path_buf()
}

fn tls_files(dir: &Path, side: &str) -> TlsFiles {
    TlsFiles {
        cacert: dir.join("cacert.pem"),
        cert: dir.join(format!("{side}-cert.pem")),
        key: dir.join(format!("{side}-key.pem")),
    }
}

type Outcome = (Option<u64>, Result<DestinationSummary, String>);

/// The destination, in a thread: what `pagestream receive --criu-sessions` runs.
struct Destination {
    receiver: Arc<RelayReceiver>,
    reports: mpsc::Receiver<Outcome>,
    thread: Option<JoinHandle<Result<ServeTotals, String>>>,
}

impl Destination {
    fn start(root: &Path, certs: &Path, sessions: u64) -> Destination {
        let security = Security::MutualTls(tls_files(certs, "server"));
        let receiver = Arc::new(RelayReceiver::bind("127.0.0.1:0".parse().unwrap(), &security).unwrap());
        let dirs = SessionDirs::open(root, ps()).unwrap();
        let (tx, reports) = mpsc::channel();
        let r = receiver.clone();
        let thread = std::thread::spawn(move || {
            r.serve(&dirs, Some(sessions), |rep| {
                let _ = tx.send((rep.number, rep.result.as_ref().map(Clone::clone).map_err(|e| e.to_string())));
            })
            .map_err(|e| e.to_string())
        });
        Destination { receiver, reports, thread: Some(thread) }
    }

    fn addr(&self) -> SocketAddr {
        self.receiver.local_addr()
    }

    fn next(&self) -> Outcome {
        self.reports.recv_timeout(Duration::from_secs(60)).expect("the destination reported no session within 60 s")
    }

    fn join(mut self) -> Result<ServeTotals, String> {
        self.thread.take().unwrap().join().expect("destination thread")
    }
}

/// `pagestream page-server --to` as a process.
struct Source {
    child: Child,
    addr: SocketAddr,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Source {
    fn start(dest: SocketAddr, certs: &Path, sessions: u32) -> Source {
        let f = tls_files(certs, "client");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pagestream"))
            .args(["page-server", "--listen", "127.0.0.1:0", "--to", &dest.to_string(), "--tls-server-name"])
            .args(["localhost", "--sessions", &sessions.to_string()])
            .arg("--tls-cacert")
            .arg(&f.cacert)
            .arg("--tls-cert")
            .arg(&f.cert)
            .arg("--tls-key")
            .arg(&f.key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split(',').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        assert!(first.contains(&format!("relaying sessions to {dest}")), "{first}");
        Source { child, addr, stdout }
    }

    /// Waits for the exit; returns (exit code, stdout, stderr).
    fn wait(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status.code(), out, err)
    }
}

fn page(data: &[u8], i: u64) -> Vec<u8> {
    let ps = ps() as usize;
    data[i as usize * ps..(i as usize + 1) * ps].to_vec()
}

fn big() -> Vec<u8> {
    let mut v = vec![0u8; (BIG / 2 * ps()) as usize];
    v.extend(pattern(9, BIG / 2));
    v
}

/// `(zero, lz4, raw)` from a "session relayed" line of the source.
fn chunks(line: &str) -> (u64, u64, u64) {
    let rest = line.split("chunks: ").nth(1).unwrap_or_else(|| panic!("{line}"));
    let n: Vec<u64> = rest.split([' ', ',', ';']).filter_map(|w| w.parse().ok()).take(3).collect();
    (n[0], n[1], n[2])
}

#[test]
fn chain_relayed_over_quic_matches_what_criu_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let root = tmp.path().join("images");
    let dest = Destination::start(&root, &certs, 2);
    let source = Source::start(dest.addr(), &certs, 2);
    let ps = ps();
    let (heap, stack, shm, big, heap2, c_data) =
        (pattern(1, 3), pattern(40, 1), pattern(80, 4), big(), pattern(120, 1), pattern(140, 1));

    // Session 1: a full dump (24-byte headers).
    let mut c = Client::connect(source.addr, HeaderLayout::Legacy24);
    assert!(!c.open2(A), "nothing at the destination yet");
    c.add_f(A, HEAP, 3, PageFlags::PRESENT | PageFlags::LAZY, &heap);
    c.add_f(A, HEAP + 0x5000, 2, PageFlags::LAZY, &[]);
    c.add_f(A, HEAP + 0x10000, 1, PageFlags::PRESENT, &stack);
    assert!(!c.open2(SHM));
    c.add_f(SHM, 0, 4, PageFlags::PRESENT, &shm);
    assert!(!c.open2(B));
    c.add_f(B, TEXT, BIG, PageFlags::PRESENT, &big);
    assert_eq!(c.close(false), 0);
    let (number, s1) = dest.next();
    let s1 = s1.unwrap_or_else(|e| panic!("session 1 failed: {e}"));
    assert_eq!(number, Some(1));
    assert_eq!((s1.stats.has_parent_true, s1.stats.has_parent_false), (0, 3));
    assert_eq!((s1.stats.present_pages, s1.stats.lazy_pages), (8 + BIG, 2));
    assert!(s1.wire_bytes < (8 + BIG) * ps / 2, "zero chunks and LZ4 shrink the data: {} bytes", s1.wire_bytes);

    // Session 2: an incremental round (32-byte headers, detected through the relay).
    let mut c = Client::connect(source.addr, HeaderLayout::Wide32);
    assert!(c.parent(A), "pre-dump asks PARENT: DIR/1 holds pagemap-100.img");
    assert!(!c.parent(C), "no pagemap-102.img in DIR/1");
    assert!(c.open2(A));
    c.add_f(A, HEAP, 1, PageFlags::PARENT, &[]);
    c.add_f(A, HEAP + ps, 1, PageFlags::PRESENT | PageFlags::LAZY, &heap2);
    c.add_f(A, HEAP + 2 * ps, 1, PageFlags::PARENT | PageFlags::LAZY, &[]);
    c.add_f(A, HEAP + 0x5000, 2, PageFlags::PARENT, &[]);
    c.add_f(A, HEAP + 0x10000, 1, PageFlags::PARENT, &[]);
    assert!(c.open2(B));
    c.add_f(B, TEXT, BIG, PageFlags::PARENT, &[]);
    assert!(!c.open2(C));
    c.add_f(C, 0x1000, 1, PageFlags::PRESENT, &c_data);
    assert!(c.open2(SHM));
    c.send(PsCommand::Hole { dst: SHM, vaddr: 0, nr_pages: 4 }, &[]);
    assert_eq!(c.close(false), 0);
    let s2 = dest.next().1.unwrap_or_else(|e| panic!("session 2 failed: {e}"));
    assert_eq!(s2.committed.number, 2);
    assert_eq!((s2.stats.has_parent_true, s2.stats.has_parent_false), (4, 2));
    assert_eq!((s2.stats.present_pages, s2.stats.parent_pages), (2, 9 + BIG));
    assert_eq!(dest.join().unwrap(), ServeTotals { committed: 2, failed: 0 });

    let (code, out, err) = source.wait();
    assert_eq!(code, Some(0), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("session relayed from 127.0.0.1:")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("committed as session 1") && lines[0].contains("24-byte headers"), "{}", lines[0]);
    assert!(lines[1].contains("committed as session 2") && lines[1].contains("32-byte headers"), "{}", lines[1]);
    let (zero, lz4, _raw) = chunks(lines[0]);
    assert!(zero >= 1 && lz4 >= 1, "{}", lines[0]);
    assert!(out.contains("served 2 sessions: 2 committed, 0 failed"), "{out}");

    assert_eq!(names(&root), ["1", "2", "last"], "no temporary directories or links left");
    assert_eq!(fs::read_link(root.join("2/parent")).unwrap(), Path::new("../1"));
    assert_eq!(fs::read_link(root.join("last")).unwrap(), Path::new("2"));
    let chain = ImageChain::open(&root.join("2"), None, ps).unwrap();
    chain.verify().unwrap();
    let at = |id: DstId, addr: u64| chain.page_at(pagemap_id(id), addr).unwrap();
    let data = PageLookup::Data;
    assert_eq!(at(A, HEAP), data(page(&heap, 0)), "hole -> session 1");
    assert_eq!(at(A, HEAP + ps), data(page(&heap2, 0)), "rewritten in session 2");
    assert_eq!(at(A, HEAP + 2 * ps), data(page(&heap, 2)));
    assert_eq!(at(A, HEAP + 0x5000), PageLookup::Lazy);
    assert_eq!(at(A, HEAP + 0x10000), data(stack.clone()));
    assert_eq!(at(C, 0x1000), data(c_data.clone()));
    for i in 0..BIG {
        assert_eq!(at(B, TEXT + i * ps), data(page(&big, i)), "B page {i}");
    }
    for i in 0..4 {
        assert_eq!(at(SHM, i * ps), data(page(&shm, i)), "shmem page {i}");
    }
}

#[test]
fn bad_sessions_commit_nothing_and_the_next_one_works() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let root = tmp.path().join("images");
    let dest = Destination::start(&root, &certs, 3);
    let source = Source::start(dest.addr(), &certs, 3);

    // Garbage from CRIU: the source's decoder refuses it.
    let mut bad = Client::connect(source.addr, HeaderLayout::Legacy24);
    let mut garbage = vec![0u8; 24];
    garbage[0] = 0x99;
    bad.raw(&garbage).unwrap();
    assert!(bad.hang_up().is_empty(), "no reply for a failed session");
    let (number, r1) = dest.next();
    let e1 = r1.unwrap_err();
    assert_eq!(number, Some(1));
    assert!(e1.contains("source aborted") && e1.contains("unknown page-server command 0x99"), "{e1}");

    // An entry the destination refuses (PE_PARENT without a parent), then CLOSE: no reply.
    let mut refused = Client::connect(source.addr, HeaderLayout::Legacy24);
    assert!(!refused.open2(A));
    refused.add_f(A, HEAP, 1, PageFlags::PARENT, &[]);
    let close = refused.header(PsCommand::Close);
    let _ = refused.raw(&close); // the relay may have hung up already
    assert!(refused.hang_up().is_empty(), "CLOSE of a failed session is not answered");
    let e2 = dest.next().1.unwrap_err();
    assert!(e2.contains("but there is no parent pagemap-100.img"), "{e2}");

    let mut good = Client::connect(source.addr, HeaderLayout::Legacy24);
    assert!(!good.open2(A));
    good.add_f(A, HEAP, 2, PageFlags::PRESENT, &pattern(3, 2));
    assert_eq!(good.close(false), 0);
    let (number, r3) = dest.next();
    assert_eq!(number, Some(1), "failed sessions leave their number to the next one");
    assert_eq!(r3.unwrap().committed.number, 1);
    assert_eq!(dest.join().unwrap(), ServeTotals { committed: 1, failed: 2 });

    let (code, out, err) = source.wait();
    assert_eq!(code, Some(1), "two sessions failed\n{out}\n{err}");
    assert!(err.contains("FAILED") && err.contains("unknown page-server command 0x99"), "{err}");
    assert!(err.contains("the destination failed the session") || err.contains("aborted"), "{err}");
    assert!(out.contains("served 3 sessions: 1 committed, 2 failed"), "{out}");
    assert_eq!(names(&root), ["1", "last"]);
    ImageChain::open(&root.join("last"), None, ps()).unwrap().verify().unwrap();
}

#[test]
fn destination_lost_mid_session_leaves_criu_without_close_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let root = tmp.path().join("images");
    let dest = Destination::start(&root, &certs, 1);
    let source = Source::start(dest.addr(), &certs, 1);

    let mut c = Client::connect(source.addr, HeaderLayout::Legacy24);
    assert!(!c.open2(A), "the relay is up");
    c.add_f(A, HEAP, 64, PageFlags::PRESENT, &pattern(5, 64));
    c.add_f(A, HEAP + 0x100000, 1, PageFlags::PRESENT, &pattern(6, 1));
    assert!(!c.open2(B), "every page so far reached the destination");
    dest.receiver.close();
    let (number, r) = dest.next();
    assert_eq!(number, Some(1));
    assert!(r.is_err(), "the session cannot commit once the destination is gone");
    // The source learns of the loss on its next write and hangs up: writes may fail from here.
    let mut rest = c.header(PsCommand::AddF { dst: B, vaddr: TEXT, nr_pages: 2, flags: PageFlags::PRESENT });
    rest.extend(pattern(7, 2));
    rest.extend(c.header(PsCommand::Close));
    let _ = c.raw(&rest);
    assert!(c.hang_up().is_empty(), "CRIU gets no CLOSE reply");

    let (code, out, err) = source.wait();
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("FAILED") && err.contains("nothing of it was committed"), "{err}");
    let _ = dest.join();
    assert!(names(&root).is_empty(), "nothing committed, nothing left: {:?}", names(&root));
}

#[test]
fn a_native_receiver_and_the_relay_do_not_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let native =
        Receiver::bind("127.0.0.1:0".parse().unwrap(), Security::MutualTls(tls_files(&certs, "server"))).unwrap();
    let native_addr = native.local_addr();
    let img = tmp.path().join("img");
    let served = std::thread::spawn(move || native.serve_one(&img, |_| {}).map(|_| ()).map_err(|e| e.to_string()));
    let cfg = RelayConfig::new(Security::MutualTls(tls_files(&certs, "client")), "localhost".into(), ps());
    let source = RelaySource::new(native_addr, cfg).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = Client::connect(listener.local_addr().unwrap(), HeaderLayout::Legacy24);
    let (stream, peer) = listener.accept().unwrap();
    let report = source.relay_connection(stream, Some(peer));
    let err = report.result.unwrap_err().to_string();
    assert!(err.contains("cannot connect to") && err.contains("known protocol"), "{err}");
    assert!(client.hang_up().is_empty(), "CRIU is hung up on at once");
    let native_err = served.join().unwrap().unwrap_err();
    assert!(native_err.contains("known protocol"), "{native_err}");
    assert!(!tmp.path().join("img").exists());
}

#[test]
fn inherited_socket_session_is_relayed_and_force_close_answered_after_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let root = tmp.path().join("images");
    let dest = Destination::start(&root, &certs, 1);
    let (client_end, server_end) = UnixStream::pair().unwrap();
    client_end.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let f = tls_files(&certs, "client");
    let child = Command::new(env!("CARGO_BIN_EXE_pagestream"))
        .args(["page-server", "--listen-fd", "0", "--header-layout", "32", "--to", &dest.addr().to_string()])
        .arg("--tls-cacert")
        .arg(&f.cacert)
        .arg("--tls-cert")
        .arg(&f.cert)
        .arg("--tls-key")
        .arg(&f.key)
        .stdin(Stdio::from(OwnedFd::from(server_end)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = Client::over(client_end, HeaderLayout::Wide32);
    assert!(!c.parent(A));
    assert!(!c.open2(A));
    c.add_f(A, HEAP, 3, PageFlags::PRESENT, &pattern(3, 3));
    assert_eq!(c.close(true), 0, "FORCE_CLOSE is answered like CLOSE");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("relaying the session on fd 0 to "), "{stdout}");
    assert!(stdout.contains("committed as session 1") && stdout.contains("32-byte headers"), "{stdout}");
    assert_eq!(dest.next().1.unwrap().committed.number, 1);
    assert_eq!(names(&root), ["1", "last"]);
}
