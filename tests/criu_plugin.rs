//! The CRIU plugin (`libpagestream_criu.so`) loaded the way CRIU 3.17 loads plugins: a small C
//! loader built against CRIU's installed `criu/criu-plugin.h` (so the descriptor layout checked is
//! CRIU's) dlopens it, applies CRIU's checks (`CR_PLUGIN_DESC` found, version <= 0x200,
//! `max_hooks` within 3.17's limit) and calls `init`/`exit` per stage, exporting CRIU's
//! `print_on_level` and `criu_get_image_dir`. A CRIU-like client plays `criu dump --page-server`
//! against the plugin's listener; the destination is the real `pagestream receive
//! --criu-sessions`. Checked: misconfiguration fails `init` with the variable named; a pre-dump
//! then a dump arrive as `DIR/1` and `DIR/2 -> ../1`, the dump with every image file (not the
//! log) and the commit marker, and restore accepts it while refusing an unmarked directory; a
//! failed dump commits nothing; a destination lost before the commit makes the plugin end CRIU
//! before CRIU could stop the dumped tasks; a dump that never reached the plugin does the same.
//! Real CRIU runs the plugin in the guest (tests/guest_plugin.rs) and with CRIU 4.1.1 on the host.

mod common;
mod criu_page_server_client;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{pagestream, plugin_so, stderr};
use criu_page_server_client::{pattern, ps, Client, PageFlags};
use pagestream_engine::criu::{CommitMarker, ImageChain, PageLookup};
use pagestream_transport::criu_ps::{DstId, HeaderLayout};

const A: DstId = DstId::task(100);
const HEAP: u64 = 0x7f00_0000_0000;
const BIN: &str = env!("CARGO_BIN_EXE_pagestream");
const HEADER: &str = "/usr/include/criu/criu-plugin.h";
const DUMP: u32 = 0;
const PRE_DUMP: u32 = 1;
const RESTORE: u32 = 2;

/// Builds the loader, or says why the test is skipped (CRIU's header comes with the criu package;
/// as root or in CI it is required).
fn loader(dir: &Path) -> Option<PathBuf> {
    if !Path::new(HEADER).exists() {
        let required = std::env::var("PAGESTREAM_REQUIRE").unwrap_or_default();
        assert!(
            !required.contains("crit"),
            "{HEADER} is required (PAGESTREAM_REQUIRE={required}): apt-get install criu"
        );
        eprintln!("skipped: {HEADER} missing (apt-get install criu provides it)");
        return None;
    }
    let out = dir.join("loader");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/criu_plugin/loader.c");
    let o = Command::new("cc").args(["-O1", "-Wall", "-rdynamic", "-o"]).arg(&out).arg(&src).arg("-ldl").output();
    let o = o.expect("run cc");
    assert!(o.status.success(), "building the loader failed: {}", stderr(&o));
    Some(out)
}

/// A running loader: its stdout lines arrive on a channel.
struct Loaded {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Loaded {
    fn start(loader: &Path, stage: u32, images: &Path, env: &[(&str, String)]) -> Loaded {
        let mut cmd = Command::new(loader);
        cmd.arg(plugin_so()).arg(stage.to_string()).arg(images);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PAGESTREAM_")) {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("start the loader");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("loader: {line}");
                let _ = tx.send(line);
            }
        });
        Loaded { stdin: child.stdin.take(), child, lines, seen: Vec::new() }
    }

    /// Waits for a line containing `text`.
    fn expect(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
        panic!("the loader never printed {text:?}; it printed {:#?}", self.seen);
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the exit; returns the status and every line printed.
    fn wait(mut self) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        (status, self.seen)
    }
}

fn certs(dir: &Path) {
    let o = pagestream(&["certs", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `pagestream receive --criu-sessions` for `sessions` sessions; returns it and its address.
fn destination(root: &Path, certs: &Path, sessions: u32) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["receive", "--criu-sessions", "--listen", "127.0.0.1:0", "--images-dir"])
        .arg(root)
        .args(["--sessions", &sessions.to_string(), "--tls-cacert"])
        .arg(certs.join("cacert.pem"))
        .arg("--tls-cert")
        .arg(certs.join("server-cert.pem"))
        .arg("--tls-key")
        .arg(certs.join("server-key.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.split("receiving CRIU page-server sessions on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::stderr()));
            return (child, addr);
        }
        line.clear();
    }
    let _ = child.kill();
    let status = child.wait();
    panic!("the destination did not start ({status:?})");
}

fn plugin_env(dest: SocketAddr, listen: SocketAddr, certs: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("PAGESTREAM_TO", dest.to_string()),
        ("PAGESTREAM_LISTEN", listen.to_string()),
        ("PAGESTREAM_TLS_CACERT", certs.join("cacert.pem").display().to_string()),
        ("PAGESTREAM_TLS_CERT", certs.join("client-cert.pem").display().to_string()),
        ("PAGESTREAM_TLS_KEY", certs.join("client-key.pem").display().to_string()),
        ("PAGESTREAM_TLS_SERVER_NAME", "localhost".into()),
        ("PAGESTREAM_COMMIT_TIMEOUT", "60".into()),
    ]
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A loader, certificates and a running destination in a scratch directory.
struct Rig {
    tmp: tempfile::TempDir,
    loader: PathBuf,
    certs: PathBuf,
    root: PathBuf,
    dest: Child,
    dest_addr: SocketAddr,
}

impl Rig {
    /// `None` when the loader cannot be built here (skipped).
    fn new(sessions: u32) -> Option<Rig> {
        let tmp = tempfile::tempdir().unwrap();
        let loader = loader(tmp.path())?;
        let certs_dir = tmp.path().join("certs");
        certs(&certs_dir);
        let root = tmp.path().join("dest");
        let (dest, dest_addr) = destination(&root, &certs_dir, sessions);
        Some(Rig { loader, certs: certs_dir, root, dest, dest_addr, tmp })
    }

    /// Loads the plugin for `stage` over a new images directory `name`, configured for this
    /// destination; returns it once `init` succeeded, with CRIU's page-server address.
    fn start(&self, stage: u32, name: &str, env: &[(&'static str, String)]) -> (Loaded, SocketAddr, PathBuf) {
        let images = self.tmp.path().join(name);
        fs::create_dir(&images).unwrap();
        let listen = free_port();
        let mut vars = plugin_env(self.dest_addr, listen, &self.certs);
        vars.retain(|(k, _)| !env.iter().any(|(e, _)| e == k));
        vars.extend(env.iter().cloned());
        let mut l = Loaded::start(&self.loader, stage, &images, &vars);
        l.expect("init=0");
        (l, listen, images)
    }
}

/// Plays CRIU's page-server session: 4 pages of data at HEAP, then CLOSE.
fn criu_session(listen: SocketAddr, seed: u8) -> i32 {
    let mut c = Client::connect(listen, HeaderLayout::Legacy24);
    c.open2(A);
    c.add_f(A, HEAP, 4, PageFlags::PRESENT, &pattern(seed, 4));
    c.close(false)
}

/// The image files a dump leaves in its directory besides pages, plus CRIU's log.
fn write_images(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files = vec![
        ("inventory.img", pattern(1, 1)[..100].to_vec()),
        ("core-100.img", pattern(2, 2)[..5000].to_vec()),
        ("tmpfs-dev-5.tar.gz.img", pattern(3, 200)),
    ];
    for (name, data) in &files {
        fs::write(dir.join(name), data).unwrap();
    }
    fs::write(dir.join("dump.log"), b"CRIU's log, still being written").unwrap();
    files
}

#[test]
fn the_descriptor_passes_criu_317s_checks_and_misconfiguration_fails_init() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(loader) = loader(tmp.path()) else { return };
    let (status, lines) = Loaded::start(&loader, DUMP, tmp.path(), &[]).wait();
    assert_eq!(status.code(), Some(5), "{lines:#?}");
    assert!(
        lines.contains(&"loaded pagestream sizeof=112 version=0x200 max_hooks=10 limit=10".to_string()),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("hook ")), "no hook is set: {lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("log[1] pagestream: PAGESTREAM_TO is not set")), "{lines:#?}");

    let env = [
        ("PAGESTREAM_TO", "127.0.0.1:9".to_string()),
        ("PAGESTREAM_LISTEN", free_port().to_string()),
        ("PAGESTREAM_TLS_CACERT", "/nonexistent/ca.pem".into()),
        ("PAGESTREAM_TLS_CERT", "/nonexistent/c.pem".into()),
        ("PAGESTREAM_TLS_KEY", "/nonexistent/k.pem".into()),
    ];
    let (status, lines) = Loaded::start(&loader, PRE_DUMP, tmp.path(), &env).wait();
    assert_eq!(status.code(), Some(5), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("log[1]") && l.contains("/nonexistent/")), "{lines:#?}");
}

#[test]
fn a_pre_dump_then_a_dump_arrive_whole_and_only_a_marked_directory_restores() {
    let Some(rig) = Rig::new(2) else { return };
    let root = rig.root.clone();
    let (mut l, listen, _) = rig.start(PRE_DUMP, "pre", &[]);
    assert_eq!(criu_session(listen, 7), 0);
    l.expect("pre-dump: no exit");
    let (status, _) = l.wait();
    assert!(status.success());
    assert!(root.join("1/pagemap-100.img").exists(), "the pre-dump was committed on CLOSE");

    let (mut l, listen, images) = rig.start(DUMP, "dump", &[]);
    let files = write_images(&images);
    assert_eq!(criu_session(listen, 9), 0);
    assert!(!root.join("2").exists(), "nothing is committed before exit");
    l.say("exit 0");
    let summary = l.expect("dump committed as session 2");
    assert!(summary.contains("4 pages") && summary.contains("3 image files"), "{summary}");
    l.expect("unloaded");
    let (status, _) = l.wait();
    assert!(status.success());
    let out = rig.dest.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let two = root.join("2");
    assert_eq!(fs::read_link(root.join("last")).unwrap(), Path::new("2"));
    assert_eq!(fs::read_link(two.join("parent")).unwrap(), Path::new("../1"));
    for (name, data) in &files {
        assert_eq!(&fs::read(two.join(name)).unwrap(), data, "{name}");
    }
    assert!(!two.join("dump.log").exists(), "CRIU's log is not shipped");
    let marker = CommitMarker::verify(&two).unwrap();
    assert_eq!((marker.session, marker.files.len(), marker.page_bytes), (2, 3, 4 * ps()));
    let chain = ImageChain::open(&root.join("last"), None, ps()).unwrap();
    chain.verify().unwrap();
    let id = pagestream_transport::criu_ps::session::pagemap_id(A);
    assert_eq!(chain.page_at(id, HEAP).unwrap(), PageLookup::Data(pattern(9, 4)[..ps() as usize].to_vec()));

    let mut l = Loaded::start(&rig.loader, RESTORE, &root.join("last"), &[]);
    l.expect("restoring session 2 committed by pagestream (3 image files)");
    l.expect("init=0");
    l.say("exit 0");
    assert!(l.wait().0.success());
    let (status, lines) = Loaded::start(&rig.loader, RESTORE, &root.join("1"), &[]).wait();
    assert_eq!(status.code(), Some(5), "the pre-dump alone is not a complete dump: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains("refusing to restore from") && l.contains("did not commit")), "{lines:#?}");
}

#[test]
fn a_failed_dump_commits_nothing() {
    let Some(rig) = Rig::new(1) else { return };
    let (mut l, listen, images) = rig.start(DUMP, "dump", &[]);
    write_images(&images);
    assert_eq!(criu_session(listen, 3), 0, "CRIU fails after its CLOSE");
    l.say("exit 1");
    l.expect("the dump failed; the destination keeps nothing");
    l.expect("unloaded");
    assert!(l.wait().0.success());
    let root = rig.root.clone();
    let out = rig.dest.wait_with_output().unwrap();
    assert!(!out.status.success(), "the destination reports the failed session");
    assert!(!root.join("1").exists() && !root.join("last").exists());
}

#[test]
fn a_destination_lost_before_the_commit_makes_the_plugin_end_criu_first() {
    let Some(mut rig) = Rig::new(1) else { return };
    let (mut l, listen, images) = rig.start(DUMP, "dump", &[("PAGESTREAM_COMMIT_TIMEOUT", "30".into())]);
    write_images(&images);
    assert_eq!(criu_session(listen, 4), 0);
    rig.dest.kill().unwrap();
    rig.dest.wait().unwrap();
    l.say("exit 0");
    l.expect("the destination did not commit the dump");
    let (status, lines) = l.wait();
    assert_eq!(status.code(), Some(1), "CRIU is ended inside exit: {lines:#?}");
    assert!(!lines.iter().any(|l| l == "exited"), "exit never returned to CRIU: {lines:#?}");
    assert!(!rig.root.join("1").exists());
}

#[test]
fn a_successful_dump_that_bypassed_the_plugin_ends_criu_too() {
    let Some(mut rig) = Rig::new(1) else { return };
    let (mut l, _listen, _) = rig.start(DUMP, "dump", &[]);
    l.say("exit 0");
    l.expect("CRIU never connected");
    assert_eq!(l.wait().0.code(), Some(1));
    let _ = rig.dest.kill();
    let _ = rig.dest.wait();
}
