//! The temporary directory of an image writer killed before it could remove it is removed by
//! the next writer of the same destination; a live writer's is never touched.

use pagestream_engine::criu::ImageDirWriter;

const PS: u64 = 4096;

fn hidden(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[test]
fn a_dead_writers_temporary_directory_goes_and_a_live_ones_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    // What a killed writer leaves: an unlocked temporary directory with half an image in it.
    let stale = tmp.path().join(".img.tmp-4194304-7");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("pages-1.img"), vec![1u8; 8192]).unwrap();
    // A different destination's leftover is not this writer's business.
    let other = tmp.path().join(".other.tmp-4194304-8");
    std::fs::create_dir(&other).unwrap();

    let mut live = ImageDirWriter::create(&dest, PS, 1).unwrap();
    assert!(!stale.exists(), "the dead writer's directory is still there: {:?}", hidden(tmp.path()));
    assert!(other.exists());
    let live_tmp = live.tmp_path().to_path_buf();
    live.open_pagemap(pagestream_engine::criu::PagemapId::Task(1)).unwrap();

    // A second writer of the same destination (it does not exist yet) leaves the live one alone,
    // and removes its own when dropped.
    let second = ImageDirWriter::create(&dest, PS, 1).unwrap();
    assert!(live_tmp.exists(), "a live writer's directory was removed");
    let second_tmp = second.tmp_path().to_path_buf();
    drop(second);
    assert!(!second_tmp.exists());
    assert!(live_tmp.exists());

    live.commit().unwrap();
    assert!(dest.join("pagemap-1.img").exists());
    assert_eq!(hidden(tmp.path()), vec![".other.tmp-4194304-8".to_string()]);
}
