//! Freezing the source for the final round, and thawing it on every path.
//!
//! Two methods: SIGSTOP/SIGCONT for a process tree (processes that were already stopped before we
//! came are left stopped), and the cgroup v2 freezer for a container's cgroup. [`Frozen`] thaws
//! when dropped, so an error or a panic between freeze and thaw never leaves the source frozen.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::target::stat_fields;
use crate::sys::guardian::Guardian;

/// How to freeze.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FreezeMethod {
    /// SIGSTOP every process of the tree rooted at the pid, SIGCONT on thaw.
    Signal,
    /// Write `cgroup.freeze` of this cgroup v2 directory.
    Cgroup(PathBuf),
}

/// A frozen process tree or cgroup; thawed on drop, and by a guardian process if this process
/// dies (even by SIGKILL) while the freeze is held.
#[derive(Debug)]
pub struct Frozen {
    method: FreezeMethod,
    /// Processes we stopped (Signal method).
    stopped: Vec<i32>,
    thawed: bool,
    guardian: Option<Guardian>,
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `T`, `t`, `Z`, ...).
pub fn proc_state(pid: i32) -> Option<char> {
    stat_fields(&format!("/proc/{pid}/stat")).ok()?.first()?.chars().next()
}

fn thread_states(pid: i32) -> Vec<char> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.filter_map(|d| {
        let tid = d.ok()?.file_name();
        stat_fields(&format!("/proc/{pid}/task/{}/stat", tid.to_str()?)).ok()?.first()?.chars().next()
    })
    .collect()
}

/// `root` and all its descendants, from the ppid field of every `/proc/*/stat`.
pub fn process_tree(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for d in dir.flatten() {
            let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let ppid = stat_fields(&format!("/proc/{pid}/stat")).ok().and_then(|f| f.get(1)?.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut tree: BTreeSet<i32> = BTreeSet::from([root]);
    loop {
        let before = tree.len();
        for (pid, ppid) in &parent_of {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            return tree.into_iter().collect();
        }
    }
}

/// The cgroup v2 directory of `pid` (from `/proc/PID/cgroup` and the cgroup2 mount point).
pub fn cgroup_v2_of(pid: i32) -> io::Result<PathBuf> {
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let rel = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("process {pid} is in no cgroup v2")))?;
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    let mount = mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4).map(str::to_string))?
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 file system mounted"))?;
    Ok(Path::new(&mount).join(rel.trim_start_matches('/')))
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{what} did not happen within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

impl Frozen {
    /// Freezes the tree rooted at `pid` (Signal) or the given cgroup, waiting up to `timeout`
    /// until every thread is stopped. On failure everything is thawed again.
    pub fn freeze(pid: i32, method: FreezeMethod, timeout: Duration) -> io::Result<Frozen> {
        let cgroup_file = match &method {
            FreezeMethod::Cgroup(dir) => Some(dir.join("cgroup.freeze")),
            FreezeMethod::Signal => None,
        };
        // The guardian exists before anything is frozen, and hears of each step before it is
        // taken, so there is no moment at which our death would leave the source frozen.
        let guardian = Guardian::spawn(cgroup_file.as_deref())?;
        let mut frozen =
            Frozen { method: method.clone(), stopped: Vec::new(), thawed: false, guardian: Some(guardian) };
        let announce = |g: &Option<Guardian>, rec: Option<i32>| -> io::Result<()> {
            match (g, rec) {
                (Some(g), Some(pid)) => g.will_stop(pid),
                (Some(g), None) => g.will_freeze_cgroup(),
                (None, _) => Ok(()),
            }
        };
        match &method {
            FreezeMethod::Cgroup(dir) => {
                announce(&frozen.guardian, None)?;
                fs::write(dir.join("cgroup.freeze"), "1")?;
                let events = dir.join("cgroup.events");
                wait_until(timeout, "cgroup freeze", || {
                    fs::read_to_string(&events).map(|e| e.lines().any(|l| l == "frozen 1")).unwrap_or(false)
                })?;
            }
            FreezeMethod::Signal => {
                // Repeat until the tree stops growing: a child forked just before its parent
                // stopped must be stopped too.
                loop {
                    let tree = process_tree(pid);
                    let mut new = false;
                    for p in tree {
                        if frozen.stopped.contains(&p) || matches!(proc_state(p), Some('T' | 't' | 'Z' | 'X') | None) {
                            continue;
                        }
                        announce(&frozen.guardian, Some(p))?;
                        frozen.stopped.push(p);
                        kill(Pid::from_raw(p), Signal::SIGSTOP).map_err(io::Error::from)?;
                        new = true;
                    }
                    for &p in &frozen.stopped {
                        wait_until(timeout, "SIGSTOP", || {
                            thread_states(p).iter().all(|s| matches!(s, 'T' | 't' | 'Z' | 'X'))
                        })?;
                    }
                    if !new {
                        break;
                    }
                }
                if frozen.stopped.is_empty() && proc_state(pid).is_none() {
                    return Err(io::Error::new(io::ErrorKind::NotFound, format!("no process {pid}")));
                }
            }
        }
        Ok(frozen)
    }

    /// How this freeze was done.
    pub fn method(&self) -> &FreezeMethod {
        &self.method
    }

    /// The processes this freeze stopped (Signal method).
    pub fn stopped(&self) -> &[i32] {
        &self.stopped
    }

    /// Thaws now, reporting errors (dropping thaws too, logging errors).
    pub fn thaw(mut self) -> io::Result<()> {
        self.do_thaw()
    }

    /// Leaves the tree frozen for good (the destination confirmed a complete copy and the source
    /// is about to be stopped for good).
    pub fn keep_frozen(mut self) {
        self.thawed = true;
        if let Some(g) = self.guardian.take() {
            g.release();
        }
    }

    fn do_thaw(&mut self) -> io::Result<()> {
        if self.thawed {
            return Ok(());
        }
        self.thawed = true;
        let result = match &self.method {
            FreezeMethod::Cgroup(dir) => fs::write(dir.join("cgroup.freeze"), "0"),
            FreezeMethod::Signal => {
                let mut first_err = None;
                for &p in &self.stopped {
                    if let Err(e) = kill(Pid::from_raw(p), Signal::SIGCONT) {
                        if e != nix::errno::Errno::ESRCH {
                            first_err.get_or_insert(io::Error::from(e));
                        }
                    }
                }
                first_err.map_or(Ok(()), Err)
            }
        };
        // Only now that the source runs again may the guardian go.
        if let Some(g) = self.guardian.take() {
            g.release();
        }
        result
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.do_thaw() {
            tracing::error!(error = %e, method = ?self.method, "could not thaw the source");
        }
    }
}
