//! Lazy restore on this host, no CRIU: `pagestream lazy-pages -D DIR -W WORK` serves a test
//! restorer (`pagestream-lazy-restorer`) that maps the lazy regions, registers them with
//! userfaultfd, hands the descriptor over `lazy-pages.socket` as `criu restore --lazy-pages`
//! does, and reads every byte back with 1 and 4 threads faulting concurrently. The images hold
//! varied data, zero pages, a hole inside a region and `PE_PARENT` lazy pages from a parent image.

mod lazy_common;

use std::time::Duration;

use lazy_common::{build_images, json_of, restorer, start_daemon, wait_pair, wait_with_timeout};
use pagestream_engine::lazy::{self, HandoffListener, ImageSource};
use pagestream_engine::page_size;

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
        let mut ranges_of = |pid: i32| lazy::source::lazy_ranges_of(&plan, pid);
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
