//! `pagestream demo`: the whole job on loopback. Starts the test workload, a receiver and a
//! sender with a fresh development CA (mutual TLS), migrates the live workload with pre-copy,
//! checks that the image directory equals the workload's memory at the freeze point byte for
//! byte, and prints the rounds and totals.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use pagestream::workload_client::{workload_next_to_me, Workload};
use pagestream_engine::precopy::migrate;
use pagestream_engine::precopy::verify::verify_image;
use pagestream_engine::process::{FreezeMethod, Target};
use pagestream_transport::quic::{make_dev_certs, QuicSink, Receiver, ReceiverConfig, Security, SenderConfig};
use serde_json::json;

use crate::progress_sink::ProgressSink;
use crate::round_report::RoundPrinter;
use crate::send_cmd::PreCopyArgs;

/// Everything `pagestream demo` takes.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Working set of the demo workload (suffixes K, M, G).
    #[arg(long, default_value = "256M", value_parser = pagestream::parse_size)]
    pub size: u64,
    /// Pages the workload dirties per second while it is being migrated.
    #[arg(long, default_value_t = 20000)]
    pub rate: u64,
    /// Keep the received image directory here (must not exist); default: a temporary one.
    #[arg(long)]
    pub images_dir: Option<PathBuf>,
    /// Have the receiver write one flat image directory at commit instead of a pre-dump chain
    /// of background snapshots (to compare downtimes).
    #[arg(long)]
    pub flat_image: bool,
    #[command(flatten)]
    pub precopy: PreCopyArgs,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("pagestream-demo-").tempdir().context("creating a scratch directory")?;
    let images = match &args.images_dir {
        Some(d) if d.symlink_metadata().is_ok() => bail!("{} exists already; give a new directory", d.display()),
        Some(d) => d.clone(),
        None => tmp.path().join("images"),
    };
    let certs = make_dev_certs(&tmp.path().join("certs"), &[])?;
    let mut cfg = ReceiverConfig::new(Security::MutualTls(certs.server_tls()));
    cfg.snapshots = !args.flat_image;
    let receiver = Receiver::bind_with(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)?;
    let addr = receiver.local_addr();
    let recv_images = images.clone();
    let receiving = std::thread::spawn(move || receiver.serve_one(&recv_images, |_| {}));

    let size = args.size.to_string();
    let rate = args.rate.to_string();
    let exe = workload_next_to_me()?;
    let w =
        Workload::spawn_program(&exe, &["--size", &size, "--rate", &rate, "--pattern", "hot", "--report-ms", "1000"])?;
    let json = args.precopy.json;
    if !json {
        println!(
            "demo: workload pid {} with {} dirtying {} pages/s; receiver on {addr} (mutual TLS, fresh dev CA)",
            w.pid,
            crate::round_report::human_bytes(w.pages * w.page_size),
            args.rate
        );
    }
    let target = Target::open(w.pid)?;
    let kind = args.precopy.tracker();
    let mut tracker = kind.open(Target::open(w.pid)?)?;
    let mut cfg = SenderConfig::new(Security::MutualTls(certs.client_tls()));
    cfg.compression = args.precopy.compression();
    let sink = QuicSink::connect(addr, cfg, pagestream_engine::page_size())?;
    let mut sink = ProgressSink::new(sink, !json && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let mut printer = RoundPrinter::new(json);
    let done =
        migrate(&target, tracker.as_mut(), &mut sink, &args.precopy.config(FreezeMethod::Signal), |r| printer.round(r))
            .context("migration failed")?;
    // Byte-for-byte check while the source is still frozen at the point the copy was taken.
    let verify = verify_image(&target, &images).context("verifying the image against the frozen workload")?;
    let report = done.report.clone();
    done.stop_source().context("stopping the source")?;
    let session = receiving.join().map_err(|_| anyhow!("the receiver thread panicked"))??;
    let kept = args.images_dir.as_ref().map(|d| d.display().to_string());
    printer.summary(
        &report,
        json!({ "tracker": kind, "verified": verify.is_equal(), "pages_compared": verify.pages,
                "receiver_pages": session.pages, "images_dir": kept, "receiver_snapshots": session.snapshots,
                "commit_written_bytes": session.commit_written_bytes }),
    );
    if !verify.is_equal() {
        bail!("the image differs from the workload's memory: {verify:?}");
    }
    Ok(())
}
