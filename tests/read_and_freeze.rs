//! The PageReader on a real process (byte-exact against `/proc/PID/mem`, areas that vanish,
//! PROT_NONE pages) and freezing: a process tree by signals (already-stopped processes stay
//! stopped; dropping the guard thaws) and a cgroup v2 freezer.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pagestream::workload_client::{parse_runs, Workload};
use pagestream_engine::process::freeze::{cgroup_v2_of, proc_state, process_tree};
use pagestream_engine::process::{FreezeMethod, Frozen, MemoryLayout, Target};
use pagestream_engine::read::PageReader;
use pagestream_engine::{PageRun, PageRunSet};

fn workload(args: &[&str]) -> Workload {
    Workload::spawn(Path::new(env!("CARGO_BIN_EXE_pagestream-workload")), args).unwrap()
}

/// Reads `runs` with a small batch (so batching and splitting are exercised); returns page data
/// by address and the report.
fn read_all(pid: i32, runs: &[PageRun]) -> (BTreeMap<u64, Vec<u8>>, PageRunSet, u64) {
    let target = Target::open(pid).unwrap();
    let ps = pagestream_engine::page_size();
    let mut reader = PageReader::with_batch(&target, ps, 64 * 1024).unwrap();
    let mut pages = BTreeMap::new();
    let report = reader
        .read(runs.iter().copied(), |run, bytes| {
            assert_eq!(bytes.len() as u64, run.len_bytes(ps));
            for (i, p) in bytes.chunks(ps as usize).enumerate() {
                assert!(pages.insert(run.vaddr + i as u64 * ps, p.to_vec()).is_none(), "page delivered twice");
            }
        })
        .unwrap();
    (pages, report.missing, report.pages)
}

#[test]
fn reader_is_byte_exact() {
    let mut w = workload(&["--size", "8M", "--paused"]);
    let (pages, missing, n) = read_all(w.pid, &[PageRun::new(w.base, w.pages)]);
    assert!(missing.is_empty());
    assert_eq!(n, w.pages);
    let mem = File::open(format!("/proc/{}/mem", w.pid)).unwrap();
    let mut want = vec![0u8; (w.pages * w.page_size) as usize];
    mem.read_exact_at(&mut want, w.base).unwrap();
    let got: Vec<u8> = pages.values().flatten().copied().collect();
    assert!(got == want, "PageReader differs from /proc/PID/mem");
    w.cmd("verify", "verify ok").unwrap();
}

#[test]
fn reader_reports_vanished_areas_and_reads_prot_none() {
    let mut w = workload(&["--size", "1M", "--paused"]);
    let ps = w.page_size;
    let gone = parse_runs(w.cmd("map 20", "mapped").unwrap().split_whitespace().nth(1).unwrap(), ps).unwrap();
    let guarded = parse_runs(w.cmd("map 8", "mapped").unwrap().split_whitespace().nth(1).unwrap(), ps).unwrap();
    w.cmd("protect", "protected").unwrap();
    let mem = File::open(format!("/proc/{}/mem", w.pid)).unwrap();
    let mut guarded_bytes = vec![0u8; guarded.len_bytes() as usize];
    mem.read_exact_at(&mut guarded_bytes, guarded.iter().next().unwrap().vaddr).unwrap();
    assert!(guarded_bytes.iter().any(|b| *b != 0));

    // PROT_NONE memory that holds data is migrated.
    let layout = MemoryLayout::read(w.pid).unwrap();
    let g = guarded.iter().next().unwrap();
    let vma = layout.vma_at(g.vaddr).unwrap();
    assert_eq!(vma.kind(), pagestream_engine::process::VmaKind::NoAccess);
    assert!(vma.is_migrated(), "populated PROT_NONE memory is data");

    // Both extra areas vanish (newest first); reads that include `gone` report it missing.
    w.cmd("unmap", "unmapped").unwrap();
    w.cmd("unmap", "unmapped").unwrap();
    let area = PageRun::new(w.base, w.pages);
    let g = gone.iter().next().unwrap();
    for order in
        [vec![area, g], vec![g, area], vec![PageRun::new(w.base, 3), g, PageRun::new(w.base + 3 * ps, w.pages - 3)]]
    {
        let (pages, missing, n) = read_all(w.pid, &order);
        assert_eq!(missing, gone, "{order:?}");
        assert_eq!(n, w.pages, "{order:?}");
        assert_eq!(pages.len() as u64, w.pages);
    }

    // PROT_NONE pages are read through /proc/PID/mem.
    let guarded2 = parse_runs(w.cmd("map 8", "mapped").unwrap().split_whitespace().nth(1).unwrap(), ps).unwrap();
    w.cmd("protect", "protected").unwrap();
    let r = guarded2.iter().next().unwrap();
    let mut want = vec![0u8; r.len_bytes(ps) as usize];
    mem.read_exact_at(&mut want, r.vaddr).unwrap();
    let (pages, missing, _) = read_all(w.pid, &[r]);
    assert!(missing.is_empty());
    assert!(pages.values().flatten().copied().collect::<Vec<u8>>() == want);
}

#[test]
fn signal_freeze_stops_the_tree_and_thaws_on_drop() {
    let mut sh = Command::new("bash").args(["-c", "sleep 300 & sleep 300 & (sleep 300; true) & wait"]).spawn().unwrap();
    let root = sh.id() as i32;
    let mut tree = Vec::new();
    for _ in 0..100 {
        tree = process_tree(root);
        if tree.len() >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(tree.len() >= 5, "tree {tree:?}");
    // One member was stopped by someone else before: it must stay stopped after thaw.
    let pre_stopped = *tree.last().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pre_stopped), nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let frozen = Frozen::freeze(root, FreezeMethod::Signal, Duration::from_secs(5)).unwrap();
    for p in &tree {
        assert_eq!(proc_state(*p), Some('T'), "{p} not stopped");
    }
    assert!(!frozen.stopped().contains(&pre_stopped));
    drop(frozen); // thaw by drop, as on an error path
    std::thread::sleep(Duration::from_millis(100));
    for p in &tree {
        let want = if *p == pre_stopped { 'T' } else { 'S' };
        assert_eq!(proc_state(*p), Some(want), "{p}");
    }
    for p in &tree {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = sh.wait();
}

#[test]
fn cgroup_freeze_stops_a_container_cgroup() {
    let mine = match cgroup_v2_of(std::process::id() as i32) {
        Ok(p) => p,
        Err(e) => return eprintln!("skipped: no cgroup v2 here: {e}"),
    };
    let cg = mine.join(format!("pagestream-test-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&cg) {
        return eprintln!("skipped: cannot create a cgroup under {}: {e}", mine.display());
    }
    let mut w = workload(&["--size", "1M", "--rate", "1000"]);
    std::fs::write(cg.join("cgroup.procs"), w.pid.to_string()).unwrap();
    let frozen = Frozen::freeze(w.pid, FreezeMethod::Cgroup(cg.clone()), Duration::from_secs(5)).unwrap();
    assert!(std::fs::read_to_string(cg.join("cgroup.events")).unwrap().contains("frozen 1"));
    let before = std::fs::read_to_string(format!("/proc/{}/stat", w.pid)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = std::fs::read_to_string(format!("/proc/{}/stat", w.pid)).unwrap();
    let cpu = |s: &str| s.rsplit_once(')').unwrap().1.split_whitespace().nth(11).unwrap().to_string();
    assert_eq!(cpu(&before), cpu(&after), "a frozen workload must not run");
    frozen.thaw().unwrap();
    w.cmd("verify", "verify ok").unwrap();
    drop(w);
    std::thread::sleep(Duration::from_millis(100));
    let _ = std::fs::remove_dir(&cg);
}
