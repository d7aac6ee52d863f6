//! `pagestream page-server`: a drop-in target for `criu dump/pre-dump --page-server` that writes
//! each session (one per CRIU invocation) as a numbered image directory `DIR/k`, chained to
//! `DIR/k-1` with a `parent` link, and points `DIR/last` at the newest complete one.
//!
//! With `--to HOST:PORT` instead of `--images-dir`, each session is relayed over QUIC (mutual TLS,
//! LZ4, zero chunks elided) to a `pagestream receive --criu-sessions` on the destination, which
//! stores it the same way there; CLOSE is answered only once the destination committed it.
//!
//! The listening address defaults to loopback, `127.0.0.1:27027` (give CRIU the same `--address`
//! and `--port`): CRIU's protocol has neither authentication nor encryption here.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use pagestream_engine::criu::session_dirs::SessionDirs;
use pagestream_engine::page_size;
use pagestream_transport::criu_ps::tcp_server::{self, ServeTotals, ServerConfig, SessionReport};
use pagestream_transport::criu_ps::{HeaderLayout, LayoutChoice};
use pagestream_transport::relay::{RelayConfig, RelayReport, RelaySource};

use crate::tls_args::TlsArgs;

/// The default port (on 127.0.0.1).
pub const DEFAULT_PORT: u16 = 27027;

/// Options of `pagestream page-server`.
#[derive(clap::Args, Debug)]
pub struct PageServerArgs {
    /// Address to listen on for CRIU's connections [default: 127.0.0.1:27027]; port 0 picks a
    /// free port (printed on the "listening" line).
    #[arg(long, conflicts_with = "listen_fd")]
    pub listen: Option<SocketAddr>,
    /// Serve exactly one session on this inherited, already connected socket (what CRIU's
    /// `--ps-socket` gives a page server), instead of listening.
    #[arg(long, value_name = "FD")]
    pub listen_fd: Option<i32>,
    /// Root of the session directories: session k goes to DIR/k, DIR/last points to the newest.
    #[arg(long, value_name = "DIR", required_unless_present = "to", conflicts_with = "to")]
    pub images_dir: Option<PathBuf>,
    /// Relay each session over QUIC to `pagestream receive --criu-sessions` at HOST:PORT instead
    /// of storing it here (needs the TLS options or --insecure).
    #[arg(long, value_name = "HOST:PORT")]
    pub to: Option<String>,
    /// With --to: the name the destination's certificate must carry (default: HOST of --to).
    #[arg(long, requires = "to")]
    pub tls_server_name: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Page-server header layout: 24 (CRIU <= 4.1.1), 32 (CRIU >= 4.2) or auto (detected from
    /// each session's first command).
    #[arg(long, default_value = "auto", value_parser = parse_header_layout)]
    pub header_layout: LayoutChoice,
    /// Exit after this many sessions (committed or failed); default: serve forever.
    #[arg(long, conflicts_with = "listen_fd")]
    pub sessions: Option<u32>,
    /// Fail a session whose client sends nothing for this many seconds (0: never).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub idle_timeout: u64,
}

fn parse_header_layout(s: &str) -> Result<LayoutChoice, String> {
    match s {
        "auto" => Ok(LayoutChoice::Detect),
        "24" => Ok(LayoutChoice::Fixed(HeaderLayout::Legacy24)),
        "32" => Ok(LayoutChoice::Fixed(HeaderLayout::Wide32)),
        _ => Err(format!("{s:?} is not auto, 24 or 32")),
    }
}

/// Runs the page server. Fails if any session served failed (with `--sessions` or
/// `--listen-fd`; a server without a session limit only stops on an accept error).
pub fn run(args: &PageServerArgs) -> Result<()> {
    let cfg = ServerConfig {
        layout: args.header_layout,
        page_size: page_size(),
        sessions: args.sessions.map(u64::from),
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        ..ServerConfig::new(page_size())
    };
    let images_dir = match (&args.images_dir, &args.to) {
        (_, Some(to)) => return relay(args, to, &cfg),
        (Some(dir), None) => dir,
        (None, None) => bail!("--images-dir DIR or --to HOST:PORT is required"),
    };
    if let Some(fd) = args.listen_fd {
        let stream = inherited_socket(fd)?;
        let dirs = SessionDirs::open(images_dir, cfg.page_size)?;
        println!("serving the session on fd {fd}, images in {}", dirs.root().display());
        let report = tcp_server::serve_connection(stream, None, &dirs, &cfg);
        print_report(&report, dirs.root());
        return match report.result {
            Ok(_) => Ok(()),
            Err(_) => bail!("the session failed; nothing was committed"),
        };
    }
    let dirs = SessionDirs::open(images_dir, cfg.page_size)?;
    let (listener, local) = listen(args)?;
    println!("listening on {local}, images in {} (next session {})", dirs.root().display(), dirs.next_number()?);
    let totals = tcp_server::serve(&listener, images_dir, &cfg, |r| print_report(r, dirs.root()))?;
    finish(totals)
}

fn listen(args: &PageServerArgs) -> Result<(TcpListener, SocketAddr)> {
    let addr = args.listen.unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)));
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("listening address")?;
    Ok((listener, local))
}

fn finish(totals: ServeTotals) -> Result<()> {
    println!(
        "served {} sessions: {} committed, {} failed",
        totals.committed + totals.failed,
        totals.committed,
        totals.failed
    );
    if totals.failed > 0 {
        bail!("{} of {} sessions failed", totals.failed, totals.committed + totals.failed);
    }
    Ok(())
}

/// `--to`: relays every session to the destination over QUIC.
fn relay(args: &PageServerArgs, to: &str, cfg: &ServerConfig) -> Result<()> {
    let (dest, host) = crate::send_cmd::resolve(to)?;
    let mut rcfg = RelayConfig::new(args.tls.security()?, args.tls_server_name.clone().unwrap_or(host), cfg.page_size);
    rcfg.layout = cfg.layout;
    rcfg.sessions = cfg.sessions;
    rcfg.idle_timeout = cfg.idle_timeout;
    let source = RelaySource::new(dest, rcfg).context("starting the QUIC relay")?;
    if let Some(fd) = args.listen_fd {
        let stream = inherited_socket(fd)?;
        println!("relaying the session on fd {fd} to {dest}");
        let report = source.relay_connection(stream, None);
        print_relay_report(&report, dest);
        return report.result.map(|_| ()).map_err(|_| anyhow!("the session failed; nothing was committed"));
    }
    let (listener, local) = listen(args)?;
    println!("listening on {local}, relaying sessions to {dest}");
    let totals = source.serve(&listener, |r| print_relay_report(r, dest)).context("accepting CRIU's connections")?;
    finish(totals)
}

/// One line per relayed session on stdout (committed) or stderr (failed).
fn print_relay_report(report: &RelayReport, dest: SocketAddr) {
    let peer = report.peer.map(|p| format!(" from {p}")).unwrap_or_default();
    let secs = report.elapsed.as_secs_f64();
    match &report.result {
        Ok(s) => {
            println!(
                "session relayed{peer}: committed as session {} at {dest} ({} commands, {:.1} MiB of page data \
                 in {:.1} MiB on the wire; chunks: {} zero, {} lz4, {} raw; {}-byte headers) in {secs:.2} s",
                s.session,
                s.commands,
                s.data_bytes as f64 / f64::from(1 << 20),
                s.wire_bytes as f64 / f64::from(1 << 20),
                s.zero_chunks,
                s.lz4_chunks,
                s.raw_chunks,
                s.layout.map_or(0, HeaderLayout::len),
            );
            if let Some(w) = &s.warning {
                eprintln!("pagestream page-server: warning: session {}: {w}", s.session);
            }
        }
        Err(e) => eprintln!(
            "pagestream page-server: session{peer} FAILED after {secs:.2} s: {e}; nothing of it was committed at {dest}"
        ),
    }
}

/// One line per session on stdout (committed) or stderr (failed).
fn print_report(report: &SessionReport, root: &Path) {
    let peer = report.peer.map(|p| format!(" from {p}")).unwrap_or_default();
    let number = report.number.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    let secs = report.elapsed.as_secs_f64();
    match &report.result {
        Ok(s) if s.lazy.is_some() => {
            let l = s.lazy.unwrap_or_default();
            println!(
                "lazy-pages client{peer} served from {}: {} GETs, {} pages ({:.1} MiB) in {secs:.2} s; nothing written",
                s.committed.path.display(),
                l.gets,
                l.pages,
                (l.pages * pagestream_engine::page_size()) as f64 / f64::from(1 << 20)
            );
        }
        Ok(s) => {
            let st = &s.stats;
            println!(
                "session {number} committed{peer}: {} ({} pagemaps, {} pages of data = {:.1} MiB, {} pages in parent, \
                 {} lazy without data; has_parent answered yes {} / no {}; {}-byte headers) in {secs:.2} s",
                s.committed.path.display(),
                st.pagemaps,
                st.present_pages,
                st.data_bytes as f64 / f64::from(1 << 20),
                st.parent_pages,
                st.lazy_pages,
                st.has_parent_true,
                st.has_parent_false,
                s.layout.map_or(0, HeaderLayout::len),
            );
            if let Some(w) = &s.warning {
                eprintln!("pagestream page-server: warning: session {number}: {w}");
            }
        }
        Err(e) => eprintln!(
            "pagestream page-server: session {number}{peer} FAILED after {secs:.2} s: {e}; nothing of it was \
             committed ({}/last unchanged)",
            root.display()
        ),
    }
}

/// Takes ownership of the inherited socket `fd` given on the command line.
fn inherited_socket(fd: i32) -> Result<TcpStream> {
    use std::os::unix::fs::FileTypeExt;
    if fd < 0 || !Path::new("/proc/self/fd").join(fd.to_string()).exists() {
        bail!("--listen-fd {fd}: no such open file descriptor");
    }
    // SAFETY: `fd` is open (checked just above) and was handed to this process on the command
    // line for the page server alone; nothing else in the process uses or closes it, so the
    // OwnedFd is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(owned);
    let kind = file.metadata().with_context(|| format!("--listen-fd {fd}"))?.file_type();
    if !kind.is_socket() {
        bail!("--listen-fd {fd} is not a socket");
    }
    Ok(TcpStream::from(OwnedFd::from(file)))
}
