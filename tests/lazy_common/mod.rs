//! Helpers of the lazy-restore tests: image directories with lazy pages (varied data, zero pages,
//! a hole, `PE_PARENT` lazy pages from a parent image), the test restorer and the daemon as
//! processes, and their JSON outputs.

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pagestream_engine::criu::{ImageDirWriter, PageFlags, PagemapId};
use pagestream_engine::lazy;
use pagestream_engine::{page_size, PageRun};

pub const PID: i32 = 4242;
/// Far from where the restorer's own mappings go.
pub const BASE: u64 = 0x3a00_0000_0000;

/// Page `vaddr`'s content: every 7th page zero, the others pseudo-random from the address.
pub fn page_bytes(vaddr: u64, ps: u64) -> Vec<u8> {
    if (vaddr / ps) % 7 == 3 {
        return vec![0; ps as usize];
    }
    let mut x = vaddr ^ 0x9E37_79B9_7F4A_7C15;
    (0..ps)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn run_bytes(vaddr: u64, nr: u64, ps: u64) -> Vec<u8> {
    (0..nr).flat_map(|i| page_bytes(vaddr + i * ps, ps)).collect()
}

/// Writes ROOT/1 (data of the parent-held run) and ROOT/2 (the directory to restore, with a
/// `parent` link); returns ROOT/2 and the number of lazy pages.
pub fn build_images(root: &Path) -> (PathBuf, u64) {
    let ps = page_size();
    let id = PagemapId::Task(PID as u64);
    let (a, b, c) = (BASE, BASE + 67 * ps, BASE + (64 << 20));
    let (na, nb, nc) = (64, 40, 2048);
    let mut w = ImageDirWriter::create(&root.join("1"), ps, 1).expect("create parent");
    w.open_pagemap(id).expect("pagemap").push_present(c, &run_bytes(c, nc, ps), PageFlags::LAZY).expect("c");
    w.commit().expect("commit parent");
    let mut w = ImageDirWriter::create(&root.join("2"), ps, 1).expect("create");
    w.set_parent(Path::new("../1")).expect("parent link");
    let pm = w.open_pagemap(id).expect("pagemap");
    pm.push_present(a, &run_bytes(a, na, ps), PageFlags::LAZY).expect("a");
    // a 3-page hole between a and b: in the region, not in the pagemap, must read as zero
    pm.push_present(b, &run_bytes(b, nb, ps), PageFlags::LAZY).expect("b");
    pm.push_hole(PageRun::new(c, nc), PageFlags::LAZY | PageFlags::PARENT).expect("c");
    (w.commit().expect("commit"), na + nb + nc)
}

/// Waits for the restorer, then for the daemon (killed at once if the restorer failed, since it
/// would wait for a connection or a finish marker that never comes).
pub fn wait_pair(restorer: Child, mut daemon: Child) -> (Output, Output) {
    let r = wait_with_timeout(restorer, Duration::from_secs(120));
    if !r.status.success() {
        let _ = daemon.kill();
    }
    (r, wait_with_timeout(daemon, Duration::from_secs(60)))
}

pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "timed out after {limit:?}; stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

pub fn start_daemon(images: &Path, work: &Path) -> Child {
    start_daemon_with(images, work, &[])
}

/// `pagestream lazy-pages --json -D images -W work EXTRA...`, once its socket exists.
pub fn start_daemon_with(images: &Path, work: &Path, extra: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_pagestream"))
        .args(["lazy-pages", "--json", "-D"])
        .arg(images)
        .arg("-W")
        .arg(work)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pagestream lazy-pages");
    let sock = work.join(lazy::SOCKET_NAME);
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "{} never appeared", sock.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

pub fn restorer(images: &Path, work: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pagestream-lazy-restorer"))
        .arg("-D")
        .arg(images)
        .arg("-W")
        .arg(work)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the restorer")
}

pub fn json_of(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().last().unwrap_or_else(|| panic!("no output; stderr {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}
