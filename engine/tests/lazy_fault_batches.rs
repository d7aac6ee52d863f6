//! The fault handler's batches against a real userfaultfd on this process's own memory (the
//! faults are handed to the handler as events, so no thread has to block): a fault installs its
//! page and the lazy pages after it, or, for a process walking memory downwards, the pages
//! before it; the source is asked for exactly those runs and the memory holds their data.

use std::os::fd::AsFd;
use std::time::Instant;

use pagestream_engine::criu::PagemapId;
use pagestream_engine::lazy::handler::{Buffers, FAULT_BATCH_PAGES};
use pagestream_engine::lazy::{LazyRanges, LazyStats, PageSource, SourceError, TaskUffd};
use pagestream_engine::sys::aligned::AlignedBuf;
use pagestream_engine::sys::uffd_fill::{LazyUffd, UffdEvent};
use pagestream_engine::sys::uffd_missing::{open_for_lazy_restore, register_missing};
use pagestream_engine::{page_size, PageRun};

/// Pages whose bytes all equal the low byte of their page number; records what it was asked.
struct Recording {
    ps: u64,
    asked: Vec<PageRun>,
}

impl PageSource for Recording {
    fn page_size(&self) -> u64 {
        self.ps
    }

    fn read_run(&mut self, _id: PagemapId, run: PageRun, out: &mut [u8], zero: &mut [bool]) -> Result<(), SourceError> {
        self.asked.push(run);
        for (i, page) in out.chunks_exact_mut(self.ps as usize).enumerate() {
            page.fill((run.vaddr / self.ps + i as u64) as u8);
        }
        zero.fill(false);
        Ok(())
    }
}

#[test]
fn batches_follow_the_direction_of_the_walk() {
    let ps = page_size();
    let pages = 256u64;
    let mem = AlignedBuf::new((pages * ps) as usize).expect("mmap");
    let base = mem.as_ptr() as u64;
    let (fd, _) = match open_for_lazy_restore(0) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("SKIPPED: no userfaultfd here: {e}");
            return;
        }
    };
    register_missing(fd.as_fd(), base, pages * ps).expect("UFFDIO_REGISTER");
    let mut lazy = LazyRanges::new(ps);
    // Dump-time addresses start at page 0: the source's page numbers are offsets in `mem`.
    lazy.insert(base, base + pages * ps, 0);
    let mut task = TaskUffd::new(1, PagemapId::Task(1), LazyUffd::from_fd(fd).expect("uffd"), lazy);
    let mut source = Recording { ps, asked: Vec::new() };
    let mut bufs = Buffers::new(FAULT_BATCH_PAGES, ps);
    let mut stats = LazyStats::new();
    let mut fault = |task: &mut TaskUffd, source: &mut Recording, page: u64| {
        let ev = UffdEvent::Pagefault { addr: base + page * ps + 5, write: false };
        task.handle_events(vec![ev], source, &mut bufs, &mut stats, Instant::now()).expect("fault");
    };
    let b = FAULT_BATCH_PAGES;
    // Upwards: the faulting page and the ones after it.
    fault(&mut task, &mut source, 10);
    fault(&mut task, &mut source, 10 + b);
    // Downwards: a fault just below the previous batch takes the pages below it, and the
    // next one just below that batch again (not a single page).
    fault(&mut task, &mut source, 200);
    fault(&mut task, &mut source, 199);
    fault(&mut task, &mut source, 199 - b);
    let runs: Vec<(u64, u64)> = source.asked.iter().map(|r| (r.vaddr / ps, r.nr_pages)).collect();
    assert_eq!(runs, vec![(10, b), (10 + b, b), (200, b), (200 - b, b), (200 - 2 * b, b)]);
    let installed = [(10, 2 * b), (200 - 2 * b, 3 * b)];
    for (first, n) in installed {
        for p in first..first + n {
            let page = &mem.as_slice()[(p * ps) as usize..((p + 1) * ps) as usize];
            assert!(page.iter().all(|&x| x == p as u8), "page {p} does not hold its data");
        }
    }
    assert_eq!(task.lazy.len_pages(), pages - 5 * b);
}
