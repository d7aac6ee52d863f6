//! `pagestream lazy-pages -D DIR [-W WORKDIR] [--from HOST:PORT]`: a drop-in for `criu
//! lazy-pages -D DIR [--page-server --address --port]` serving the lazy pages from the local image
//! directory, or with `--from` from `pagestream serve-lazy` on the source host over QUIC (urgent
//! fault stream, background push, reconnection within `--resume-timeout`). It listens on `WORKDIR/lazy-pages.socket`, takes
//! each task's userfaultfd from `criu restore --lazy-pages` (or the test restorer), serves faults
//! and pushes every remaining lazy page after the restore's finish marker, then prints the totals
//! (faults, fault service latency, pages faulted vs pushed, time to full residency).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use pagestream_engine::criu::ImageDir;
use pagestream_engine::lazy::source::lazy_ranges_of;
use pagestream_engine::lazy::{self, HandoffListener, ImageSource, LazySummary, PageSource};
use pagestream_engine::page_size;
use pagestream_transport::lazy::{RemoteConfig, RemotePageSource};

use crate::tls_args::TlsArgs;

/// Options of `pagestream lazy-pages`.
#[derive(clap::Args, Debug)]
pub struct LazyPagesArgs {
    /// The image directory (its `pagemap-<pid>.img` say which pages are lazy; `pages-*.img` and
    /// parent images hold their data).
    #[arg(short = 'D', long, value_name = "DIR")]
    pub images_dir: PathBuf,
    /// Where `lazy-pages.socket` is created (must be the restore's work dir) [default: DIR].
    #[arg(short = 'W', long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Fetch the pages from `pagestream serve-lazy` at HOST:PORT (QUIC) instead of from DIR;
    /// DIR's pagemaps still say which pages are lazy.
    #[arg(long, value_name = "HOST:PORT")]
    pub from: Option<String>,
    /// With --from: the name the source's certificate must carry (default: HOST of --from).
    #[arg(long, requires = "from")]
    pub tls_server_name: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// With --from: how long faults wait for a lost source to come back before the restore fails.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS", requires = "from")]
    pub resume_timeout: f64,
    /// With --from: the most push data in flight (K, M suffixes). A fault's answer queues
    /// behind it; the push's throughput is bounded by it over the round trip time. Raise it
    /// for long fat links.
    #[arg(long, default_value = "1M", value_name = "SIZE", requires = "from", value_parser = pagestream::parse_size)]
    pub push_window: u64,
    /// With --from: how long a fault just ahead of the push waits for it before fetching.
    #[arg(long, default_value_t = 2.0, value_name = "MS", requires = "from")]
    pub push_wait_ms: f64,
    /// With --from: the most pushed bytes held before they are installed (K, M, G suffixes);
    /// when full, the push waits.
    #[arg(long, default_value = "64M", value_name = "SIZE", requires = "from", value_parser = pagestream::parse_size)]
    pub push_cache: u64,
    /// Write the runs the restored processes faulted on, in order, to FILE (for `serve-lazy
    /// --working-set` to push first next time).
    #[arg(long, value_name = "FILE")]
    pub record_working_set: Option<PathBuf>,
    /// Print the totals as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Serves one lazy restore from the local images or, with `--from`, from a remote source.
pub fn run(args: &LazyPagesArgs) -> Result<()> {
    let ps = page_size();
    let mut remote = None;
    let mut local = None;
    let source: &mut dyn PageSource = match &args.from {
        Some(from) => {
            let (addr, host) = crate::send_cmd::resolve(from)?;
            let mut cfg = RemoteConfig::new(args.tls.security()?, args.tls_server_name.clone().unwrap_or(host));
            cfg.resume_timeout = Duration::try_from_secs_f64(args.resume_timeout)
                .map_err(|_| anyhow!("--resume-timeout {} is not a duration", args.resume_timeout))?;
            cfg.push_window = u32::try_from(args.push_window)
                .map_err(|_| anyhow!("--push-window {} is over 4 GiB", args.push_window))?;
            cfg.push_wait = Duration::try_from_secs_f64(args.push_wait_ms / 1000.0)
                .map_err(|_| anyhow!("--push-wait-ms {} is not a duration", args.push_wait_ms))?;
            cfg.cache_bytes = usize::try_from(args.push_cache)
                .map_err(|_| anyhow!("--push-cache {} does not fit in memory", args.push_cache))?;
            let source = RemotePageSource::connect(addr, cfg, ps).with_context(|| format!("connecting to {addr}"))?;
            eprintln!("pagestream lazy-pages: session {} with the source at {addr}", source.session());
            remote.insert(source)
        }
        None => local.insert(
            ImageSource::open(&args.images_dir, None, ps)
                .with_context(|| format!("opening the images in {}", args.images_dir.display()))?,
        ),
    };
    let work_dir = args.work_dir.clone().unwrap_or_else(|| args.images_dir.clone());
    let listener = HandoffListener::bind(&work_dir).context("creating the lazy-pages socket")?;
    eprintln!("pagestream lazy-pages: listening on {}", listener.path().display());
    // Which pages are lazy: the newest directory's pagemaps (read separately from the source,
    // which the daemon borrows mutably).
    let plan = ImageDir::open(&args.images_dir, ps)
        .with_context(|| format!("reading the pagemaps in {}", args.images_dir.display()))?;
    let mut ranges_of = |pid: i32| lazy_ranges_of(&plan, pid);
    let stats = lazy::serve(&listener, source, &mut ranges_of).context("lazy restore failed")?;
    let s = stats.summary();
    let remote = remote.map(RemotePageSource::finish);
    if let Some(path) = &args.record_working_set {
        stats.working_set.write(path).with_context(|| format!("writing the working set to {}", path.display()))?;
        eprintln!(
            "pagestream lazy-pages: working set of {} runs written to {}",
            stats.working_set.runs.len(),
            path.display()
        );
    }
    if args.json {
        let mut v = serde_json::to_value(&s)?;
        if let (Some(r), Some(o)) = (&remote, v.as_object_mut()) {
            o.insert("remote".into(), serde_json::to_value(r)?);
        }
        println!("{v}");
    } else {
        print_text(&s);
        if let Some(r) = &remote {
            println!(
                "from the source: {} fetches ({} pages), {} pages pushed ({} installed from the push, {} dropped), \
                 {} reconnects, longest outage {} ms",
                r.fetches,
                r.fetched_pages,
                r.pushed_pages_received,
                r.pushed_pages_used,
                r.pushed_pages_dropped,
                r.reconnects,
                r.longest_outage_ms
            );
        }
    }
    Ok(())
}

fn print_text(s: &LazySummary) {
    println!(
        "lazy restore complete: {} task(s), {} zombie(s), {} fork(s); {} lazy pages: {} faulted, {} pushed, {} already present, {} dropped ({} zero)",
        s.tasks,
        s.zombies,
        s.forks,
        s.lazy_pages,
        s.pages_faulted,
        s.pages_pushed,
        s.pages_already_present,
        s.pages_dropped,
        s.pages_zero
    );
    println!(
        "faults: {} ({} on holes, {} already resolved); service latency p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        s.faults,
        s.zero_faults,
        s.faults_already_resolved,
        s.fault_latency_p50_us,
        s.fault_latency_p99_us,
        s.fault_latency_max_us
    );
    if let Some(ms) = s.time_to_full_residency_ms {
        println!("full residency {ms:.1} ms after the restore finished");
    }
}
