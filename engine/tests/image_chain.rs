//! Image directories on a real file system: atomic writing, validation of every defect the reader
//! must refuse, and page lookup through parent chains of any depth.

use std::fs;
use std::path::{Path, PathBuf};

use pagestream_engine::criu::{ImageChain, ImageDir, ImageDirWriter, ImageErrorKind, PageFlags, PageLookup, PagemapId};
use pagestream_engine::{page_size, PageRun};

fn page(fill: u8) -> Vec<u8> {
    vec![fill; page_size() as usize]
}

fn pages(fills: &[u8]) -> Vec<u8> {
    fills.iter().flat_map(|f| page(*f)).collect()
}

const PID: PagemapId = PagemapId::Task(42);

/// Writes `root/name` with the given (vaddr in pages, fills) present runs and parent runs.
fn write_level(
    root: &Path,
    name: &str,
    parent: Option<&str>,
    present: &[(u64, &[u8])],
    in_parent: &[(u64, u64)],
) -> PathBuf {
    let ps = page_size();
    let mut w = ImageDirWriter::create(&root.join(name), ps, 1).unwrap();
    let pm = w.open_pagemap(PID).unwrap();
    let mut all: Vec<(u64, Option<&[u8]>, u64)> = present.iter().map(|(p, f)| (*p, Some(*f), f.len() as u64)).collect();
    all.extend(in_parent.iter().map(|(p, n)| (*p, None, *n)));
    all.sort_by_key(|x| x.0);
    for (p, fills, n) in all {
        match fills {
            Some(f) => pm.push_present(p * ps, &pages(f), PageFlags::LAZY).unwrap(),
            None => pm.push_hole(PageRun::new(p * ps, n), PageFlags::PARENT).unwrap(),
        }
    }
    if let Some(parent) = parent {
        w.set_parent(Path::new(parent)).unwrap();
    }
    w.commit().unwrap()
}

fn data(fill: u8) -> PageLookup {
    PageLookup::Data(page(fill))
}

#[test]
fn write_read_and_resolve_a_three_level_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let ps = page_size();
    write_level(tmp.path(), "1", None, &[(16, &[1, 2, 3, 4])], &[]);
    write_level(tmp.path(), "2", Some("../1"), &[(17, &[22])], &[(16, 1), (18, 2)]);
    let top = write_level(tmp.path(), "3", Some("../2"), &[(18, &[33])], &[(16, 2), (19, 1)]);

    let chain = ImageChain::open(&top, None, ps).unwrap();
    assert_eq!(chain.levels().len(), 3);
    chain.verify().unwrap();
    assert_eq!(chain.page_at(PID, 16 * ps).unwrap(), data(1), "two levels down");
    assert_eq!(chain.page_at(PID, 17 * ps + 5).unwrap(), data(22), "one level down");
    assert_eq!(chain.page_at(PID, 18 * ps).unwrap(), data(33), "top level");
    assert_eq!(chain.page_at(PID, 19 * ps).unwrap(), data(4), "hole of 2 resolves into 1");
    assert_eq!(chain.page_at(PID, 20 * ps).unwrap(), PageLookup::Absent);
    assert_eq!(chain.page_at(PagemapId::Task(7), 16 * ps).unwrap(), PageLookup::Absent);

    // No temporary directories left behind.
    let names: Vec<_> =
        fs::read_dir(tmp.path()).unwrap().map(|d| d.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn lazy_entries_without_data_and_shmem_pagemaps() {
    let tmp = tempfile::tempdir().unwrap();
    let ps = page_size();
    let mut w = ImageDirWriter::create(&tmp.path().join("d"), ps, 0x10001).unwrap();
    let pm = w.open_pagemap(PID).unwrap();
    pm.push_hole(PageRun::new(0x10 * ps, 4), PageFlags::LAZY).unwrap();
    pm.push_present(0x20 * ps, &pages(&[9]), PageFlags::default()).unwrap();
    let shm = w.open_pagemap(PagemapId::Shmem(777)).unwrap();
    // data may arrive in chunks
    shm.push_entry(pagestream_engine::criu::PagemapEntry { vaddr: 0, nr_pages: 2, flags: PageFlags::PRESENT }).unwrap();
    let two = pages(&[5, 6]);
    let (a, b) = two.split_at(100);
    shm.write_data(a).unwrap();
    shm.write_data(b).unwrap();
    let dir = w.commit().unwrap();

    for f in ["pagemap-42.img", "pages-65537.img", "pagemap-shmem-777.img", "pages-65538.img"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let chain = ImageChain::open(&dir, None, ps).unwrap();
    chain.verify().unwrap();
    assert_eq!(chain.page_at(PID, 0x12 * ps).unwrap(), PageLookup::Lazy);
    assert_eq!(chain.page_at(PID, 0x20 * ps).unwrap(), data(9));
    assert_eq!(chain.page_at(PagemapId::Shmem(777), ps).unwrap(), data(6));
}

#[test]
fn dropped_writer_leaves_nothing_and_existing_destination_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ps = page_size();
    {
        let mut w = ImageDirWriter::create(&tmp.path().join("x"), ps, 1).unwrap();
        w.open_pagemap(PID).unwrap().push_present(0, &page(1), PageFlags::default()).unwrap();
        assert!(w.tmp_path().exists());
    }
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "aborted writer left files");

    // Data missing at commit: refused, nothing committed.
    let mut w = ImageDirWriter::create(&tmp.path().join("x"), ps, 1).unwrap();
    let pm = w.open_pagemap(PID).unwrap();
    pm.push_entry(pagestream_engine::criu::PagemapEntry { vaddr: 0, nr_pages: 2, flags: PageFlags::PRESENT }).unwrap();
    pm.write_data(&page(1)).unwrap();
    let err = w.commit().unwrap_err().to_string();
    assert!(err.contains("4096 bytes of page data missing") || err.contains("bytes of page data missing"), "{err}");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);

    fs::create_dir(tmp.path().join("y")).unwrap();
    let err = ImageDirWriter::create(&tmp.path().join("y"), ps, 1).err().unwrap().to_string();
    assert!(err.contains("already exists"), "{err}");

    // Out-of-order entries are refused at write time.
    let mut w = ImageDirWriter::create(&tmp.path().join("z"), ps, 1).unwrap();
    let pm = w.open_pagemap(PID).unwrap();
    pm.push_present(4 * ps, &page(1), PageFlags::default()).unwrap();
    assert!(pm.push_present(2 * ps, &page(1), PageFlags::default()).is_err());
}

fn open_err(dir: &Path, root: Option<&Path>) -> (ImageErrorKind, String) {
    let err = ImageChain::open(dir, root, page_size()).and_then(|c| c.verify()).expect_err("must fail");
    let msg = err.to_string();
    (err.kind, msg)
}

#[test]
fn refuses_short_pages_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_level(tmp.path(), "1", None, &[(1, &[1, 2])], &[]);
    let pages = dir.join("pages-1.img");
    fs::OpenOptions::new().write(true).open(&pages).unwrap().set_len(page_size() + 1).unwrap();
    let (kind, msg) = open_err(&dir, None);
    assert!(matches!(kind, ImageErrorKind::PagesTooShort { .. }), "{msg}");
    assert!(msg.contains("pages-1.img") && msg.contains("pagemap-42.img"), "{msg}");
}

#[test]
fn refuses_escaping_dangling_and_looping_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    write_level(tmp.path(), "outside", None, &[(1, &[1])], &[]);

    let d = write_level(&tree, "a", Some("../../outside"), &[(2, &[1])], &[(1, 1)]);
    let (kind, msg) = open_err(&d, None);
    assert!(matches!(kind, ImageErrorKind::ParentEscapes { .. }), "{msg}");
    // Allowed when the caller gives a wider root.
    ImageChain::open(&d, Some(tmp.path()), page_size()).unwrap().verify().unwrap();

    let d = write_level(&tree, "b", Some("../nowhere"), &[(2, &[1])], &[]);
    let (kind, msg) = open_err(&d, None);
    assert!(matches!(kind, ImageErrorKind::ParentDangling { .. }), "{msg}");

    let d1 = write_level(&tree, "l1", Some("../l2"), &[(2, &[1])], &[]);
    write_level(&tree, "l2", Some("../l1"), &[(2, &[1])], &[]);
    let (kind, msg) = open_err(&d1, None);
    assert!(matches!(kind, ImageErrorKind::ParentLoop(_)), "{msg}");

    let d = write_level(&tree, "self", Some("."), &[(2, &[1])], &[]);
    let (kind, msg) = open_err(&d, None);
    assert!(matches!(kind, ImageErrorKind::ParentLoop(_)), "{msg}");
}

#[test]
fn refuses_parent_entries_the_parent_does_not_cover() {
    let tmp = tempfile::tempdir().unwrap();
    let d = write_level(tmp.path(), "orphan", None, &[], &[(1, 1)]);
    let (kind, msg) = open_err(&d, None);
    assert!(matches!(kind, ImageErrorKind::NoParent { .. }), "{msg}");

    write_level(tmp.path(), "p", None, &[(1, &[1])], &[]);
    let d = write_level(tmp.path(), "c", Some("../p"), &[], &[(1, 2)]);
    let (kind, msg) = open_err(&d, None);
    assert!(matches!(kind, ImageErrorKind::MissingInParent { .. }), "{msg}");
    assert!(msg.contains("missing 0x1000 x 2 in parent pagemap") || msg.contains("x 2 in parent pagemap"), "{msg}");
}

#[test]
fn image_dir_ignores_other_files_and_reads_legacy_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = write_level(tmp.path(), "1", None, &[(3, &[7])], &[]);
    fs::write(d.join("core-42.img"), b"not a pagemap").unwrap();
    fs::write(d.join("pagemap-notanid.img"), b"junk").unwrap();
    let dir = ImageDir::open(&d, page_size()).unwrap();
    assert_eq!(dir.pagemaps().count(), 1);
}
