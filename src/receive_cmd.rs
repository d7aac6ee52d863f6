//! `pagestream receive`: the destination. Accepts one migration over QUIC and, when the sender
//! commits, writes it as a CRIU image directory atomically; a failed or aborted migration leaves
//! no directory and exits non-zero.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use pagestream_transport::quic::{Receiver, ReceiverConfig, ReceiverEvent};
use serde_json::json;

use crate::tls_args::TlsArgs;

/// Receives one migration into `images_dir`; `snapshots`: see [`ReceiverConfig::snapshots`].
pub fn run(listen: SocketAddr, images_dir: &Path, tls: &TlsArgs, as_json: bool, snapshots: bool) -> Result<()> {
    let mut cfg = ReceiverConfig::new(tls.security()?);
    cfg.snapshots = snapshots;
    let receiver = Receiver::bind_with(listen, cfg).with_context(|| format!("listening on {listen}"))?;
    if !as_json {
        eprintln!("pagestream: receiving on {} into {}", receiver.local_addr(), images_dir.display());
    }
    let report = receiver
        .serve_one(images_dir, |ev| {
            let mut out = std::io::stdout().lock();
            let _ = match (&ev, as_json) {
                (ReceiverEvent::Connected { peer }, false) => writeln!(out, "sender {peer} connected"),
                (ReceiverEvent::RoundDone { round, data_pages, zero_pages, pages_held, wire_bytes }, false) => {
                    writeln!(
                        out,
                        "round {round}: {data_pages} data + {zero_pages} zero pages, {pages_held} held, {} on the wire",
                        crate::round_report::human_bytes(*wire_bytes)
                    )
                }
                (ReceiverEvent::Committed { dir, pages }, false) => {
                    writeln!(out, "committed {pages} pages to {}", dir.display())
                }
                (ReceiverEvent::RoundDone { round, data_pages, zero_pages, pages_held, wire_bytes }, true) => writeln!(
                    out,
                    "{}",
                    json!({ "round": round, "data_pages": data_pages, "zero_pages": zero_pages,
                            "pages_held": pages_held, "wire_bytes": wire_bytes })
                ),
                _ => Ok(()),
            };
        })
        .with_context(|| format!("migration into {} failed; nothing was written", images_dir.display()))?;
    if as_json {
        let line = json!({ "summary": true, "dir": report.dir, "rounds": report.rounds, "pages": report.pages,
                           "wire_bytes": report.wire_bytes, "peer": report.peer.to_string(),
                           "snapshots": report.snapshots, "commit_written_bytes": report.commit_written_bytes });
        println!("{line}");
    } else {
        println!(
            "{} background snapshot(s) during pre-copy; {} written at commit",
            report.snapshots,
            crate::round_report::human_bytes(report.commit_written_bytes)
        );
    }
    Ok(())
}
