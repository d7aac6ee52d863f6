//! PageStore's background snapshots: the committed directory is a pre-dump chain (`pre-1`,
//! `pre-2`, ... inside it) whose pages equal the newest content of every page, across
//! rewrites, zero pages, discards and pages new in later rounds; a store dropped without commit
//! leaves nothing behind.

use std::collections::BTreeMap;
use std::path::Path;

use pagestream_engine::criu::{ImageChain, ImageDir, PageLookup, PagemapId};
use pagestream_engine::store::PageStore;
use pagestream_engine::PageRun;

const PS: u64 = 4096;
const BASE: u64 = 0x7f00_0000_0000;
const ID: PagemapId = PagemapId::Task(42);

fn page(tag: u64) -> Vec<u8> {
    (0..PS).map(|i| (tag.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8 + 1).collect()
}

/// Expected content: Some(data) or None for a zero page.
type Want = BTreeMap<u64, Option<Vec<u8>>>;

fn put(store: &mut PageStore, want: &mut Want, round: u32, idx: u64, tag: u64) {
    let data = page(tag);
    store.put_pages(round, ID, PageRun::new(BASE + idx * PS, 1), &data).unwrap();
    want.insert(idx, Some(data));
}

fn check(dir: &Path, want: &Want, gone: &[u64]) {
    let chain = ImageChain::open(dir, None, PS).unwrap();
    chain.verify().unwrap();
    for (idx, content) in want {
        let got = chain.page_at(ID, BASE + idx * PS).unwrap();
        match (content, got) {
            (Some(d), PageLookup::Data(g)) => assert!(g == *d, "page {idx} differs"),
            (None, PageLookup::Data(g)) => assert!(g.iter().all(|b| *b == 0), "page {idx} should be zero"),
            (_, other) => panic!("page {idx}: {other:?}"),
        }
    }
    for idx in gone {
        assert!(matches!(chain.page_at(ID, BASE + idx * PS).unwrap(), PageLookup::Absent), "page {idx} discarded");
    }
}

fn wait_for_snapshot(store: &mut PageStore, round: u32) -> bool {
    // A snapshot may start only when the previous one is done.
    for _ in 0..500 {
        if store.snapshot(round).unwrap() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[test]
fn commit_over_snapshots_is_a_chain_with_the_newest_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = PageStore::new(tmp.path(), PS).unwrap();
    store.enable_snapshots().unwrap();
    let mut want = Want::new();
    // Round 0: 2048 pages (8 MiB), every 10th zero.
    for i in 0..2048 {
        if i % 10 == 9 {
            store.put_zero(0, ID, PageRun::new(BASE + i * PS, 1)).unwrap();
            want.insert(i, None);
        } else {
            put(&mut store, &mut want, 0, i, i);
        }
    }
    assert!(store.snapshot(0).unwrap(), "round 0 is worth a snapshot");
    // Round 1 arrives while it is written: rewrites, a data page turned zero, a zero page
    // turned data, pages beyond round 0, a discard.
    for i in (0..2048).step_by(2) {
        put(&mut store, &mut want, 1, i, 10_000 + i);
    }
    store.put_zero(1, ID, PageRun::new(BASE + 3 * PS, 1)).unwrap();
    want.insert(3, None);
    put(&mut store, &mut want, 1, 9, 20_009);
    for i in 4000..5100 {
        put(&mut store, &mut want, 1, i, 30_000 + i);
    }
    store.discard(1, ID, PageRun::new(BASE + 101 * PS, 4)).unwrap();
    for i in 101..105 {
        want.remove(&i);
    }
    assert!(wait_for_snapshot(&mut store, 1), "round 1 changed enough for a second snapshot");
    // Round 2 (the final one): a few more rewrites.
    for i in (0..2048).step_by(97) {
        put(&mut store, &mut want, 2, i, 40_000 + i);
    }
    let dir = tmp.path().join("img");
    store.commit(&dir, 1).unwrap();
    check(&dir, &want, &[101, 102, 103, 104]);
    // The chain lives inside the directory: img -> pre-2 -> pre-1.
    assert_eq!(std::fs::read_link(dir.join("parent")).unwrap(), Path::new("pre-2"));
    assert_eq!(std::fs::read_link(dir.join("pre-2/parent")).unwrap(), Path::new("../pre-1"));
    assert!(ImageDir::open(&dir.join("pre-1"), PS).unwrap().parent_link().is_none());
    // The commit itself holds only what changed after the newest snapshot.
    let top = ImageDir::open(&dir, PS).unwrap();
    let present: u64 =
        top.pagemap(ID).unwrap().pagemap.entries.iter().filter(|e| e.flags.is_present()).map(|e| e.nr_pages).sum();
    assert_eq!(present, 2048_u64.div_ceil(97), "only round 2's pages are written at commit");
    // Nothing else is left next to it once the store is gone.
    drop(store);
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("img")]);
}

#[test]
fn without_snapshots_the_image_is_flat_and_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = PageStore::new(tmp.path(), PS).unwrap();
    let mut want = Want::new();
    for i in 0..1500 {
        put(&mut store, &mut want, 0, i, i);
    }
    assert!(!store.snapshot(0).unwrap(), "snapshots are off");
    for i in (0..1500).step_by(3) {
        put(&mut store, &mut want, 1, i, 7 + i);
    }
    let dir = tmp.path().join("img");
    store.commit(&dir, 1).unwrap();
    check(&dir, &want, &[]);
    assert!(std::fs::symlink_metadata(dir.join("parent")).is_err());
}

#[test]
fn a_store_dropped_without_commit_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut store = PageStore::new(tmp.path(), PS).unwrap();
        store.enable_snapshots().unwrap();
        let mut want = Want::new();
        for i in 0..4096 {
            put(&mut store, &mut want, 0, i, i);
        }
        assert!(store.snapshot(0).unwrap());
        // Dropped while (or just after) the snapshot is written.
    }
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.is_empty(), "left behind: {names:?}");
}

#[test]
fn small_changes_are_not_worth_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = PageStore::new(tmp.path(), PS).unwrap();
    store.enable_snapshots().unwrap();
    let mut want = Want::new();
    for i in 0..100 {
        put(&mut store, &mut want, 0, i, i);
    }
    assert!(!store.snapshot(0).unwrap(), "400 KiB is below the threshold");
    let dir = tmp.path().join("img");
    store.commit(&dir, 1).unwrap();
    check(&dir, &want, &[]);
}

#[test]
fn snapshots_whose_owner_is_gone_are_removed_and_live_ones_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let names = |dir: &Path| {
        let mut n: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        n.sort();
        n
    };
    // A live owner (another store, as another receiver would be) and one of its directories.
    let mut live = PageStore::new(tmp.path(), PS).unwrap();
    live.enable_snapshots().unwrap();
    let lock = names(tmp.path()).into_iter().find(|n| n.ends_with(".lock")).expect("the live owner's lock file");
    let tag = lock.trim_start_matches(".pagestream-snapshot-").trim_end_matches(".lock").to_string();
    let kept = format!(".pagestream-snapshot-{tag}-77");
    // A gone owner: an unlocked lock file, a finished and a temporary directory; an orphan
    // directory without any lock file; something unrelated.
    let gone = [
        ".pagestream-snapshot-999999-0.lock".to_string(),
        ".pagestream-snapshot-999999-0-0".to_string(),
        "..pagestream-snapshot-999999-0-1.tmp-999999-4".to_string(),
        ".pagestream-snapshot-5-5-0".to_string(),
    ];
    for name in gone.iter().chain([&kept, &".unrelated-9".to_string()]) {
        if name.ends_with(".lock") {
            std::fs::write(tmp.path().join(name), b"").unwrap();
        } else {
            std::fs::create_dir(tmp.path().join(name)).unwrap();
            std::fs::write(tmp.path().join(name).join("pages-1.img"), b"x").unwrap();
        }
    }
    let mut store = PageStore::new(tmp.path(), PS).unwrap();
    store.enable_snapshots().unwrap();
    let left = names(tmp.path());
    for name in &gone {
        assert!(!left.contains(name), "{name} should be gone: {left:?}");
    }
    assert!(left.contains(&kept) && left.contains(&lock) && left.contains(&".unrelated-9".to_string()), "{left:?}");
    // Owners remove their lock files when they go.
    drop(store);
    drop(live);
    std::fs::remove_dir_all(tmp.path().join(&kept)).unwrap();
    assert_eq!(names(tmp.path()), vec![".unrelated-9".to_string()]);
}

#[test]
fn a_page_stored_again_after_the_snapshot_was_planned_is_not_taken_from_it() {
    // The snapshot of round 1 is taken while round 1 is still arriving (the API allows it), and
    // a page of round 1 is stored again afterwards: the commit must hold the newer copy.
    let tmp = tempfile::tempdir().unwrap();
    let mut store = PageStore::new(tmp.path(), PS).unwrap();
    store.enable_snapshots().unwrap();
    let mut want = Want::new();
    for i in 0..1100 {
        put(&mut store, &mut want, 1, i, i);
    }
    assert!(store.snapshot(1).unwrap());
    // Wait until it is written (a second snapshot can start only then), so it surely holds the
    // first copies.
    for i in 2000..3100 {
        put(&mut store, &mut want, 1, i, i);
    }
    assert!(wait_for_snapshot(&mut store, 2));
    put(&mut store, &mut want, 1, 5, 77_777);
    store.put_zero(1, ID, PageRun::new(BASE + 6 * PS, 1)).unwrap();
    want.insert(6, None);
    let dir = tmp.path().join("img");
    store.commit(&dir, 1).unwrap();
    check(&dir, &want, &[]);
}

#[test]
fn zero_stretches_and_scattered_arrival_land_in_place_with_and_without_snapshots() {
    // Zero stretches of 1, 5, 16 and 17 pages (the writer fills up to 16 with zeros to join
    // two pieces of data into one write) and 40; pages arrive in 64-page frames from three
    // streams, each taking its frames from the top down, so staging order is far from image
    // order while each frame's pages stay in order.
    // Each way both around the page cache (where the joining happens) and through it.
    let zero = |i: u64| [10..11, 20..25, 40..56, 70..87, 100..140].iter().any(|r| r.contains(&i));
    for (snapshots, direct_min) in [(false, 0), (true, 0), (false, u64::MAX), (true, u64::MAX)] {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = PageStore::new(tmp.path(), PS).unwrap();
        store.set_direct_min_bytes(direct_min);
        if snapshots {
            store.enable_snapshots().unwrap();
        }
        let mut want = Want::new();
        // A few pages come first: their staging slots lie before their neighbours', which must
        // then not be joined across them as if they were zero.
        for i in [5, 60, 1000] {
            put(&mut store, &mut want, 0, i, 3_000 + i);
        }
        let frames = |stream: u64| (0..32u64).rev().filter(move |f| f % 3 == stream);
        for i in (0..3u64).flat_map(frames).flat_map(|f| f * 64..f * 64 + 64) {
            if zero(i) {
                store.put_zero(0, ID, PageRun::new(BASE + i * PS, 1)).unwrap();
                want.insert(i, None);
            } else {
                put(&mut store, &mut want, 0, i, i);
            }
        }
        assert_eq!(store.snapshot(0).unwrap(), snapshots);
        // Round 1 rewrites a few pages, one of them next to a zero stretch.
        for i in [9, 56, 57, 500] {
            put(&mut store, &mut want, 1, i, 5_000 + i);
        }
        let dir = tmp.path().join("img");
        store.commit(&dir, 1).unwrap();
        check(&dir, &want, &[]);
    }
}
