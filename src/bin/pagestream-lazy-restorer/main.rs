//! `pagestream-lazy-restorer`: a test stand-in for `criu restore --lazy-pages`.
//!
//! It maps the regions of an image directory's lazy entries at their addresses (entries less
//! than 16 pages apart share a region; the gaps are holes that must read as zero), registers them
//! with a userfaultfd in MISSING mode (with the non-cooperative event features CRIU requests,
//! masked by the kernel's), hands the descriptor over `WORKDIR/lazy-pages.socket` exactly as
//! CRIU's restore does, closes its own copy, then reads every page with `--threads` threads
//! faulting concurrently and compares it with what the images hold. A first pass over a quarter of
//! the pages, backwards, runs before the finish marker (so faults are served before the background push
//! starts), the rest after it. Prints one JSON line; exit 1 on any mismatch.

mod sys;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use pagestream_engine::criu::{ImageChain, PageLookup, PagemapId};
use pagestream_engine::lazy::HandoffClient;
use pagestream_engine::page_size;
use pagestream_engine::sys::uffd_missing::{open_for_lazy_restore, register_missing, CRIU_LAZY_FEATURES};

/// Entries closer than this many pages share a region.
const REGION_GAP_PAGES: u64 = 16;

#[derive(Parser)]
struct Args {
    /// The image directory.
    #[arg(short = 'D', long)]
    images_dir: PathBuf,
    /// Where the daemon's `lazy-pages.socket` is [default: the image directory].
    #[arg(short = 'W', long)]
    work_dir: Option<PathBuf>,
    /// Threads reading (and faulting) concurrently.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also announce a zombie with this pid.
    #[arg(long)]
    zombie: Option<i32>,
    /// Hang up after handing the task over, without the finish marker (a failing restore).
    #[arg(long)]
    hang_up_before_finish: bool,
    /// Before reading, cause REMOVE (madvise), UNMAP (munmap), REMAP (mremap) and FORK events
    /// in the largest region (which needs at least 512 pages); a forked child checks 16 pages.
    #[arg(long)]
    exercise_events: bool,
    /// After the early pass, print "paused" on stderr and wait this long before going on (so a
    /// test can cut the daemon's link while faults are still to come).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

/// What a page must hold.
#[derive(Clone, Copy)]
enum Expect {
    /// The images' page at this (dump-time) address.
    From(u64),
    /// Zeros (the page was discarded with MADV_DONTNEED).
    Zero,
}

struct Region {
    start: u64,
    end: u64,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagestream-lazy-restorer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let ps = page_size();
    let chain = ImageChain::open(&args.images_dir, None, ps).context("opening the images")?;
    let dir = chain.levels().first().context("no image directory")?;
    let pm = dir.pagemaps().find(|p| matches!(p.id, PagemapId::Task(_))).context("no task pagemap in the images")?;
    let PagemapId::Task(pid) = pm.id else { bail!("not a task pagemap") };
    let pid = i32::try_from(pid).context("pid out of range")?;
    let mut regions: Vec<Region> = Vec::new();
    for e in pm.pagemap.entries.iter().filter(|e| e.flags.is_lazy()) {
        let end = e.vaddr + e.nr_pages * ps;
        match regions.last_mut() {
            Some(r) if e.vaddr - r.end < REGION_GAP_PAGES * ps => r.end = end,
            _ => regions.push(Region { start: e.vaddr, end }),
        }
    }
    if regions.is_empty() {
        bail!("no lazy entries in {}", args.images_dir.display());
    }

    let (uffd, features) = open_for_lazy_restore(CRIU_LAZY_FEATURES).context("userfaultfd")?;
    for r in &regions {
        sys::map_fixed_noreplace(r.start, r.end - r.start)
            .with_context(|| format!("mapping {:#x}-{:#x}", r.start, r.end))?;
        register_missing(uffd.as_fd(), r.start, r.end - r.start)
            .with_context(|| format!("registering {:#x}-{:#x}", r.start, r.end))?;
    }
    let work = args.work_dir.clone().unwrap_or_else(|| args.images_dir.clone());
    let client = HandoffClient::connect(&work)?;
    client.send_task(pid, uffd.as_fd()).context("handing the userfaultfd over")?;
    drop(uffd); // the daemon holds it now; closing ours lets its close detach us at the end
    if let Some(z) = args.zombie {
        client.send_zombie(z).context("announcing the zombie")?;
    }
    if args.hang_up_before_finish {
        drop(client);
        println!("{{\"hung_up\":true}}");
        return Ok(());
    }

    let mut pages: Vec<(u64, Expect)> =
        regions.iter().flat_map(|r| (r.start..r.end).step_by(ps as usize)).map(|a| (a, Expect::From(a))).collect();
    let mut child_ok = None;
    if args.exercise_events {
        let (list, ok) = exercise_events(&chain, pm.id, &regions, pages, ps)?;
        pages = list;
        child_ok = Some(ok);
    }
    // The early pass goes backwards, so its faults land in the middle of lazy runs.
    let early: Vec<(u64, Expect)> = pages[..pages.len() / 4].iter().rev().copied().collect();
    let mut bad = verify(&chain, pm.id, &early, args.threads, ps)?;
    if args.pause_ms > 0 {
        eprintln!("paused");
        std::thread::sleep(std::time::Duration::from_millis(args.pause_ms));
    }
    client.finish().context("sending the finish marker")?;
    bad.extend(verify(&chain, pm.id, &pages[early.len()..], args.threads, ps)?);
    println!(
        "{{\"pages_verified\":{},\"mismatches\":{},\"threads\":{},\"regions\":{},\"uffd_features\":{features},\"child_ok\":{}}}",
        pages.len(),
        bad.len(),
        args.threads,
        regions.len(),
        child_ok.map_or("null".to_string(), |b| b.to_string())
    );
    if child_ok == Some(false) {
        bail!("the forked child saw wrong memory");
    }
    if let Some(first) = bad.first() {
        bail!("{} page(s) differ from the images, first at {first:#x}", bad.len());
    }
    Ok(())
}

/// In the largest region: discards pages 100..104 (they must read as zero), unmaps 200..208,
/// moves 300..316 to 256 MiB past the region's end (they must hold the data of their old
/// addresses) and forks a child that checks pages 400..416. Returns the pages left to verify and
/// whether the child saw the right data.
fn exercise_events(
    chain: &ImageChain,
    id: PagemapId,
    regions: &[Region],
    pages: Vec<(u64, Expect)>,
    ps: u64,
) -> Result<(Vec<(u64, Expect)>, bool)> {
    let r = regions.iter().max_by_key(|r| r.end - r.start).context("no region")?;
    if r.end - r.start < 512 * ps {
        bail!("--exercise-events needs a region of at least 512 pages");
    }
    let at = |i: u64| r.start + i * ps;
    let (removed, unmapped, moved) = ((at(100), at(104)), (at(200), at(208)), (at(300), at(316)));
    let target = (r.end + (256 << 20)) & !(ps - 1);
    let child_pages: Vec<(u64, Vec<u8>)> =
        (400..416).map(|i| expected(chain, id, at(i), ps).map(|want| (at(i), want))).collect::<Result<_>>()?;
    sys::discard(removed.0, removed.1 - removed.0).context("madvise(MADV_DONTNEED)")?;
    sys::unmap(unmapped.0, unmapped.1 - unmapped.0).context("munmap")?;
    sys::move_to(moved.0, target, moved.1 - moved.0).context("mremap")?;
    let child_ok = sys::in_child(|| {
        let mut got = vec![0u8; ps as usize];
        child_pages.iter().all(|(addr, want)| {
            sys::read_restored(*addr, &mut got);
            got == *want
        })
    })
    .context("fork")?;
    let inside = |a: u64, (s, e): (u64, u64)| a >= s && a < e;
    let mut out: Vec<(u64, Expect)> = pages
        .into_iter()
        .filter(|(a, _)| !inside(*a, unmapped) && !inside(*a, moved))
        .map(|(a, e)| if inside(a, removed) { (a, Expect::Zero) } else { (a, e) })
        .collect();
    out.extend((moved.0..moved.1).step_by(ps as usize).map(|a| (target + (a - moved.0), Expect::From(a))));
    Ok((out, child_ok))
}

/// The bytes the images hold for the page at dump-time address `addr`.
fn expected(chain: &ImageChain, id: PagemapId, addr: u64, ps: u64) -> Result<Vec<u8>> {
    match chain.page_at(id, addr)? {
        PageLookup::Data(want) => Ok(want),
        PageLookup::Absent => Ok(vec![0; ps as usize]),
        PageLookup::Lazy => bail!("page {addr:#x} is lazy without data: nothing to compare"),
    }
}

/// Reads `pages` with `threads` threads (page i goes to thread (i / 4) % threads, so the threads
/// fault side by side) and returns the addresses of pages that differ from what they must hold.
fn verify(chain: &ImageChain, id: PagemapId, pages: &[(u64, Expect)], threads: usize, ps: u64) -> Result<Vec<u64>> {
    let threads = threads.max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Vec<u64>> {
                    let mut got = vec![0u8; ps as usize];
                    let mut bad = Vec::new();
                    for (i, &(addr, expect)) in pages.iter().enumerate() {
                        if (i / 4) % threads != t {
                            continue;
                        }
                        sys::read_restored(addr, &mut got);
                        let ok = match expect {
                            Expect::From(src) => expected(chain, id, src, ps)? == got,
                            Expect::Zero => got.iter().all(|b| *b == 0),
                        };
                        if !ok {
                            bad.push(addr);
                        }
                    }
                    Ok(bad)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            match h.join() {
                Ok(r) => all.extend(r?),
                Err(_) => bail!("a verifying thread panicked"),
            }
        }
        all.sort_unstable();
        Ok(all)
    })
}
