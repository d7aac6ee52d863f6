//! `pagestream send`: live pre-copy migration of a running process's memory to a
//! `pagestream receive` over QUIC; the source is stopped only after the destination confirmed a
//! durable copy (or resumed with `--leave-running`). With `--criu-page-server` the memory goes to
//! a real `criu page-server` instead, stop-and-copy (CRIU's protocol has one pass per session).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use pagestream_engine::precopy::{migrate, MigrationConfig, PreCopyPolicy};
use pagestream_engine::process::freeze::cgroup_v2_of;
use pagestream_engine::process::{FreezeMethod, Target};
use pagestream_engine::sink::PageSink;
use pagestream_engine::track::TrackerKind;
use pagestream_transport::criu_ps::client_sink::CriuPageServerSink;
use pagestream_transport::criu_ps::HeaderLayout;
use pagestream_transport::quic::{Compression, QuicSink, SenderConfig};
use serde_json::json;

use crate::progress_sink::ProgressSink;
use crate::round_report::RoundPrinter;
use crate::tls_args::TlsArgs;

/// Pre-copy knobs shared by `send` and `demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct PreCopyArgs {
    /// Downtime budget: stop iterating when the final round is estimated to fit it.
    #[arg(long, default_value_t = 300)]
    pub downtime_ms: u64,
    /// Live rounds at most before freezing.
    #[arg(long, default_value_t = 30)]
    pub max_rounds: u32,
    /// Stop iterating after this many seconds.
    #[arg(long)]
    pub deadline_s: Option<f64>,
    /// Dirty tracking backend (auto: the best this kernel offers).
    #[arg(long, default_value = "auto", value_parser = crate::parse_tracker)]
    pub tracker: crate::TrackerChoice,
    /// Page compression on the wire.
    #[arg(long, value_enum, default_value = "lz4")]
    pub compression: CompressionArg,
    /// One JSON object per round, then a summary object.
    #[arg(long)]
    pub json: bool,
}

/// `--compression`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CompressionArg {
    Lz4,
    None,
}

impl PreCopyArgs {
    /// The engine's migration configuration with `freeze`.
    pub fn config(&self, freeze: FreezeMethod) -> MigrationConfig {
        MigrationConfig {
            policy: PreCopyPolicy {
                downtime: Duration::from_millis(self.downtime_ms),
                max_rounds: self.max_rounds.max(1),
                deadline: self.deadline_s.map(Duration::from_secs_f64),
                ..Default::default()
            },
            freeze,
            ..Default::default()
        }
    }

    /// The tracker, probed when `auto`.
    pub fn tracker(&self) -> TrackerKind {
        self.tracker.0.unwrap_or_else(TrackerKind::probe)
    }

    /// The transport's compression.
    pub fn compression(&self) -> Compression {
        match self.compression {
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::None => Compression::None,
        }
    }
}

/// `--freeze`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FreezeArg {
    /// SIGSTOP/SIGCONT the process tree.
    Signal,
    /// The cgroup v2 freezer of the process's cgroup (a container).
    Cgroup,
}

fn parse_header(s: &str) -> Result<HeaderLayout, String> {
    match s {
        "24" => Ok(HeaderLayout::Legacy24),
        "32" => Ok(HeaderLayout::Wide32),
        _ => Err(format!("{s:?}: expected 24 or 32")),
    }
}

/// Everything `pagestream send` takes.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// The process to migrate.
    #[arg(long)]
    pub pid: i32,
    /// The destination's `pagestream receive` address.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "criu_page_server")]
    pub to: Option<String>,
    /// Dump into a real `criu page-server` at HOST:PORT instead (plain TCP, as CRIU speaks it;
    /// stop-and-copy: the process is frozen, then all its memory is sent once).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "to")]
    pub criu_page_server: Option<String>,
    /// With --criu-page-server: CRIU's header size, 24 (CRIU <= 4.1.1) or 32 (CRIU >= 4.2).
    #[arg(long, default_value = "24", value_parser = parse_header, requires = "criu_page_server")]
    pub criu_header: HeaderLayout,
    /// The name the destination's certificate must carry (default: HOST of --to).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub precopy: PreCopyArgs,
    /// How to freeze the source for the final round.
    #[arg(long, value_enum, default_value = "signal")]
    pub freeze: FreezeArg,
    /// Resume the source after the destination committed (default: stop it for good).
    #[arg(long)]
    pub leave_running: bool,
}

/// `HOST:PORT` as its first address and the host name (for TLS).
pub(crate) fn resolve(to: &str) -> Result<(SocketAddr, String)> {
    let addr = to
        .to_socket_addrs()
        .with_context(|| format!("resolving {to}"))?
        .next()
        .ok_or_else(|| anyhow!("{to} resolves to no address"))?;
    let host = to.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(to).to_string();
    Ok((addr, host))
}

/// Runs `pagestream send`.
pub fn run(args: &SendArgs) -> Result<()> {
    let target = Target::open(args.pid)?;
    let freeze = match args.freeze {
        FreezeArg::Signal => FreezeMethod::Signal,
        FreezeArg::Cgroup => FreezeMethod::Cgroup(cgroup_v2_of(args.pid).context("finding the source's cgroup")?),
    };
    let kind = args.precopy.tracker();
    let mut tracker = kind.open(Target::open(args.pid)?).with_context(|| format!("starting {kind} tracking"))?;
    let mut config = args.precopy.config(freeze);
    let sink: Box<dyn PageSink> = match (&args.to, &args.criu_page_server) {
        (_, Some(criu)) => {
            let (addr, _) = resolve(criu)?;
            config.stop_and_copy = true;
            Box::new(
                CriuPageServerSink::connect(addr, args.criu_header, pagestream_engine::page_size())
                    .with_context(|| format!("connecting to the CRIU page server at {addr}"))?,
            )
        }
        (Some(to), None) => {
            let (addr, host) = resolve(to)?;
            let mut cfg = SenderConfig::new(args.tls.security()?);
            cfg.server_name = args.tls_server_name.clone().unwrap_or(host);
            cfg.compression = args.precopy.compression();
            Box::new(
                QuicSink::connect(addr, cfg, pagestream_engine::page_size())
                    .with_context(|| format!("connecting to {addr}"))?,
            )
        }
        (None, None) => return Err(anyhow!("--to or --criu-page-server is required")),
    };
    let mut sink = ProgressSink::new(sink, !args.precopy.json && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let mut printer = RoundPrinter::new(args.precopy.json);
    let done = migrate(&target, tracker.as_mut(), &mut sink, &config, |r| printer.round(r))
        .context("migration failed; the source is running and the destination keeps nothing")?;
    let report = done.report.clone();
    let source = if args.leave_running {
        done.resume_source().context("resuming the source")?;
        "resumed"
    } else {
        done.stop_source().context("stopping the source")?;
        "stopped"
    };
    printer.summary(&report, json!({ "tracker": kind, "source": source }));
    Ok(())
}
