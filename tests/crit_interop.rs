//! Interoperability with CRIU's own image tool `crit` (Debian package `criu`): images pagestream
//! writes decode with crit to exactly what was written; images crit encodes are read back exactly;
//! `pagestream image show --json` lists what `crit show` lists.
//!
//! Skipped (loudly) without crit; CI sets `PAGESTREAM_REQUIRE=crit` so there it always runs.

mod common;

use std::fs;
use std::path::Path;

use common::{crit, pagestream, require_tool, stderr, stdout};
use pagestream_engine::criu::{ImageDirWriter, PageFlags, Pagemap, PagemapEntry, PagemapId};
use pagestream_engine::{page_size, PageRun};
use serde_json::{json, Value};

fn have_crit() -> bool {
    require_tool("crit", &["--help"])
}

/// A small deterministic generator, so failures reproduce without storing fixtures.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Entries with every flag combination CRIU writes, large and small addresses and counts.
fn random_entries(rng: &mut Lcg, n: usize) -> Vec<PagemapEntry> {
    let ps = page_size();
    let combos = [4, 6, 2, 1, 3, 5, 7];
    let mut vaddr = (rng.next() % 0x1000) * ps;
    (0..n)
        .map(|_| {
            vaddr += (rng.next() % 64) * ps;
            let nr_pages = 1 + if rng.next() % 4 == 0 { rng.next() % 1_000_000 } else { rng.next() % 8 };
            let e = PagemapEntry { vaddr, nr_pages, flags: PageFlags(combos[(rng.next() % 7) as usize]) };
            vaddr += nr_pages * ps;
            e
        })
        .collect()
}

/// Writes entries into `dir/pagemap-<id>.img` through the engine's atomic writer, with real data
/// for present entries (kept small by capping present runs).
fn write_dir(dir: &Path, maps: &[(PagemapId, Vec<PagemapEntry>)]) {
    let ps = page_size();
    let mut w = ImageDirWriter::create(dir, ps, 0x10001).unwrap();
    for (id, entries) in maps {
        let pm = w.open_pagemap(*id).unwrap();
        for e in entries {
            if e.flags.is_present() {
                pm.push_entry(*e).unwrap();
                pm.write_data(&vec![0xa5; (e.nr_pages * ps) as usize]).unwrap();
            } else {
                pm.push_hole(PageRun::new(e.vaddr, e.nr_pages), e.flags).unwrap();
            }
        }
    }
    w.commit().unwrap();
}

/// Caps present runs so the pages files stay small.
fn small_present(mut entries: Vec<PagemapEntry>) -> Vec<PagemapEntry> {
    for e in &mut entries {
        if e.flags.is_present() {
            e.nr_pages = e.nr_pages.min(3);
        }
    }
    entries
}

#[test]
fn crit_decodes_what_the_engine_writes() {
    if !have_crit() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Lcg(0x5eed);
    for round in 0..6 {
        let dir = tmp.path().join(format!("d{round}"));
        let task = small_present(random_entries(&mut rng, 1 + round * 7));
        let shm = small_present(random_entries(&mut rng, 3));
        let maps = vec![(PagemapId::Task(1000 + round as u64), task), (PagemapId::Shmem(42), shm)];
        write_dir(&dir, &maps);
        for (i, (id, entries)) in maps.iter().enumerate() {
            let raw: Value = serde_json::from_str(&crit(&dir, &["decode", "-i", &id.file_name()])).unwrap();
            assert_eq!(raw["magic"], "PAGEMAP");
            let got = raw["entries"].as_array().unwrap();
            assert_eq!(got[0], json!({ "pages_id": 0x10001 + i as u64 }), "{id}");
            assert_eq!(got.len(), entries.len() + 1, "{id}");
            for (g, e) in got[1..].iter().zip(entries) {
                // crit 3.17 reads field 2 (nr_pages); the engine also writes field 5, which crit
                // keeps as an unknown field.
                assert_eq!(g, &json!({ "vaddr": e.vaddr, "nr_pages": e.nr_pages, "flags": e.flags.bits() }), "{id}");
            }
        }
    }
}

#[test]
fn the_engine_reads_what_crit_encodes() {
    if !have_crit() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let doc = json!({
        "magic": "PAGEMAP",
        "entries": [
            { "pages_id": 7 },
            { "vaddr": 0x400000u64, "nr_pages": 2, "flags": 4 },
            { "vaddr": 0x402000u64, "nr_pages": 1 },                       // no flags: PE_PRESENT
            { "vaddr": 0x7f00_0000_0000u64, "nr_pages": 3, "flags": 6 },
            { "vaddr": 0x7f00_0001_0000u64, "nr_pages": 1, "in_parent": true }, // legacy hole
            { "vaddr": 0x7f00_0002_0000u64, "nr_pages": 4_000_000_000u64, "flags": 2 },
        ]
    });
    let json_path = tmp.path().join("pm.json");
    fs::write(&json_path, doc.to_string()).unwrap();
    crit(tmp.path(), &["encode", "-i", "pm.json", "-o", "pagemap-5.img"]);
    let bytes = fs::read(tmp.path().join("pagemap-5.img")).unwrap();
    let pm = Pagemap::parse(Path::new("pagemap-5.img"), &bytes, page_size()).unwrap();
    assert_eq!(pm.pages_id, 7);
    let e = |vaddr, nr_pages, flags| PagemapEntry { vaddr, nr_pages, flags: PageFlags(flags) };
    assert_eq!(
        pm.entries,
        vec![
            e(0x400000, 2, 4),
            e(0x402000, 1, 4),
            e(0x7f00_0000_0000, 3, 6),
            e(0x7f00_0001_0000, 1, 4 | 1), // CRIU: missing flags -> PRESENT, in_parent adds PARENT
            e(0x7f00_0002_0000, 4_000_000_000, 2),
        ]
    );
}

#[test]
fn image_show_json_lists_what_crit_show_lists() {
    if !have_crit() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    fs::create_dir(&dir).unwrap();
    let mut rng = Lcg(77);
    for (name, pages_id, n) in [("pagemap-1.img", 1u64, 9), ("pagemap-2.img", 2, 1), ("pagemap-shmem-9.img", 3, 4)] {
        let mut entries = vec![json!({ "pages_id": pages_id })];
        entries.extend(
            random_entries(&mut rng, n)
                .iter()
                .map(|e| json!({ "vaddr": e.vaddr, "nr_pages": e.nr_pages, "flags": e.flags.bits() })),
        );
        fs::write(tmp.path().join("in.json"), json!({ "magic": "PAGEMAP", "entries": entries }).to_string()).unwrap();
        crit(tmp.path(), &["encode", "-i", "in.json", "-o", dir.join(name).to_str().unwrap()]);
    }
    // show does not need the pages files; verify would (and must) refuse their absence.
    let o = pagestream(&["image", "show", "--json", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ours = ours["pagemaps"].as_array().unwrap();
    assert_eq!(ours.len(), 3);
    for pm in ours {
        let file = pm["file"].as_str().unwrap();
        let theirs: Value = serde_json::from_str(&crit(&dir, &["show", file])).unwrap();
        assert_eq!(pm["magic"], theirs["magic"], "{file}");
        assert_eq!(pm["entries"], theirs["entries"], "{file}");
    }
    let o = pagestream(&["image", "verify", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "verify must refuse missing pages files");
}
