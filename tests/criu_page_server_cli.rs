//! `pagestream page-server` as a process: a listening server that reports each session and exits
//! after `--sessions N` (non-zero when one failed), and `--listen-fd` serving one session on an
//! inherited, already connected socket (here a UNIX socket pair on stdin, as an inetd or CRIU's
//! `--ps-socket` wrapper would pass it) that ends with FORCE_CLOSE.

mod criu_page_server_client;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criu_page_server_client::{names, pattern, ps, Client, PageFlags};
use pagestream_engine::criu::ImageChain;
use pagestream_transport::criu_ps::{DstId, HeaderLayout};

const BIN: &str = env!("CARGO_BIN_EXE_pagestream");
const A: DstId = DstId::task(4242);

fn page_server(args: &[&str], images: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("page-server").arg("--images-dir").arg(images).args(args);
    cmd
}

#[test]
fn listening_server_reports_sessions_and_fails_when_one_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("ps");
    let mut child = page_server(&["--listen", "127.0.0.1:0", "--sessions", "2"], &images)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr: SocketAddr = first
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    assert!(first.contains("(next session 1)"), "{first}");

    let mut bad = Client::connect(addr, HeaderLayout::Legacy24);
    bad.open2(A);
    bad.add_f(A, 0x1000, 1, PageFlags::PARENT, &[]);
    assert!(bad.hang_up().is_empty());

    let mut good = Client::connect(addr, HeaderLayout::Legacy24);
    assert!(!good.open2(A));
    good.add_f(A, 0x1000, 2, PageFlags::PRESENT | PageFlags::LAZY, &pattern(7, 2));
    assert_eq!(good.close(false), 0);

    let status = child.wait().unwrap();
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "one session failed, so the exit status is 1\n{out}\n{err}");
    assert!(err.contains("session 1 from 127.0.0.1:") && err.contains("FAILED"), "{err}");
    assert!(err.contains("but there is no parent pagemap-4242.img"), "{err}");
    assert!(err.contains("nothing of it was committed"), "{err}");
    assert!(err.contains("error: 1 of 2 sessions failed"), "{err}");
    let committed = out.lines().find(|l| l.starts_with("session 1 committed from 127.0.0.1:")).expect(&out);
    assert!(committed.contains("1 pagemaps, 2 pages of data") && committed.contains("24-byte headers"), "{committed}");
    assert!(out.contains("served 2 sessions: 1 committed, 1 failed"), "{out}");
    assert_eq!(names(&images), ["1", "last"]);
    ImageChain::open(&images.join("last"), None, ps()).unwrap().verify().unwrap();
}

#[test]
fn inherited_socket_serves_one_session_ending_in_force_close() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("ps");
    let (client_end, server_end) = UnixStream::pair().unwrap();
    client_end.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let child = page_server(&["--listen-fd", "0", "--header-layout", "32"], &images)
        .stdin(Stdio::from(OwnedFd::from(server_end)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = Client::over(client_end, HeaderLayout::Wide32);
    assert!(!c.parent(A));
    assert!(!c.open2(A));
    c.add_f(A, 0x7f00_0000_0000, 3, PageFlags::PRESENT, &pattern(3, 3));
    assert_eq!(c.close(true), 0, "FORCE_CLOSE is answered like CLOSE");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("session 1 committed: ") && stdout.contains("32-byte headers"), "{stdout}");
    assert_eq!(names(&images), ["1", "last"]);
}

#[test]
fn refuses_an_inherited_fd_that_is_not_a_connected_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("ps");
    let file = std::fs::File::open(BIN).unwrap();
    let out = page_server(&["--listen-fd", "0"], &images).stdin(file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen-fd 0 is not a socket"), "{out:?}");
    let out = page_server(&["--listen-fd", "987"], &images).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen-fd 987: no such open file descriptor"));
    let out = page_server(&["--header-layout", "28"], &images).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad layout is a command-line error");
    assert!(!images.exists(), "nothing was created");
}
