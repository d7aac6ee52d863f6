//! `pagestream receive --criu-sessions`: the destination of `pagestream page-server --to`. It
//! serves relayed CRIU page-server sessions (QUIC, ALPN `pagestream-criu/1`) one after another and
//! stores them exactly as the local page server does: session k in `DIR/k`, `parent -> ../k-1`,
//! `DIR/last` moved on each commit. Native migrations (`pagestream send`) are not accepted on
//! this listener; run a plain `pagestream receive` for those.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use pagestream_engine::criu::session_dirs::SessionDirs;
use pagestream_transport::relay::{DestinationReport, RelayReceiver};

use crate::tls_args::TlsArgs;

/// The options `pagestream receive` takes for CRIU page-server sessions.
#[derive(clap::Args, Debug, Clone)]
pub struct CriuSessionsArgs {
    /// Serve CRIU page-server sessions relayed by `pagestream page-server --to` (many, one after
    /// another) into DIR/1, DIR/2, ... and DIR/last, instead of one native migration.
    #[arg(long)]
    pub criu_sessions: bool,
    /// With --criu-sessions: exit after this many sessions (committed or failed); default: forever.
    #[arg(long, requires = "criu_sessions")]
    pub sessions: Option<u32>,
}

/// Serves relayed sessions into `images_dir` until `--sessions` is reached (exit 1 if one failed).
pub fn run(listen: SocketAddr, images_dir: &Path, tls: &TlsArgs, args: &CriuSessionsArgs) -> Result<()> {
    let dirs = SessionDirs::open(images_dir, pagestream_engine::page_size())?;
    let receiver = RelayReceiver::bind(listen, &tls.security()?).with_context(|| format!("listening on {listen}"))?;
    eprintln!(
        "pagestream: receiving CRIU page-server sessions on {} into {} (next session {})",
        receiver.local_addr(),
        dirs.root().display(),
        dirs.next_number()?
    );
    let totals = receiver.serve(&dirs, args.sessions.map(u64::from), |r| print_report(r, &dirs))?;
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

fn print_report(report: &DestinationReport, dirs: &SessionDirs) {
    let number = report.number.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    let secs = report.elapsed.as_secs_f64();
    match &report.result {
        Ok(s) => {
            let st = &s.stats;
            let whole = match &s.files {
                Some(f) => format!(
                    "; a complete dump with {} image files ({:.1} KiB), marked {}",
                    f.files,
                    f.bytes as f64 / 1024.0,
                    pagestream_engine::criu::commit_marker::MARKER_NAME
                ),
                None => String::new(),
            };
            println!(
                "session {number} committed from {}: {} ({} pagemaps, {} pages of data, {} pages in parent, {} lazy \
                 without data; has_parent answered yes {} / no {}; {:.1} MiB on the wire{whole}) in {secs:.2} s",
                report.peer,
                s.committed.path.display(),
                st.pagemaps,
                st.present_pages,
                st.parent_pages,
                st.lazy_pages,
                st.has_parent_true,
                st.has_parent_false,
                s.wire_bytes as f64 / f64::from(1 << 20),
            );
        }
        Err(e) => eprintln!(
            "pagestream receive: session {number} from {} FAILED after {secs:.2} s: {e}; nothing of it was \
             committed ({}/last unchanged)",
            report.peer,
            dirs.root().display()
        ),
    }
}
