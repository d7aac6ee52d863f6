//! `pagestream serve-lazy --listen ADDR --images-dir DIR`: the source side of a lazy restore over
//! QUIC. It serves the lazy pages of DIR (its `PE_LAZY` entries; data from DIR and its parents) to
//! `pagestream lazy-pages --from` on the destination: faulted runs at once on the urgent stream,
//! everything else pushed in the background, sessions resumable after a broken link.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use pagestream_transport::lazy::LazyServer;

use crate::tls_args::TlsArgs;

/// Options of `pagestream serve-lazy`.
#[derive(clap::Args, Debug)]
pub struct ServeLazyArgs {
    /// Address to listen on (UDP).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// The image directory whose lazy pages are served.
    #[arg(long, short = 'D', value_name = "DIR")]
    pub images_dir: PathBuf,
    /// Exit after this many restores completed (the daemon said every page is installed);
    /// default: serve forever.
    #[arg(long)]
    pub sessions: Option<u64>,
    /// Send page data uncompressed (all-zero runs are elided either way).
    #[arg(long)]
    pub no_lz4: bool,
    /// Serve faults only, no background push (a link too thin to share, or measuring faults).
    #[arg(long)]
    pub no_push: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Serves lazy restores until `--sessions` completed.
pub fn run(args: &ServeLazyArgs) -> Result<()> {
    let server =
        LazyServer::bind_with(args.listen, &args.tls.security()?, &args.images_dir, !args.no_lz4, !args.no_push)
            .with_context(|| format!("serving {} on {}", args.images_dir.display(), args.listen))?;
    eprintln!(
        "pagestream serve-lazy: serving {} lazy pages of {} on {}",
        server.lazy_pages(),
        args.images_dir.display(),
        server.local_addr()
    );
    server
        .serve(args.sessions, |r| {
            println!(
                "session {} complete: {} pages fetched on faults, {} pushed, {} connection(s)",
                r.session, r.fetched_pages, r.pushed_pages, r.connections
            );
        })
        .context("serving lazy restores")?;
    Ok(())
}
