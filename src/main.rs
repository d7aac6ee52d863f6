//! The `pagestream` command line: argument parsing, logging setup and dispatch to subcommands.

mod bench_lazy;
mod bench_stream;
mod bench_track;
mod demo;
mod image_example;
mod image_show;
mod image_verify;
mod lazy_pages_cmd;
mod page_server_cmd;
mod progress_sink;
mod python_heap;
mod receive_cmd;
mod receive_criu_cmd;
mod round_report;
mod rusage;
mod send_cmd;
mod serve_lazy_cmd;
mod shaped_link;
mod tls_args;
mod track_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pagestream_engine::track::TrackerKind;

use clap::{Parser, Subcommand};

/// pagestream moves the memory of a running Linux process to another host with the least
/// possible downtime (dirty tracking, compressed streaming, CRIU interop).
#[derive(Parser)]
#[command(name = "pagestream", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate a built-in workload end to end on loopback (workload, receiver and sender with
    /// mutual TLS), verify the result byte for byte, and print every round.
    Demo(demo::DemoArgs),
    /// Live-migrate a running process's memory to a `pagestream receive` (pre-copy over QUIC).
    Send(send_cmd::SendArgs),
    /// Receive one migration and write it as a CRIU image directory (or, with --criu-sessions,
    /// CRIU page-server sessions relayed by `pagestream page-server --to`).
    Receive {
        /// Address to listen on (UDP).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        /// The image directory to create on commit (must not exist); with --criu-sessions the root
        /// of DIR/1, DIR/2, ... and DIR/last (created if missing).
        #[arg(long)]
        images_dir: PathBuf,
        #[command(flatten)]
        tls: tls_args::TlsArgs,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// Write one flat image directory at commit instead of a pre-dump chain of background
        /// snapshots (all pages are then written while the source is frozen: longer downtime).
        #[arg(long)]
        flat_image: bool,
        #[command(flatten)]
        criu: receive_criu_cmd::CriuSessionsArgs,
    },
    /// Receive `criu dump/pre-dump --page-server` sessions into DIR/1, DIR/2, ... (a pre-dump
    /// chain with `parent` links and a `last` link), as a drop-in `criu page-server`.
    PageServer(page_server_cmd::PageServerArgs),
    /// Serve a lazy (post-copy) restore, as `criu lazy-pages -D DIR`: from the local images, or
    /// with --from from `pagestream serve-lazy` on the source over QUIC.
    LazyPages(lazy_pages_cmd::LazyPagesArgs),
    /// Serve the lazy pages of an image directory over QUIC to `pagestream lazy-pages --from` on
    /// the destination (the source side of a post-copy restore).
    ServeLazy(serve_lazy_cmd::ServeLazyArgs),
    /// Make a development CA and receiver/sender certificates for mutual TLS in DIR.
    Certs {
        /// Where to write cacert.pem, server-*.pem, client-*.pem (files must not exist).
        dir: PathBuf,
        /// Extra DNS names or IP addresses for the receiver's certificate.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Inspect and check CRIU image directories.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Watch which pages of a running process change, round after round.
    Track {
        /// The process.
        #[arg(long)]
        pid: i32,
        /// Backend: auto picks the best this kernel offers.
        #[arg(long, default_value = "auto", value_parser = parse_tracker)]
        tracker: TrackerChoice,
        /// Rounds after the first (which reports every page that holds data).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Milliseconds between rounds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// One JSON object per round.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (figures as ratios and absolute values on this machine).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Checks that this kernel supports what pagestream needs, against ground truth.
    #[command(subcommand)]
    Selftest(SelftestCommand),
}

#[derive(Subcommand)]
enum SelftestCommand {
    /// Each tracking backend against the pages the test workload really wrote; exit 1 on a
    /// failure (backends the kernel lacks are reported as skipped).
    Track {
        /// Check only this backend (default: all).
        #[arg(long, default_value = "auto", value_parser = parse_tracker)]
        tracker: TrackerChoice,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Cost of a tracking round per backend (clean, 10% and 100% dirty) and page read speed.
    Track {
        /// Working-set size of the workload (suffixes K, M, G).
        #[arg(long, default_value = "1G", value_parser = pagestream::parse_size)]
        size: u64,
        /// Rounds per figure (medians are reported).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// One JSON object per backend.
        #[arg(long)]
        json: bool,
    },
    /// Local lazy restore: fault service latency and pages/s to full residency.
    Lazy(bench_lazy::BenchLazyArgs),
    /// GB/s of process memory over QUIC (LZ4 and uncompressed) vs a plain TCP copy, with CPU
    /// seconds per GB and peak RSS of sender and receiver.
    Stream {
        /// Workload sizes to measure (comma separated, suffixes K, M, G).
        #[arg(long, default_value = "256M,1G", value_delimiter = ',', value_parser = pagestream::parse_size)]
        sizes: Vec<u64>,
        /// The process to move: the paused test workload, or python3 holding a dict of that size.
        #[arg(long, value_enum, default_value = "demo")]
        workload: bench_stream::BenchWorkload,
        /// Migrate over a link of this many Mbit/s (a veth pair into a network namespace with
        /// netem; needs root and iproute2) instead of loopback.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        link_mbit: Option<u32>,
        /// One-way delay of that link in milliseconds (the round trip is twice this).
        #[arg(long, default_value_t = 0.0, requires = "link_mbit")]
        link_delay_ms: f64,
        /// JSON lines (the default output is JSON lines too).
        #[arg(long)]
        json: bool,
    },
}

/// `auto` (probe the kernel) or one backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrackerChoice(pub(crate) Option<TrackerKind>);

pub(crate) fn parse_tracker(s: &str) -> Result<TrackerChoice, String> {
    if s == "auto" {
        Ok(TrackerChoice(None))
    } else {
        s.parse().map(|k| TrackerChoice(Some(k)))
    }
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Print every pagemap of an image directory (entries with vaddr, nr_pages, flags), as
    /// `crit show` does.
    Show {
        /// The image directory.
        dir: PathBuf,
        /// One JSON document; each pagemap in `crit show`'s layout.
        #[arg(long)]
        json: bool,
    },
    /// Check an image directory and its parent chain; exit 1 with the defect on any error.
    Verify {
        /// The image directory.
        dir: PathBuf,
        /// Parent links may not leave this directory (default: the directory holding DIR).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Write a demonstration pre-dump chain (a full image and an incremental one with parent
    /// holes and lazy pages) into DIR, then show and verify it.
    Example {
        /// Where to create the chain (DIR/1 and DIR/2); must not exist.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // `pagestream workload ARGS`: the test workload built in (hidden; what `pagestream-workload`
    // runs), used by the demo and benchmarks when no separate binary sits next to this one. It is
    // dispatched before clap and logging so it behaves exactly like the separate binary.
    if std::env::args().nth(1).as_deref() == Some("workload") {
        let args = std::iter::once("pagestream-workload".to_string()).chain(std::env::args().skip(2));
        pagestream::workload::main_from(args);
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Send(args) => send_cmd::run(&args),
        Command::Receive { listen, images_dir, tls, criu, .. } if criu.criu_sessions => {
            receive_criu_cmd::run(listen, &images_dir, &tls, &criu)
        }
        Command::Receive { listen, images_dir, tls, json, flat_image, .. } => {
            receive_cmd::run(listen, &images_dir, &tls, json, !flat_image)
        }
        Command::Certs { dir, names } => certs_cmd(&dir, &names),
        Command::PageServer(args) => page_server_cmd::run(&args),
        Command::LazyPages(args) => lazy_pages_cmd::run(&args),
        Command::ServeLazy(args) => serve_lazy_cmd::run(&args),
        Command::Bench(BenchCommand::Lazy(args)) => bench_lazy::run(&args),
        Command::Image(ImageCommand::Show { dir, json }) => image_show::run(&dir, json),
        Command::Image(ImageCommand::Verify { dir, root }) => image_verify::run(&dir, root.as_deref()),
        Command::Image(ImageCommand::Example { dir }) => image_example::run(&dir),
        Command::Track { pid, tracker, rounds, interval_ms, json } => {
            track_cmd::run(pid, tracker.0, rounds, Duration::from_millis(interval_ms), json)
        }
        Command::Bench(BenchCommand::Track { size, repeat, json }) => bench_track::run(size, repeat.max(1), json),
        Command::Bench(BenchCommand::Stream { sizes, workload, link_mbit, link_delay_ms, json }) => {
            bench_stream::run(&sizes, workload, link_mbit, link_delay_ms, json)
        }
        Command::Selftest(SelftestCommand::Track { tracker }) => selftest_cmd(tracker.0),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `pagestream image show DIR | head` is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagestream: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn certs_cmd(dir: &std::path::Path, names: &[String]) -> anyhow::Result<()> {
    let c = pagestream_transport::quic::make_dev_certs(dir, names)?;
    println!("development CA and certificates in {}", c.dir.display());
    println!(
        "receiver: --tls-cacert {} --tls-cert {} --tls-key {}",
        c.cacert.display(),
        c.server_cert.display(),
        c.server_key.display()
    );
    println!(
        "sender:   --tls-cacert {} --tls-cert {} --tls-key {}",
        c.cacert.display(),
        c.client_cert.display(),
        c.client_key.display()
    );
    Ok(())
}

fn selftest_cmd(only: Option<TrackerKind>) -> anyhow::Result<()> {
    let exe = pagestream::workload_client::workload_next_to_me()?;
    let mut failed = Vec::new();
    for kind in TrackerKind::ALL.into_iter().filter(|k| only.is_none_or(|o| o == *k)) {
        if let Err(reason) = kind.available() {
            println!("{kind}: SKIPPED ({reason})");
            continue;
        }
        match pagestream::selftest_track::ground_truth(kind, &exe, |l| println!("  {l}")) {
            Ok(()) => println!("{kind}: PASS"),
            Err(e) => {
                println!("{kind}: FAIL: {e:#}");
                failed.push(kind.to_string());
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "tracking self-test failed for {}", failed.join(", "));
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
