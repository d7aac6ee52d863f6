//! uffd-wp injection safety on a live process, and clear refusals: attaching and detaching the
//! tracker 100 times never stops the workload or damages its memory (it keeps checking itself)
//! and leaks no file descriptor into it; a missing pid, a zombie, a kernel thread and another
//! user's process (without privilege) fail with a clear error.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pagestream::workload_client::Workload;
use pagestream_engine::process::{MemoryLayout, Target, TargetError};
use pagestream_engine::track::TrackerKind;

fn workload(args: &[&str]) -> Workload {
    Workload::spawn(Path::new(env!("CARGO_BIN_EXE_pagestream-workload")), args).unwrap()
}

fn writes(w: &mut Workload) -> u64 {
    let info = w.cmd("info", "info").unwrap();
    info.split_whitespace().find_map(|kv| kv.strip_prefix("writes=")).unwrap().parse().unwrap()
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn attach_and_detach_100_times_under_load() {
    if let Err(reason) = TrackerKind::UffdWp.available() {
        eprintln!("skipped: uffd-wp unavailable: {reason}");
        return;
    }
    let mut w = workload(&["--size", "8M", "--rate", "20000", "--report-ms", "50"]);
    let fds = fd_count(w.pid);
    let mut last = writes(&mut w);
    for i in 0..100 {
        let mut t =
            TrackerKind::UffdWp.open(Target::open(w.pid).unwrap()).unwrap_or_else(|e| panic!("attach {i}: {e}"));
        let dirty = t.collect(&MemoryLayout::read(w.pid).unwrap()).unwrap();
        assert!(dirty.len_pages() >= w.pages, "attach {i}: first round must cover the working set");
        drop(t);
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(60));
            let now = writes(&mut w);
            assert!(now > last, "workload stopped making progress after attach {i}");
            last = now;
            w.wait_for("progress").unwrap(); // a full self-check passed since
        }
    }
    assert_eq!(fd_count(w.pid), fds, "injection leaked file descriptors into the target");
    w.cmd("verify", "verify ok").unwrap();
    assert!(w.is_running());
}

#[test]
fn refuses_missing_zombie_and_kernel_thread() {
    let err = Target::open(i32::MAX).unwrap_err();
    assert!(matches!(err, TargetError::NoSuchProcess(_)), "{err}");
    assert!(err.to_string().contains("no process"), "{err}");

    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    let mut zombie = None;
    for _ in 0..200 {
        match Target::open(pid) {
            Err(e @ TargetError::Zombie(_)) => {
                zombie = Some(e);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let err = zombie.expect("the unreaped child must be refused as a zombie");
    assert!(err.to_string().contains("zombie"), "{err}");
    child.wait().unwrap();

    match std::fs::read_to_string("/proc/2/comm") {
        Ok(c) if c.trim() == "kthreadd" => {
            let err = Target::open(2).unwrap_err();
            assert!(err.to_string().contains("kernel thread"), "{err}");
        }
        _ => eprintln!("skipped: no kernel thread visible in this pid namespace"),
    }
}

#[test]
fn another_users_process_is_refused_without_privilege() {
    // Only root can switch to another user for this test.
    if !nix_is_root() {
        eprintln!("skipped: needs root to run the tracker as another user");
        return;
    }
    let mut w = workload(&["--size", "1M", "--rate", "100"]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_pagestream"))
        .args(["track", "--pid", &w.pid.to_string(), "--tracker", "uffd-wp", "--rounds", "0"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not permitted"), "{stderr}");
    w.cmd("verify", "verify ok").unwrap();
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
