//! Drives a `pagestream-workload` child process through its stdin line protocol: spawn, send a
//! command, wait for its reply line (skipping progress lines), parse page-run lists. Used by the
//! benchmarks, the demo and the integration tests.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use pagestream_engine::{PageRun, PageRunSet};

/// How to start the workload: a program and the arguments that come before the workload's own.
#[derive(Clone, Debug)]
pub struct WorkloadProgram {
    /// The executable.
    pub exe: PathBuf,
    /// Leading arguments (`["workload"]` when it is `pagestream` itself).
    pub prefix: Vec<String>,
}

/// The `pagestream-workload` binary next to the running executable when there is one (as
/// `cargo build` leaves it), else the running `pagestream` itself through its hidden `workload`
/// subcommand, so `cargo run -- demo` works without building the other binaries.
pub fn workload_next_to_me() -> Result<WorkloadProgram> {
    let me = std::env::current_exe().context("locating the running executable")?;
    let dir = me.parent().ok_or_else(|| anyhow!("executable has no directory"))?;
    // Test binaries live one level deeper (target/debug/deps).
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("pagestream-workload");
        if p.exists() {
            return Ok(WorkloadProgram { exe: p, prefix: Vec::new() });
        }
    }
    if me.file_name().is_some_and(|n| n == "pagestream") {
        return Ok(WorkloadProgram { exe: me, prefix: vec!["workload".into()] });
    }
    bail!("pagestream-workload not found next to {} (build it with `cargo build --bins`)", me.display())
}

/// A running workload.
pub struct Workload {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub pid: i32,
    pub base: u64,
    pub pages: u64,
    pub page_size: u64,
}

impl Workload {
    /// Starts the workload binary at `exe` with `args` and waits for its `ready` line.
    pub fn spawn(exe: &Path, args: &[&str]) -> Result<Workload> {
        Self::spawn_program(&WorkloadProgram { exe: exe.to_path_buf(), prefix: Vec::new() }, args)
    }

    /// Starts `program` with `args` and waits for its `ready` line.
    pub fn spawn_program(program: &WorkloadProgram, args: &[&str]) -> Result<Workload> {
        let exe = program.exe.as_path();
        let mut child = Command::new(exe)
            .args(&program.prefix)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("workload has no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("workload has no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Workload { child, stdin, lines, pid: 0, base: 0, pages: 0, page_size: 0 };
        let ready = w.wait_for("ready")?;
        for kv in ready.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("bad ready line {ready:?}"))?;
            match k {
                "pid" => w.pid = v.parse()?,
                "base" => w.base = u64::from_str_radix(v.trim_start_matches("0x"), 16)?,
                "pages" => w.pages = v.parse()?,
                "page_size" => w.page_size = v.parse()?,
                _ => {}
            }
        }
        Ok(w)
    }

    /// Waits (up to 120 s) for a line starting with `prefix`; `CORRUPT` or `error` lines fail.
    pub fn wait_for(&mut self, prefix: &str) -> Result<String> {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .map_err(|e| anyhow!("workload gave no `{prefix}` line: {e}"))?;
            if line.starts_with("CORRUPT") || line.starts_with("error") {
                bail!("workload: {line}");
            }
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }

    /// Sends `cmd` and returns the reply line starting with `reply`.
    pub fn cmd(&mut self, cmd: &str, reply: &str) -> Result<String> {
        writeln!(self.stdin, "{cmd}").context("writing to the workload")?;
        self.stdin.flush().context("writing to the workload")?;
        self.wait_for(reply)
    }

    /// The main area as a run set.
    pub fn area(&self) -> PageRunSet {
        PageRunSet::from_runs(self.page_size, [PageRun::new(self.base, self.pages)])
    }

    /// `written` or `changed` as a run set.
    pub fn pages_since_mark(&mut self, which: &str) -> Result<PageRunSet> {
        let line = self.cmd(which, which)?;
        parse_runs(line.split_whitespace().nth(2).unwrap_or(""), self.page_size)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Parses `0xADDR+N,0xADDR+N`.
pub fn parse_runs(s: &str, page_size: u64) -> Result<PageRunSet> {
    let mut set = PageRunSet::new(page_size);
    for r in s.split(',').filter(|r| !r.is_empty()) {
        let (a, n) = r.split_once('+').ok_or_else(|| anyhow!("bad run {r:?}"))?;
        set.insert(PageRun::new(u64::from_str_radix(a.trim_start_matches("0x"), 16)?, n.parse()?));
    }
    Ok(set)
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
