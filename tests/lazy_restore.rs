//! Lazy restore on this host, no CRIU: `pagestream lazy-pages -D DIR -W WORK` serves a test
//! restorer (`pagestream-lazy-restorer`) that maps the lazy regions, registers them with
//! userfaultfd, hands the descriptor over `lazy-pages.socket` as `criu restore --lazy-pages`
//! does, and reads every byte back with 1 and 4 threads faulting concurrently. The images hold
//! varied data, zero pages, a hole inside a region and `PE_PARENT` lazy pages from a parent image.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pagestream_engine::criu::{ImageDirWriter, PageFlags, PagemapId};
use pagestream_engine::lazy::{self, HandoffListener, ImageSource};
use pagestream_engine::{page_size, PageRun};

const PID: i32 = 4242;
/// Far from where the restorer's own mappings go.
const BASE: u64 = 0x3a00_0000_0000;

/// Page `vaddr`'s content: every 7th page zero, the others pseudo-random from the address.
fn page_bytes(vaddr: u64, ps: u64) -> Vec<u8> {
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

fn run_bytes(vaddr: u64, nr: u64, ps: u64) -> Vec<u8> {
    (0..nr).flat_map(|i| page_bytes(vaddr + i * ps, ps)).collect()
}

/// Writes ROOT/1 (data of the parent-held run) and ROOT/2 (the directory to restore, with a
/// `parent` link); returns ROOT/2 and the number of lazy pages.
fn build_images(root: &Path) -> (PathBuf, u64) {
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
fn wait_pair(restorer: Child, mut daemon: Child) -> (Output, Output) {
    let r = wait_with_timeout(restorer, Duration::from_secs(120));
    if !r.status.success() {
        let _ = daemon.kill();
    }
    (r, wait_with_timeout(daemon, Duration::from_secs(60)))
}

fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
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

fn start_daemon(images: &Path, work: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_pagestream"))
        .args(["lazy-pages", "--json", "-D"])
        .arg(images)
        .arg("-W")
        .arg(work)
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

fn restorer(images: &Path, work: &Path, extra: &[&str]) -> Child {
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

fn json_of(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().last().unwrap_or_else(|| panic!("no output; stderr {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn restore_with_threads(threads: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (images, lazy_pages) = build_images(tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let daemon = start_daemon(&images, &work);
    let threads = threads.to_string();
    let (r, d) = wait_pair(restorer(&images, &work, &["--threads", &threads, "--zombie", "4243"]), daemon);
    let (rs, ds) = (String::from_utf8_lossy(&r.stderr), String::from_utf8_lossy(&d.stderr));
    assert!(r.status.success(), "restorer failed: {rs}\ndaemon: {ds}");
    assert!(d.status.success(), "daemon failed: {ds}\nrestorer: {rs}");
    let rj = json_of(&r);
    let ps = page_size();
    let region_pages = 64 + 3 + 40 + 2048;
    assert_eq!(rj["pages_verified"], region_pages, "{rj}");
    assert_eq!(rj["mismatches"], 0, "{rj}");
    let dj = json_of(&d);
    eprintln!("restorer {rj}\ndaemon {dj}");
    let n = |k: &str| dj[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {dj}"));
    assert_eq!(n("lazy_pages"), lazy_pages, "{dj}");
    assert!(n("faults") > 0, "{dj}");
    assert_eq!(n("pages_faulted") + n("pages_pushed"), lazy_pages, "{dj}");
    assert_eq!(n("pages_already_present") + n("pages_dropped"), 0, "{dj}");
    // every 7th page is zero in the images but stored as data: copied, not zero-filled
    assert_eq!(n("pages_zero"), 0, "{dj}");
    assert_eq!((n("tasks"), n("zombies")), (1, 1), "{dj}");
    assert!(dj["time_to_full_residency_ms"].as_f64().is_some(), "{dj}");
    assert!(dj["fault_latency_p99_us"].as_f64().is_some_and(|v| v > 0.0), "{dj}");
    assert!(!work.join(lazy::SOCKET_NAME).exists(), "socket left behind");
    let _ = ps;
}

#[test]
fn one_thread_reads_every_byte() {
    restore_with_threads(1);
}

#[test]
fn four_threads_fault_concurrently() {
    restore_with_threads(4);
}

#[test]
fn hangup_before_finish_marker_fails_the_daemon() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (images, _) = build_images(tmp.path());
    let daemon = start_daemon(&images, &images);
    let r = wait_with_timeout(restorer(&images, &images, &["--hang-up-before-finish"]), Duration::from_secs(60));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let d = wait_with_timeout(daemon, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&d.stderr);
    assert!(!d.status.success(), "daemon exited 0: {err}");
    assert!(err.contains("hung up before the finish marker 0x52535446"), "{err}");
}

/// The engine API without the CLI: `lazy::serve` in a thread of the test, with the handoff
/// listener in a work dir separate from the images.
#[test]
fn engine_serve_in_process() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (images, lazy_pages) = build_images(tmp.path());
    let work = tmp.path().join("w");
    std::fs::create_dir(&work).expect("work dir");
    let listener = HandoffListener::bind(&work).expect("bind");
    let images2 = images.clone();
    let daemon = std::thread::spawn(move || {
        let ps = page_size();
        let mut source = ImageSource::open(&images2, None, ps).expect("source");
        let plan = pagestream_engine::criu::ImageDir::open(&images2, ps).expect("plan");
        let mut ranges_of = |pid: i32| Ok(lazy::source::lazy_ranges_of(&plan, pid));
        lazy::serve(&listener, &mut source, &mut ranges_of)
    });
    let r = wait_with_timeout(restorer(&images, &work, &["--threads", "2"]), Duration::from_secs(120));
    if !r.status.success() {
        // unblock the daemon's accept (if the restorer never connected) so the thread ends
        drop(lazy::HandoffClient::connect(&work));
        panic!("restorer failed: {}", String::from_utf8_lossy(&r.stderr));
    }
    let stats = daemon.join().expect("daemon thread").expect("serve");
    assert_eq!(stats.lazy_pages, lazy_pages);
    assert_eq!(stats.pages_faulted + stats.pages_pushed, lazy_pages);
    assert!(stats.faults > 0 && !stats.fault_latency_ns.is_empty());
}

/// REMOVE (madvise), UNMAP, REMAP and FORK while pages are still lazy: discarded pages read as
/// zero (never the stale image data), moved pages keep their data, the forked child is served
/// through its own userfaultfd, and the restore still completes.
#[test]
fn remove_unmap_remap_and_fork_events() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (images, lazy_pages) = build_images(tmp.path());
    let daemon = start_daemon(&images, &images);
    let (r, d) = wait_pair(restorer(&images, &images, &["--threads", "2", "--exercise-events"]), daemon);
    let (rs, ds) = (String::from_utf8_lossy(&r.stderr), String::from_utf8_lossy(&d.stderr));
    assert!(r.status.success(), "restorer failed: {rs}\ndaemon: {ds}");
    assert!(d.status.success(), "daemon failed: {ds}\nrestorer: {rs}");
    let rj = json_of(&r);
    assert_eq!(rj["mismatches"], 0, "{rj}");
    assert_eq!(rj["child_ok"], true, "{rj}");
    assert_eq!(rj["pages_verified"], 64 + 3 + 40 + 2048 - 8, "{rj}");
    let dj = json_of(&d);
    let n = |k: &str| dj[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {dj}"));
    assert_eq!(n("forks"), 1, "{dj}");
    // 4 discarded + 8 unmapped in the parent (the child's copy may be dropped too when it exits)
    assert!(n("pages_dropped") >= 12, "{dj}");
    assert!(n("lazy_pages") > lazy_pages, "the child's lazy pages are counted: {dj}");
}
