//! `pagestream serve-lazy --listen ADDR --images-dir DIR`: the source side of a lazy restore over
//! QUIC. It serves the lazy pages of DIR (its `PE_LAZY` entries; data from DIR and its parents) to
//! `pagestream lazy-pages --from` on the destination: faulted runs at once on the urgent stream,
//! everything else pushed in the background, sessions resumable after a broken link. With
//! `--criu-page-server` the data comes from `criu dump --lazy-pages` (its lazy page server, by
//! PS_IOV_GET) instead of DIR, whose pagemaps still say which pages are lazy; when the restore is
//! complete it sends CRIU the CLOSE that ends that dump.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use pagestream_engine::lazy::{PageSource, WorkingSet};
use pagestream_transport::criu_ps::lazy_client::CriuLazySource;
use pagestream_transport::criu_ps::HeaderLayout;
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
    /// Fetch the pages from `criu dump --lazy-pages --address A --port P` at A:P (the dump's
    /// directory is DIR).
    #[arg(long, value_name = "HOST:PORT")]
    pub criu_page_server: Option<SocketAddr>,
    /// Push the runs of this working set first (written by `lazy-pages --record-working-set`
    /// during an earlier restore of the same program).
    #[arg(long, value_name = "FILE")]
    pub working_set: Option<PathBuf>,
    /// With --criu-page-server: CRIU's header size, 24 (CRIU <= 4.1.1) or 32 (CRIU >= 4.2).
    #[arg(long, default_value = "24", requires = "criu_page_server")]
    pub criu_header: u8,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Serves lazy restores until `--sessions` completed.
pub fn run(args: &ServeLazyArgs) -> Result<()> {
    let data: Option<Box<dyn PageSource + Send>> = match args.criu_page_server {
        Some(addr) => {
            let layout = match args.criu_header {
                24 => HeaderLayout::Legacy24,
                32 => HeaderLayout::Wide32,
                n => bail!("--criu-header {n}: expected 24 or 32"),
            };
            Some(Box::new(CriuLazySource::connect(addr, layout, pagestream_engine::page_size())?))
        }
        None => None,
    };
    let mut server = LazyServer::bind_source(
        args.listen,
        &args.tls.security()?,
        &args.images_dir,
        data,
        !args.no_lz4,
        !args.no_push,
    )
    .with_context(|| format!("serving {} on {}", args.images_dir.display(), args.listen))?;
    if let Some(path) = &args.working_set {
        let ws = WorkingSet::read(path, pagestream_engine::page_size()).map_err(|e| anyhow!("working set: {e}"))?;
        server.push_first(&ws);
        eprintln!("pagestream serve-lazy: pushing the {} runs of {} first", ws.runs.len(), path.display());
    }
    eprintln!(
        "pagestream serve-lazy: serving {} lazy pages of {} on {}",
        server.lazy_pages(),
        args.images_dir.display(),
        server.local_addr()
    );
    server
        .serve(args.sessions, |r| {
            println!(
                "session {} complete: {} pages fetched on faults, {} pushed ({} of them first, from the working set), \
                 {} connection(s)",
                r.session, r.fetched_pages, r.pushed_pages, r.working_set_pages, r.connections
            );
        })
        .context("serving lazy restores")?;
    Ok(())
}
