//! [`PythonHeap`]: a real heap to migrate in benchmarks, a `python3` process holding a large dict
//! of small records (strings, ints, floats, lists: what a service keeps in memory). It builds
//! the dict until its resident size reaches the size asked for, prints `ready`, and then sits
//! idle until its stdin closes (or it is killed when dropped).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use pagestream_engine::process::residency::{populated_in, ResidencyMethod};
use pagestream_engine::process::{MemoryLayout, Target};
use pagestream_engine::PageRunSet;

/// Builds the dict up to the resident size in argv[1], then waits on stdin.
const SCRIPT: &str = r#"
import os, sys
target = int(sys.argv[1])
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
d, i = {}, 0
while rss() < target:
    for _ in range(20000):
        d["user:%010d" % i] = {"id": i, "name": "user-%d" % i, "email": "user%d@example.com" % i,
                               "score": i * 0.25, "tags": ["edge", "hpc", "mpi"][: i % 4]}
        i += 1
print("ready pid=%d entries=%d" % (os.getpid(), i), flush=True)
sys.stdin.read()
"#;

/// A running `python3` holding a dict; see the module documentation.
pub struct PythonHeap {
    child: Child,
    _stdin: ChildStdin,
    /// Its pid.
    pub pid: i32,
    /// Records in the dict.
    pub entries: u64,
}

impl PythonHeap {
    /// Starts `python3` and waits until its resident size reached `bytes`.
    pub fn spawn(bytes: u64) -> Result<PythonHeap> {
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT, &bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting python3 (the python heap workload needs it on PATH)")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("python3 has no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("python3 has no stdout"))?;
        let mut heap = PythonHeap { child, _stdin: stdin, pid: 0, entries: 0 };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("reading python3's ready line")?;
        for kv in line.split_whitespace().skip(1) {
            match kv.split_once('=') {
                Some(("pid", v)) => heap.pid = v.parse().context("python3's pid")?,
                Some(("entries", v)) => heap.entries = v.parse().context("python3's entry count")?,
                _ => {}
            }
        }
        if !line.starts_with("ready") || heap.pid == 0 {
            bail!("python3 did not get ready (said {line:?})");
        }
        Ok(heap)
    }

    /// The pages of the process that hold data (what a migration's first round sends).
    pub fn pages(&self, page_size: u64) -> Result<PageRunSet> {
        let target = Target::open(self.pid)?;
        let layout = MemoryLayout::read(self.pid)?;
        let pagemap = target.open_pagemap()?;
        Ok(populated_in(&pagemap, &layout, page_size, ResidencyMethod::probe())?)
    }
}

impl Drop for PythonHeap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
