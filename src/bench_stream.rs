//! `pagestream bench stream`: how fast process memory moves. For each size, a paused workload
//! with realistic content (30% zero, 40% text, 30% random pages) is migrated by separate
//! `pagestream send` and `pagestream receive` processes over loopback QUIC with mutual TLS, once
//! with LZ4 and once without compression; a plain TCP copy of the same pages (read with the same
//! PageReader, written to a socket, read and dropped on the other side) is measured in the same
//! run as the baseline. Reported: GB/s of process memory in the first (full) round, wire ratio,
//! CPU seconds per GB and peak RSS of each side.
//!
//! With `--workload python` the process moved is a `python3` holding a large dict instead (a
//! real heap, see [`PythonHeap`]): every page of it that holds data.
//!
//! With `--link-mbit` (and `--link-delay-ms`) the receiving side sits behind a [`ShapedLink`]
//! instead of loopback: a link of that rate and delay, where the bytes on the wire count and
//! compression can pay for its CPU.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use pagestream::workload_client::{workload_next_to_me, Workload};
use pagestream_engine::process::Target;
use pagestream_engine::read::PageReader;
use pagestream_engine::{page_size, PageRunSet};
use serde_json::{json, Value};

use crate::python_heap::PythonHeap;
use crate::shaped_link::ShapedLink;

/// `--workload`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchWorkload {
    /// pagestream's test workload, paused, with realistic content (30% zero, 40% text, 30% random).
    Demo,
    /// A python3 process holding a large dict.
    Python,
}

/// The process a run moves, and the pages of it that count.
struct Subject {
    pid: i32,
    page_size: u64,
    pages: PageRunSet,
}

impl Subject {
    fn bytes(&self) -> f64 {
        (self.pages.len_pages() * self.page_size) as f64
    }
}

const GB: f64 = 1e9;

fn me() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("locating pagestream")
}

/// One QUIC migration of the paused workload; returns the JSON line for it.
fn quic_run(w: &Subject, certs: &Path, scratch: &Path, compression: &str, link: Option<&ShapedLink>) -> Result<Value> {
    let images = scratch.join(format!("images-{compression}-{}", w.pid));
    let tls = |side: &str| -> Vec<String> {
        vec![
            "--tls-cacert".into(),
            certs.join("cacert.pem").display().to_string(),
            "--tls-cert".into(),
            certs.join(format!("{side}-cert.pem")).display().to_string(),
            "--tls-key".into(),
            certs.join(format!("{side}-key.pem")).display().to_string(),
        ]
    };
    let ip = link.map_or(Ipv4Addr::LOCALHOST, |l| l.peer_addr);
    let mut rx = match link {
        Some(l) => {
            let [program, rest @ ..] = l.exec_prefix();
            let mut c = Command::new(program);
            c.args(rest).arg(me()?);
            c
        }
        None => Command::new(me()?),
    };
    let mut rx = rx
        .args(["receive", "--listen", &format!("{ip}:0"), "--images-dir"])
        .arg(&images)
        .args(tls("server"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    BufReader::new(rx.stderr.take().ok_or_else(|| anyhow!("receiver stderr"))?).read_line(&mut first)?;
    let addr = first
        .split_whitespace()
        .find(|t| t.starts_with(&format!("{ip}:")))
        .ok_or_else(|| anyhow!("receiver said {first:?}"))?;
    let mut tx = Command::new(me()?)
        .args(["send", "--pid", &w.pid.to_string(), "--to", addr, "--tls-server-name", "localhost", "--leave-running"])
        .args(["--max-rounds", "1", "--downtime-ms", "1000000", "--json", "--compression", compression])
        .args(tls("client"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut out = String::new();
    tx.stdout.take().ok_or_else(|| anyhow!("sender stdout"))?.read_to_string(&mut out)?;
    let su = crate::rusage::wait(&mut tx)?;
    let ru = crate::rusage::wait(&mut rx)?;
    if su.code != Some(0) || ru.code != Some(0) {
        bail!("migration failed (sender {:?}, receiver {:?})", su.code, ru.code);
    }
    std::fs::remove_dir_all(&images).ok();
    let round0: Value = out
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v["round"] == 0))
        .ok_or_else(|| anyhow!("no round 0 in {out}"))?;
    let bytes = w.bytes();
    let secs = round0["duration_ms"].as_f64().unwrap_or(f64::NAN) / 1e3;
    let raw = round0["raw_bytes"].as_f64().unwrap_or(f64::NAN);
    let wire = round0["wire_bytes"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "mode": format!("quic_{compression}"), "size_bytes": bytes, "gbps": bytes / secs / GB,
        "wire_ratio": wire / raw, "round0_ms": secs * 1e3,
        "sender_cpu_s_per_gb": su.cpu.as_secs_f64() / (bytes / GB),
        "receiver_cpu_s_per_gb": ru.cpu.as_secs_f64() / (bytes / GB),
        "sender_peak_rss_mib": su.max_rss as f64 / (1 << 20) as f64,
        "receiver_peak_rss_mib": ru.max_rss as f64 / (1 << 20) as f64,
    }))
}

/// The baseline: the same pages over a plain TCP socket, dropped at the other end.
fn tcp_run(w: &Subject, link: Option<&ShapedLink>) -> Result<Value> {
    let ip = link.map_or(Ipv4Addr::LOCALHOST, |l| l.peer_addr);
    let (listener, addr) = std::thread::scope(|s| {
        // The listener is bound from a thread inside the link's namespace; the socket stays there.
        s.spawn(|| -> Result<(TcpListener, SocketAddr)> {
            if let Some(l) = link {
                l.enter()?;
            }
            let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            let addr = listener.local_addr()?;
            Ok((listener, addr))
        })
        .join()
        .map_err(|_| anyhow!("binding the TCP sink panicked"))?
    })?;
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let target = Target::open(w.pid)?;
    let mut reader = PageReader::new(&target, w.page_size)?;
    let mut s = TcpStream::connect(addr)?;
    let t0 = Instant::now();
    let mut failure = None;
    reader.read(w.pages.iter(), |_, bytes| {
        if failure.is_none() {
            failure = s.write_all(bytes).err();
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    drop(s);
    let got = sink.join().map_err(|_| anyhow!("TCP sink panicked"))??;
    let secs = t0.elapsed().as_secs_f64();
    Ok(json!({ "mode": "tcp_plain", "size_bytes": got, "gbps": got as f64 / secs / GB }))
}

/// Runs the benchmark for each size; over a shaped link of `link_mbit` Mbit/s and
/// `link_delay_ms` one-way delay when a rate is given, else over loopback.
pub fn run(
    sizes: &[u64],
    workload: BenchWorkload,
    link_mbit: Option<u32>,
    link_delay_ms: f64,
    as_json: bool,
) -> Result<()> {
    let link = link_mbit.map(|mbit| ShapedLink::create(mbit, link_delay_ms)).transpose()?;
    let link = link.as_ref();
    let scratch = tempfile::Builder::new().prefix("pagestream-bench-").tempdir()?;
    let certs = scratch.path().join("certs");
    pagestream_transport::quic::make_dev_certs(&certs, &[])?;
    let exe = workload_next_to_me()?;
    for &size in sizes {
        // Kept alive (and killed when dropped) for the size's runs.
        let (_demo, _python, w);
        match workload {
            BenchWorkload::Demo => {
                let d = Workload::spawn_program(
                    &exe,
                    &["--size", &size.to_string(), "--paused", "--report-ms", "100000000"],
                )?;
                w = Subject { pid: d.pid, page_size: d.page_size, pages: d.area() };
                _demo = Some(d);
            }
            BenchWorkload::Python => {
                let p = PythonHeap::spawn(size)?;
                w = Subject { pid: p.pid, page_size: page_size(), pages: p.pages(page_size())? };
                _python = Some(p);
            }
        }
        let tcp = tcp_run(&w, link)?;
        let lz4 = quic_run(&w, &certs, scratch.path(), "lz4", link)?;
        let raw = quic_run(&w, &certs, scratch.path(), "none", link)?;
        let ratio = |a: &Value, b: &Value| a["gbps"].as_f64().unwrap_or(0.0) / b["gbps"].as_f64().unwrap_or(f64::NAN);
        let mut summary = json!({
            "size_bytes": size, "workload": format!("{workload:?}").to_lowercase(), "memory_bytes": w.bytes(),
            "lz4_vs_none": ratio(&lz4, &raw), "lz4_vs_tcp_plain": ratio(&lz4, &tcp),
        });
        summary["link"] = match link {
            Some(l) => json!({ "mbit": l.mbit, "delay_ms": l.delay_ms }),
            None => json!("loopback"),
        };
        for v in [&tcp, &lz4, &raw, &summary] {
            if as_json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string(v)?);
            }
        }
    }
    Ok(())
}
