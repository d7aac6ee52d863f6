//! [`DumpForwarder`]: the page server the plugin runs inside CRIU for a dump or pre-dump.
//!
//! `init` binds [`PluginConfig::listen`] (where `criu dump --page-server --address --port`
//! connects), connects to the destination over QUIC, and starts one thread that accepts CRIU's
//! connection and relays it ([`RelaySource`]). A pre-dump is relayed as a plain session (committed
//! on CRIU's CLOSE; CRIU never calls `exit` after a pre-dump). A dump is held after CLOSE
//! ([`RelaySource::relay_dump`]) until `exit` decides: commit with the dump directory's other
//! image files, or abort. The thread never logs (CRIU's log is not thread-safe); it reports to
//! `exit`, which runs on CRIU's main thread.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pagestream_transport::relay::files::{dump_files, FileStats};
use pagestream_transport::relay::{RelayConfig, RelaySource, RelaySummary};

use crate::config::PluginConfig;
use crate::sys::with_signals_blocked;

/// How long an aborting `exit` waits for the relay thread.
const ABORT_WAIT: Duration = Duration::from_secs(10);
/// How often the accepting thread looks at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// What `exit` tells the relay thread.
enum Decision {
    /// Ship the image files of this directory and commit.
    Commit(PathBuf),
    /// Drop the dump at the destination.
    Abort(String),
}

/// How the relayed dump ended.
#[derive(Debug)]
pub enum Outcome {
    /// The destination committed the whole dump durably.
    Committed { summary: RelaySummary, files: FileStats, elapsed: Duration },
    /// Relaying or committing failed; nothing was committed.
    Failed(String),
    /// CRIU never connected.
    NoSession,
}

/// The plugin's page server for one dump or pre-dump; see the module documentation.
pub struct DumpForwarder {
    stop: Arc<AtomicBool>,
    decide: Sender<Decision>,
    outcome: Receiver<Outcome>,
    thread: Option<JoinHandle<()>>,
    commit_timeout: Duration,
}

impl DumpForwarder {
    /// Binds, connects to the destination and starts the relay thread. `hold`: a dump (held
    /// for `exit`'s decision) rather than a pre-dump.
    pub fn start(cfg: &PluginConfig, page_size: u64, hold: bool) -> Result<DumpForwarder, String> {
        let listener =
            TcpListener::bind(cfg.listen).map_err(|e| format!("cannot listen on {} for CRIU: {e}", cfg.listen))?;
        listener.set_nonblocking(true).map_err(|e| format!("listening socket: {e}"))?;
        let mut rcfg = RelayConfig::new(cfg.security.clone(), cfg.server_name.clone(), page_size);
        rcfg.sessions = Some(1);
        rcfg.lz4 = cfg.lz4;
        let (decide, decisions) = mpsc::channel();
        let (report, outcome) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let to = cfg.to;
        // The runtime and relay threads inherit the blocked mask: CRIU's handlers stay on its threads.
        let thread = with_signals_blocked(|| -> Result<JoinHandle<()>, String> {
            let source = RelaySource::new(to, rcfg).map_err(|e| format!("QUIC towards {to}: {e}"))?;
            source.preconnect().map_err(|e| format!("cannot reach the destination {to}: {e}"))?;
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("pagestream-plugin".into())
                .spawn(move || {
                    let _ = report.send(relay(&source, &listener, &stop, hold, &decisions));
                })
                .map_err(|e| format!("cannot start the relay thread: {e}"))
        })?;
        Ok(DumpForwarder { stop, decide, outcome, thread: Some(thread), commit_timeout: cfg.commit_timeout })
    }

    /// The end of a dump: with `ok`, ships the files of `image_dir` and waits for the commit;
    /// otherwise aborts. Returns the outcome; the relay thread has ended unless the wait timed out.
    pub fn finish(mut self, ok: bool, image_dir: Option<PathBuf>) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        let (decision, wait) = match (ok, image_dir) {
            (true, Some(dir)) => (Decision::Commit(dir), self.commit_timeout),
            (true, None) => (Decision::Abort("CRIU's images directory is unknown".into()), ABORT_WAIT),
            (false, _) => (Decision::Abort("criu dump failed".into()), ABORT_WAIT),
        };
        let aborted = match &decision {
            Decision::Abort(reason) => Some(reason.clone()),
            Decision::Commit(_) => None,
        };
        // The thread may have ended already (CRIU never connected, or the relay failed).
        let _ = self.decide.send(decision);
        let outcome = match self.outcome.recv_timeout(wait) {
            Ok(outcome) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                outcome
            }
            Err(RecvTimeoutError::Timeout) => {
                Outcome::Failed(format!("no commit from the destination within {wait:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => Outcome::Failed("the relay thread ended without a word".into()),
        };
        match (outcome, aborted) {
            (Outcome::Committed { .. }, Some(reason)) => Outcome::Failed(reason),
            (outcome, _) => outcome,
        }
    }
}

impl Drop for DumpForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The relay thread: one CRIU connection, relayed, then (`hold`) `exit`'s decision carried out.
fn relay(
    source: &RelaySource,
    listener: &TcpListener,
    stop: &AtomicBool,
    hold: bool,
    decisions: &Receiver<Decision>,
) -> Outcome {
    let (stream, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {
                if stop.load(Ordering::SeqCst) {
                    return Outcome::NoSession;
                }
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(e) => return Outcome::Failed(format!("accepting CRIU's connection: {e}")),
        }
    };
    if let Err(e) = stream.set_nonblocking(false) {
        return Outcome::Failed(format!("CRIU's socket: {e}"));
    }
    if !hold {
        let report = source.relay_connection(stream, Some(peer));
        let elapsed = report.elapsed;
        return match report.result {
            Ok(summary) => Outcome::Committed { summary, files: FileStats::default(), elapsed },
            Err(e) => Outcome::Failed(e.to_string()),
        };
    }
    let held = match source.relay_dump(stream) {
        Ok(held) => held,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    match decisions.recv() {
        Ok(Decision::Commit(dir)) => {
            let files = match dump_files(&dir) {
                Ok(files) => files,
                Err(e) => {
                    let reason = format!("listing the images directory {}: {e}", dir.display());
                    held.abort(&reason);
                    return Outcome::Failed(reason);
                }
            };
            match held.commit(&files) {
                Ok((summary, files, elapsed)) => Outcome::Committed { summary, files, elapsed },
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        Ok(Decision::Abort(reason)) => {
            held.abort(&reason);
            Outcome::Failed(reason)
        }
        Err(_) => {
            held.abort("the plugin was unloaded");
            Outcome::Failed("the plugin was unloaded".into())
        }
    }
}
