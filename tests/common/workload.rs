//! Drives a `pagestream-workload` child process through its stdin line protocol: spawn, send a
//! command, wait for its reply line (skipping progress lines), parse page-run lists.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use pagestream_engine::{PageRun, PageRunSet};

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
    /// Starts the workload with `args` and waits for its `ready` line.
    pub fn spawn(args: &[&str]) -> Workload {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pagestream-workload"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn pagestream-workload");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Workload { child, stdin, lines, pid: 0, base: 0, pages: 0, page_size: 0 };
        let ready = w.wait_for("ready");
        for kv in ready.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=').expect("key=value");
            match k {
                "pid" => w.pid = v.parse().expect("pid"),
                "base" => w.base = u64::from_str_radix(v.trim_start_matches("0x"), 16).expect("base"),
                "pages" => w.pages = v.parse().expect("pages"),
                "page_size" => w.page_size = v.parse().expect("page size"),
                _ => {}
            }
        }
        w
    }

    /// Waits (up to 60 s) for a line starting with `prefix`, failing on `CORRUPT` or `error`.
    pub fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("workload gave no `{prefix}` line: {e}"));
            assert!(!line.starts_with("CORRUPT") && !line.starts_with("error"), "workload: {line}");
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Sends `cmd` and returns the reply line starting with `reply`.
    pub fn cmd(&mut self, cmd: &str, reply: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write to workload");
        self.stdin.flush().expect("flush");
        self.wait_for(reply)
    }

    /// The main area as a run set.
    pub fn area(&self) -> PageRunSet {
        PageRunSet::from_runs(self.page_size, [PageRun::new(self.base, self.pages)])
    }

    /// `written` or `changed` as a run set.
    pub fn pages_since_mark(&mut self, which: &str) -> PageRunSet {
        let line = self.cmd(which, which);
        parse_runs(line.split_whitespace().nth(2).unwrap_or(""), self.page_size)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Parses `0xADDR+N,0xADDR+N`.
pub fn parse_runs(s: &str, page_size: u64) -> PageRunSet {
    PageRunSet::from_runs(
        page_size,
        s.split(',').filter(|r| !r.is_empty()).map(|r| {
            let (a, n) = r.split_once('+').expect("addr+n");
            PageRun::new(u64::from_str_radix(a.trim_start_matches("0x"), 16).expect("addr"), n.parse().expect("n"))
        }),
    )
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
