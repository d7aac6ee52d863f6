//! The pre-copy loop on a real process into a local image directory (no network): the image
//! equals the frozen workload's memory byte for byte; the source is stopped only when asked, or
//! resumed intact; a destination that fails mid-migration leaves the source running and no
//! image behind.

use std::path::Path;
use std::time::Duration;

use pagestream::workload_client::Workload;
use pagestream_engine::criu::PagemapId;
use pagestream_engine::precopy::verify::verify_image;
use pagestream_engine::precopy::{migrate, MigrationConfig, PreCopyPolicy};
use pagestream_engine::process::freeze::proc_state;
use pagestream_engine::process::Target;
use pagestream_engine::sink::{CommitReceipt, PageSink, RoundSummary, SinkError, SinkStats};
use pagestream_engine::store::LocalSink;
use pagestream_engine::track::TrackerKind;
use pagestream_engine::{page_size, PageRun};

fn workload(args: &[&str]) -> Workload {
    Workload::spawn(Path::new(env!("CARGO_BIN_EXE_pagestream-workload")), args).unwrap()
}

fn config() -> MigrationConfig {
    MigrationConfig {
        policy: PreCopyPolicy { downtime: Duration::from_millis(20), max_rounds: 6, ..Default::default() },
        ..Default::default()
    }
}

#[test]
fn migrates_a_live_process_byte_for_byte_then_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let w = workload(&["--size", "32M", "--rate", "5000", "--report-ms", "200"]);
    let target = Target::open(w.pid).unwrap();
    let mut tracker = TrackerKind::probe().open(Target::open(w.pid).unwrap()).unwrap();
    let mut sink = LocalSink::new(&dir, page_size()).unwrap();
    let mut seen = Vec::new();
    let done = migrate(&target, tracker.as_mut(), &mut sink, &config(), |r| seen.push(r.clone())).unwrap();
    assert!(seen.len() >= 2 && seen.last().unwrap().final_round, "{seen:?}");
    assert!(seen[0].sent_pages + seen[0].zero_pages >= w.pages);
    assert_eq!(proc_state(w.pid), Some('T'), "source must stay frozen until released");

    let report = verify_image(&target, &dir).unwrap();
    assert!(report.is_equal(), "{report:?}");
    assert!(report.pages >= w.pages);
    assert!(done.report.downtime_ms > 0.0 && done.report.memory_bytes >= w.pages * w.page_size);

    done.stop_source().unwrap();
    for _ in 0..100 {
        if !matches!(proc_state(w.pid), Some('T' | 'S' | 'R')) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(matches!(proc_state(w.pid), None | Some('Z')), "source must be gone");
}

#[test]
fn leave_running_resumes_the_source_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let mut w = workload(&["--size", "8M", "--rate", "5000", "--report-ms", "100"]);
    let target = Target::open(w.pid).unwrap();
    let mut tracker = TrackerKind::Digest.open(Target::open(w.pid).unwrap()).unwrap();
    let mut sink = LocalSink::new(&dir, page_size()).unwrap();
    let done = migrate(&target, tracker.as_mut(), &mut sink, &config(), |_| {}).unwrap();
    let report = verify_image(&target, &dir).unwrap();
    assert!(report.is_equal(), "{report:?}");
    done.resume_source().unwrap();
    w.wait_for("progress").unwrap();
    w.cmd("verify", "verify ok").unwrap();
}

/// A destination that fails after `budget` calls.
struct FailingSink {
    inner: LocalSink,
    budget: u32,
}

impl FailingSink {
    fn spend(&mut self) -> Result<(), SinkError> {
        if self.budget == 0 {
            return Err(SinkError::Transport("connection lost (test)".into()));
        }
        self.budget -= 1;
        Ok(())
    }
}

impl PageSink for FailingSink {
    fn begin_round(&mut self, round: u32) -> Result<(), SinkError> {
        self.spend()?;
        self.inner.begin_round(round)
    }
    fn send_pages(&mut self, id: PagemapId, run: PageRun, data: &[u8]) -> Result<(), SinkError> {
        self.spend()?;
        self.inner.send_pages(id, run, data)
    }
    fn send_zero(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        self.spend()?;
        self.inner.send_zero(id, run)
    }
    fn end_round(&mut self, s: &RoundSummary) -> Result<(), SinkError> {
        self.spend()?;
        self.inner.end_round(s)
    }
    fn commit(&mut self) -> Result<CommitReceipt, SinkError> {
        self.spend()?;
        self.inner.commit()
    }
    fn abort(&mut self, reason: &str) {
        self.inner.abort(reason)
    }
    fn stats(&self) -> SinkStats {
        self.inner.stats()
    }
}

#[test]
fn a_failing_destination_leaves_the_source_running_and_no_image() {
    let tmp = tempfile::tempdir().unwrap();
    // Fail early in round 0, in a later round, and at commit (the final round is frozen).
    for budget in [5, 400, u32::MAX] {
        let dir = tmp.path().join(format!("img-{budget}"));
        let mut w = workload(&["--size", "4M", "--rate", "5000", "--report-ms", "100"]);
        let target = Target::open(w.pid).unwrap();
        let mut tracker = TrackerKind::probe().open(Target::open(w.pid).unwrap()).unwrap();
        let inner = LocalSink::new(&dir, page_size()).unwrap();
        // u32::MAX: count the calls of a clean run first, then fail at its very last call.
        let budget = if budget == u32::MAX { 0 } else { budget };
        let mut sink = FailingSink { inner, budget: if budget == 0 { u32::MAX } else { budget } };
        let result = if budget == 0 {
            // Make commit itself fail: the destination refuses after the final round.
            sink.inner.abort("refuse commit");
            migrate(&target, tracker.as_mut(), &mut sink, &config(), |_| {})
        } else {
            migrate(&target, tracker.as_mut(), &mut sink, &config(), |_| {})
        };
        let err = result.expect_err("migration must fail");
        eprintln!("budget {budget}: {err}");
        assert!(!dir.exists(), "no image directory after a failed migration");
        assert_ne!(proc_state(w.pid), Some('T'), "source left frozen");
        w.wait_for("progress").unwrap();
        w.cmd("verify", "verify ok").unwrap();
    }
}
