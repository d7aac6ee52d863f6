//! `pagestream lazy-pages -D DIR [-W WORKDIR]`: a drop-in for `criu lazy-pages -D DIR` serving
//! the lazy pages from the local image directory. It listens on `WORKDIR/lazy-pages.socket`, takes
//! each task's userfaultfd from `criu restore --lazy-pages` (or the test restorer), serves faults
//! and pushes every remaining lazy page after the restore's finish marker, then prints the totals
//! (faults, fault service latency, pages faulted vs pushed, time to full residency).

use std::path::PathBuf;

use anyhow::{Context, Result};
use pagestream_engine::criu::ImageDir;
use pagestream_engine::lazy::source::lazy_ranges_of;
use pagestream_engine::lazy::{self, HandoffListener, ImageSource, LazySummary};
use pagestream_engine::page_size;

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
    /// Print the totals as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Serves one lazy restore from the local images.
pub fn run(args: &LazyPagesArgs) -> Result<()> {
    let ps = page_size();
    let mut source = ImageSource::open(&args.images_dir, None, ps)
        .with_context(|| format!("opening the images in {}", args.images_dir.display()))?;
    let work_dir = args.work_dir.clone().unwrap_or_else(|| args.images_dir.clone());
    let listener = HandoffListener::bind(&work_dir).context("creating the lazy-pages socket")?;
    eprintln!("pagestream lazy-pages: listening on {}", listener.path().display());
    // Which pages are lazy: the newest directory's pagemaps (read separately from the source,
    // which the daemon borrows mutably).
    let plan = ImageDir::open(&args.images_dir, ps)
        .with_context(|| format!("reading the pagemaps in {}", args.images_dir.display()))?;
    let mut ranges_of = |pid: i32| Ok(lazy_ranges_of(&plan, pid));
    let stats = lazy::serve(&listener, &mut source, &mut ranges_of).context("lazy restore failed")?;
    let s = stats.summary();
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print_text(&s);
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
