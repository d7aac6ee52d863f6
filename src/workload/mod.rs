//! The test workload of pagestream's tests, benchmarks, demo and guest runs: the
//! `pagestream-workload` binary, also built into `pagestream` itself (hidden `workload`
//! subcommand) so that `cargo run -- demo` needs nothing else.
//!
//! It maps a working set, dirties it at a configurable rate and pattern, and keeps verifying its
//! own memory against a generation table (itself in the migrated memory), so a restored copy
//! proves that it is alive and intact. A line protocol on stdin lets tests pause it and ask
//! exactly which pages it wrote between two points. Protocol (one reply line each):
//!
//! ```text
//! pause | resume | mark | written | changed | verify | info | exit
//! dirty <permille>   write that share of the pages now, spread evenly (for benchmarks)
//! map <pages>        map and fill an extra area; unmap: unmap the newest extra area
//! protect            make the newest extra area PROT_NONE (its pages keep their data)
//! ```
//!
//! `written` answers `written <pages> <vaddr>+<n>,...` for the pages of the main area written
//! since the last `mark`; `changed` the same for pages whose content actually changed. Periodic `progress ...` lines report writes and verification passes; a failed
//! verification prints `CORRUPT ...` and exits with status 3.

pub mod content;
pub mod region;

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use region::Region;

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Pattern {
    /// Pages in address order, wrapping around.
    Seq,
    /// Uniformly random pages.
    Random,
    /// 90% of writes to the first 10% of pages.
    Hot,
}

/// A memory workload that dirties pages and verifies itself.
#[derive(Parser)]
#[command(name = "pagestream-workload", version)]
pub struct Args {
    /// Working set size in bytes (suffixes K, M, G).
    #[arg(long, default_value = "64M", value_parser = crate::parse_size)]
    size: u64,
    /// Pages written per second (0: as fast as possible).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Which pages get written.
    #[arg(long, value_enum, default_value = "random")]
    pattern: Pattern,
    /// Seed of the content and of the random pattern.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Milliseconds between progress lines (each one follows a full self-check).
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
    /// Start paused (no writes until `resume`).
    #[arg(long)]
    paused: bool,
}

struct Workload {
    mem: Region,
    gens: Vec<u32>,
    written: Vec<u64>,
    /// Generations at the last `mark`, to tell which pages differ in content since then.
    mark_gens: Vec<u32>,
    extras: Vec<Region>,
    /// Extra areas mapped so far (each gets different content).
    maps: u32,
    scratch: Vec<u8>,
    page_size: usize,
    seed: u64,
    rng: u64,
    cursor: u64,
    writes: u64,
}

impl Workload {
    fn pages(&self) -> u64 {
        self.gens.len() as u64
    }

    fn write_page(&mut self, i: u64) {
        let g = self.gens[i as usize].wrapping_add(1).max(1);
        self.gens[i as usize] = g;
        let ps = self.page_size;
        content::fill(&mut self.scratch, i, g, self.seed);
        // Always store, even identical bytes: a write is a write for the trackers.
        let page = &mut self.mem.bytes_mut()[i as usize * ps..(i as usize + 1) * ps];
        page.copy_from_slice(&self.scratch);
        self.written[(i / 64) as usize] |= 1 << (i % 64);
        self.writes += 1;
    }

    fn next_page(&mut self, pattern: Pattern) -> u64 {
        self.rng = content::mix(self.rng);
        let n = self.pages();
        match pattern {
            Pattern::Seq => {
                self.cursor = (self.cursor + 1) % n;
                self.cursor
            }
            Pattern::Random => self.rng % n,
            Pattern::Hot if self.rng % 10 != 0 => (self.rng >> 8) % (n / 10).max(1),
            Pattern::Hot => (self.rng >> 8) % n,
        }
    }

    /// Checks every page against its generation; the first mismatch is returned.
    fn verify(&self) -> Result<u64, String> {
        let ps = self.page_size;
        let mut want = vec![0u8; ps];
        for (i, page) in self.mem.bytes().chunks_exact(ps).enumerate() {
            content::fill(&mut want, i as u64, self.gens[i], self.seed);
            if page != want.as_slice() {
                let off = page.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!(
                    "CORRUPT page={i} vaddr={:#x} gen={} first_bad_byte={off}",
                    self.mem.base() + (i * ps) as u64,
                    self.gens[i]
                ));
            }
        }
        Ok(self.pages())
    }

    /// Pages whose content now differs from their content at the last `mark`.
    fn changed_since_mark(&mut self) -> Vec<u64> {
        let ps = self.page_size;
        let mut bits = vec![0u64; self.written.len()];
        for i in 0..self.gens.len() {
            let then = self.mark_gens.get(i).copied().unwrap_or(0);
            if then == self.gens[i] {
                continue;
            }
            content::fill(&mut self.scratch, i as u64, then, self.seed);
            if self.mem.bytes()[i * ps..(i + 1) * ps] != self.scratch[..] {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    /// Writes `permille` of the pages, spread evenly; returns how many.
    fn dirty_share(&mut self, permille: u64) -> u64 {
        let n = self.pages();
        let want = (n * permille.min(1000)).div_ceil(1000);
        for k in 0..want {
            self.write_page(k * n / want.max(1));
        }
        want
    }

    /// Maps an extra area of `pages` pages and writes every page of it.
    fn map_extra(&mut self, pages: u64) -> Result<String, String> {
        let ps = self.page_size;
        let mut r = Region::map(pages as usize * ps).map_err(|e| e.to_string())?;
        self.maps += 1;
        for (i, page) in r.bytes_mut().chunks_exact_mut(ps).enumerate() {
            content::fill(page, (1 << 40) + i as u64, self.maps, self.seed);
            // Never all-zero, and different from every earlier extra area's page at this index.
            page[..8].copy_from_slice(&((u64::from(self.maps) << 32) | i as u64 | 1 << 63).to_le_bytes());
        }
        let desc = format!("{:#x}+{pages}", r.base());
        self.extras.push(r);
        Ok(desc)
    }

    fn runs_of(&self, bits: &[u64]) -> (u64, String) {
        let (mut count, mut runs, mut i) = (0u64, Vec::new(), 0u64);
        let bit = |i: u64| bits[(i / 64) as usize] & (1 << (i % 64)) != 0;
        while i < self.pages() {
            if bit(i) {
                let start = i;
                while i < self.pages() && bit(i) {
                    i += 1;
                }
                count += i - start;
                runs.push(format!("{:#x}+{}", self.mem.base() + start * self.page_size as u64, i - start));
            } else {
                i += 1;
            }
        }
        (count, runs.join(","))
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The test driving us may have gone away; the workload keeps running regardless.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the workload with command-line `args` (the first one is the program name); returns only
/// after `exit` on stdin or an error (the process exits with 3 on memory corruption).
pub fn main_from<I, T>(args: I)
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::parse_from(args);
    let page_size = pagestream_engine::page_size() as usize;
    let pages = args.size.div_ceil(page_size as u64);
    let mem = match Region::map((pages as usize) * page_size) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pagestream-workload: cannot map {} bytes: {e}", args.size);
            std::process::exit(1);
        }
    };
    let mut w = Workload {
        mem,
        gens: vec![0; pages as usize],
        written: vec![0; pages.div_ceil(64) as usize],
        mark_gens: Vec::new(),
        extras: Vec::new(),
        maps: 0,
        scratch: vec![0; page_size],
        page_size,
        seed: args.seed,
        rng: args.seed,
        cursor: 0,
        writes: 0,
    };
    for i in 0..pages {
        w.write_page(i);
    }
    say(&format!(
        "ready pid={} base={:#x} size={} pages={pages} page_size={page_size}",
        std::process::id(),
        w.mem.base(),
        pages * page_size as u64
    ));

    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_string()).is_err() {
                break;
            }
        }
    });

    let tick = Duration::from_millis(10);
    let per_tick = if args.rate == 0 { u64::MAX } else { (args.rate / 100).max(1) };
    let mut paused = args.paused;
    let mut verifies = 0u64;
    let mut last_report = Instant::now();
    loop {
        let start = Instant::now();
        while let Ok(cmd) = rx.try_recv() {
            match cmd.as_str() {
                "pause" => {
                    paused = true;
                    say("paused");
                }
                "resume" => {
                    paused = false;
                    say("resumed");
                }
                "mark" => {
                    w.written.iter_mut().for_each(|b| *b = 0);
                    w.mark_gens = w.gens.clone();
                    say("marked");
                }
                "written" => {
                    let (n, runs) = w.runs_of(&w.written);
                    say(&format!("written {n} {runs}"));
                }
                "changed" => {
                    let changed = w.changed_since_mark();
                    let (n, runs) = w.runs_of(&changed);
                    say(&format!("changed {n} {runs}"));
                }
                "protect" => match w.extras.last_mut().map(|r| r.protect_none()) {
                    Some(Ok(())) => say("protected"),
                    Some(Err(e)) => say(&format!("error mprotect: {e}")),
                    None => say("error no extra area"),
                },
                "unmap" => match w.extras.pop() {
                    Some(r) => {
                        let desc = format!("{:#x}+{}", r.base(), r.byte_len() / page_size);
                        drop(r);
                        say(&format!("unmapped {desc}"));
                    }
                    None => say("error no extra area"),
                },
                "verify" => match w.verify() {
                    Ok(n) => say(&format!("verify ok pages={n}")),
                    Err(e) => {
                        say(&e);
                        std::process::exit(3);
                    }
                },
                "info" => say(&format!(
                    "info pid={} base={:#x} pages={} page_size={page_size} writes={}",
                    std::process::id(),
                    w.mem.base(),
                    w.pages(),
                    w.writes
                )),
                "exit" => {
                    say("bye");
                    return;
                }
                "" => {}
                other => match other.split_once(' ') {
                    Some(("dirty", p)) => match p.parse::<u64>() {
                        Ok(p) => say(&format!("dirtied {}", w.dirty_share(p))),
                        Err(e) => say(&format!("error bad permille {p:?}: {e}")),
                    },
                    Some(("map", n)) => {
                        match n.parse::<u64>().map_err(|e| e.to_string()).and_then(|n| w.map_extra(n)) {
                            Ok(desc) => say(&format!("mapped {desc}")),
                            Err(e) => say(&format!("error map: {e}")),
                        }
                    }
                    _ => say(&format!("error unknown command {other:?}")),
                },
            }
        }
        if !paused {
            let mut n = 0;
            while n < per_tick && start.elapsed() < tick {
                let i = w.next_page(args.pattern);
                w.write_page(i);
                n += 1;
            }
        }
        if last_report.elapsed() >= Duration::from_millis(args.report_ms) {
            match w.verify() {
                Ok(_) => verifies += 1,
                Err(e) => {
                    say(&e);
                    std::process::exit(3);
                }
            }
            say(&format!("progress writes={} verifies={verifies} ok", w.writes));
            last_report = Instant::now();
        }
        if let Some(rest) = tick.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}
