//! Criterion benchmarks of the format code: pagemap image encode/parse and run-set algebra.
//!
//! Run with `cargo bench --bench codecs`. Figures are relative: compare runs of the same machine.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pagestream_engine::criu::{PageFlags, Pagemap, PagemapEntry};
use pagestream_engine::{PageRun, PageRunSet};
use std::hint::black_box;
use std::path::Path;

const PS: u64 = 4096;

fn pagemap_of(n: u64) -> Pagemap {
    let entries = (0..n)
        .map(|i| PagemapEntry {
            vaddr: 0x7f00_0000_0000 + i * 3 * PS,
            nr_pages: 1 + i % 2,
            flags: PageFlags(4 | (i as u32 & 2)),
        })
        .collect();
    Pagemap { pages_id: 1, entries }
}

fn bench_pagemap(c: &mut Criterion) {
    let pm = pagemap_of(100_000);
    let bytes = pm.encode();
    let mut g = c.benchmark_group("pagemap");
    g.throughput(Throughput::Elements(pm.entries.len() as u64));
    g.bench_function("encode_100k_entries", |b| b.iter(|| black_box(pm.encode())));
    g.bench_function("parse_100k_entries", |b| {
        b.iter(|| Pagemap::parse(Path::new("bench.img"), black_box(&bytes), PS).map(|p| p.entries.len()))
    });
    g.finish();
}

fn bench_runset(c: &mut Criterion) {
    // A dirty set of 10% of 1 GiB in scattered runs, subtracted from the full range.
    let dirty: Vec<PageRun> = (0..26_214u64).map(|i| PageRun::new((i * 10 + i % 7) * PS, 1 + i % 3)).collect();
    let mut g = c.benchmark_group("runset");
    g.throughput(Throughput::Elements(dirty.len() as u64));
    g.bench_function("insert_26k_runs", |b| {
        b.iter(|| PageRunSet::from_runs(PS, black_box(dirty.iter().copied())).len_pages())
    });
    let set = PageRunSet::from_runs(PS, dirty.iter().copied());
    g.bench_function("subtract_from_1gib", |b| {
        b.iter_batched(
            || PageRunSet::from_runs(PS, [PageRun::new(0, 262_144)]),
            |mut full| {
                full.subtract(&set);
                full.len_pages()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_zero_check(c: &mut Criterion) {
    // The worst case: a zero buffer is read to the end.
    let buf = vec![0u8; 4 << 20];
    let mut g = c.benchmark_group("zero_check");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("is_zero_4mib", |b| b.iter(|| pagestream_engine::page::is_zero(black_box(&buf))));
    g.bench_function("iter_all_4mib_baseline", |b| b.iter(|| black_box(&buf).iter().all(|x| *x == 0)));
    g.finish();
}

/// The data frames' LZ4 on the demo workload's page kinds: text-like pages, random pages, and
/// the non-zero mix a run carries (zero pages never reach the encoder).
fn bench_lz4_frames(c: &mut Criterion) {
    use pagestream::workload::content::fill;
    use pagestream_transport::wire::{Codecs, DataLimits, RunEncoder};
    let pages = 64u64;
    let kind = |want: fn(&[u8]) -> bool| {
        let mut out = Vec::new();
        let mut page = vec![0u8; PS as usize];
        let mut index = 0u64;
        while (out.len() as u64) < pages * PS {
            fill(&mut page, index, 1, 7);
            index += 1;
            if want(&page) {
                out.extend_from_slice(&page);
            }
        }
        out
    };
    let runs = [
        ("text", kind(|p| p.starts_with(b"page "))),
        ("random", kind(|p| !p.starts_with(b"page ") && !pagestream_engine::page::is_zero(p))),
        ("mix", kind(|p| !pagestream_engine::page::is_zero(p))),
    ];
    let mut g = c.benchmark_group("lz4_frames");
    g.throughput(Throughput::Bytes(pages * PS));
    for (name, data) in &runs {
        for (codec, codecs) in [("lz4", Codecs::ALL), ("raw", Codecs::RAW)] {
            let limits = DataLimits::new(PS, pages as u32, codecs).expect("limits");
            let mut enc = RunEncoder::new(limits);
            let mut out = bytes::BytesMut::with_capacity((2 * pages * PS) as usize);
            let run = PageRun::new(0x1000_0000, pages);
            g.bench_function(format!("{name}_{codec}"), |b| {
                b.iter(|| {
                    out.clear();
                    enc.encode_pages_into(
                        1,
                        pagestream_engine::criu::PagemapId::Task(1),
                        run,
                        black_box(data),
                        &mut out,
                    )
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_pagemap, bench_runset, bench_zero_check, bench_lz4_frames);
criterion_main!(benches);
