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

criterion_group!(benches, bench_pagemap, bench_runset, bench_zero_check);
criterion_main!(benches);
