//! `pagestream image example`: writes a small two-round pre-dump chain of a synthetic process, the
//! way a migration lands on the destination, then shows and verifies it.
//!
//! Round 1 holds every non-zero page (anonymous pages marked `PE_LAZY | PE_PRESENT`, as CRIU
//! marks lazy-eligible memory); round 2 holds only the pages dirtied since, with `PE_PARENT` holes
//! for the rest, and a region left lazy for post-copy.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use pagestream_engine::criu::{ImageDirWriter, PageFlags, PagemapId};
use pagestream_engine::page::is_zero;
use pagestream_engine::{page_size, PageRun};

/// The synthetic task's virtual pid (the root task of a dump in its own pid namespace).
const VPID: u64 = 1;
/// Heap and stack of the synthetic task, in pages.
const HEAP: (u64, u64) = (0x5555_5555_0000, 96);
const STACK: (u64, u64) = (0x7ffd_0000_0000, 8);

/// Deterministic page content: text-like for most pages, zero for every fifth (elided).
fn content(vaddr: u64, round: u8, ps: u64) -> Vec<u8> {
    let n = vaddr / ps;
    if n % 5 == 0 {
        return vec![0; ps as usize];
    }
    let line = format!("page {n:#x} round {round}: the quick brown fox jumps over the lazy dog\n");
    line.bytes().cycle().take(ps as usize).collect()
}

/// What a round stores for one page.
#[derive(Clone, Copy, PartialEq)]
enum Class {
    Zero,
    Present(PageFlags),
    Hole(PageFlags),
}

fn write_round(dir: &Path, round: u8, dirty: impl Fn(u64) -> bool, lazy_tail: u64) -> Result<()> {
    let ps = page_size();
    let mut w = ImageDirWriter::create(dir, ps, 1)?;
    if round > 1 {
        w.set_parent(Path::new(&format!("../{}", round - 1)))?;
    }
    let pm = w.open_pagemap(PagemapId::Task(VPID))?;
    for (start, nr) in [HEAP, STACK] {
        let is_heap = start == HEAP.0;
        let class = |i: u64| {
            if is_zero(&content(start + i * ps, round, ps)) {
                Class::Zero // zero pages are not data: restore maps them fresh
            } else if is_heap && i >= nr - lazy_tail {
                Class::Hole(PageFlags::LAZY)
            } else if round == 1 || dirty(i) {
                Class::Present(if is_heap { PageFlags::LAZY } else { PageFlags::default() })
            } else {
                Class::Hole(PageFlags::PARENT)
            }
        };
        // One entry per run of neighbouring pages of the same class.
        let mut i = 0;
        while i < nr {
            let c = class(i);
            let mut j = i + 1;
            while j < nr && class(j) == c {
                j += 1;
            }
            let run = PageRun::new(start + i * ps, j - i);
            match c {
                Class::Zero => {}
                Class::Hole(flags) => pm.push_hole(run, flags)?,
                Class::Present(extra) => {
                    let data: Vec<u8> = (i..j).flat_map(|k| content(start + k * ps, round, ps)).collect();
                    pm.push_present(run.vaddr, &data, extra)?;
                }
            }
            i = j;
        }
    }
    w.commit()?;
    Ok(())
}

/// Writes `dir/1` and `dir/2`, then shows `dir/2` and verifies the chain.
pub fn run(dir: &Path) -> Result<()> {
    if dir.exists() {
        bail!("{} already exists; give a new directory", dir.display());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_round(&dir.join("1"), 1, |_| true, 0)?;
    write_round(&dir.join("2"), 2, |i| i % 7 == 3, 16)?;
    let top = dir.join("2");
    crate::image_show::run(&top, false)?;
    crate::image_verify::run(&top, Some(dir))
}
