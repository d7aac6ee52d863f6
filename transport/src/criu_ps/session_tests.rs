//! Tests of [`PageServerSession`] on real session directories (no sockets).

use std::fs;
use std::path::Path;

use bytes::Bytes;
use pagestream_engine::criu::session_dirs::SessionDirs;
use pagestream_engine::criu::{ImageChain, PageFlags, PageLookup, PagemapId};

use super::*;

const PS: u64 = 4096;
const TASK: DstId = DstId::task(1);
const SHM: DstId = DstId::shmem(77);

fn cmd(c: PsCommand) -> ServerInput {
    ServerInput::Command(c)
}

fn data(byte: u8, pages: u64) -> ServerInput {
    ServerInput::PageData(Bytes::from(vec![byte; (pages * PS) as usize]))
}

fn add_f(dst: DstId, vaddr: u64, nr_pages: u64, flags: PageFlags) -> ServerInput {
    cmd(PsCommand::AddF { dst, vaddr, nr_pages, flags })
}

/// Feeds `inputs`; returns the replies, or the first error.
fn feed(s: &mut PageServerSession<SessionDirWriter>, inputs: Vec<ServerInput>) -> Result<Vec<u8>, SessionError> {
    let mut reply = Vec::new();
    for input in inputs {
        s.handle(input, &mut reply)?;
    }
    Ok(reply)
}

fn names(root: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(root).unwrap().map(|d| d.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Session 1: task 1 with 4 data pages at 0x10000 (2 of them lazy-eligible) and a lazy page;
/// shmem 77 with one page at offset 0.
fn first_session(dirs: &SessionDirs) -> Vec<u8> {
    let mut s = PageServerSession::begin(dirs).unwrap();
    let reply = feed(
        &mut s,
        vec![
            cmd(PsCommand::Parent { dst: TASK }),
            cmd(PsCommand::Open2 { dst: TASK }),
            add_f(TASK, 0x10000, 2, PageFlags::PRESENT),
            data(1, 1),
            data(2, 1),
            add_f(TASK, 0x12000, 2, PageFlags::PRESENT | PageFlags::LAZY),
            data(3, 2),
            add_f(TASK, 0x20000, 1, PageFlags::LAZY),
            cmd(PsCommand::Open2 { dst: SHM }),
            cmd(PsCommand::Add { dst: SHM, vaddr: 0, nr_pages: 1 }),
            data(4, 1),
        ],
    )
    .unwrap();
    assert!(!dirs.root().join("1").exists(), "nothing is visible before CLOSE");
    let mut close_reply = Vec::new();
    s.handle(cmd(PsCommand::Close), &mut close_reply).unwrap();
    assert!(dirs.root().join("1").is_dir(), "committed by the time the CLOSE reply exists");
    assert_eq!(close_reply, 0i32.to_ne_bytes());
    assert_eq!(s.committed().map(|c| c.number), Some(1));
    s.end_of_stream().unwrap();
    let st = s.stats();
    assert_eq!((st.pagemaps, st.entries, st.present_pages, st.lazy_pages, st.parent_pages), (2, 4, 5, 1, 0));
    assert_eq!((st.has_parent_true, st.has_parent_false, st.data_bytes), (0, 3, 5 * PS));
    reply
}

#[test]
fn chain_of_two_sessions_answers_has_parent_truthfully_and_resolves_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = SessionDirs::open(tmp.path(), PS).unwrap();
    let replies = first_session(&dirs);
    let mut want = 0i32.to_ne_bytes().to_vec(); // PARENT: no parent
    want.extend([0u8, 0]); // OPEN2 task, OPEN2 shmem: no parent
    assert_eq!(replies, want);

    let mut s = PageServerSession::begin(&dirs).unwrap();
    let replies = feed(
        &mut s,
        vec![
            cmd(PsCommand::Parent { dst: TASK }),
            cmd(PsCommand::Parent { dst: DstId::task(2) }),
            cmd(PsCommand::Open2 { dst: TASK }),
            cmd(PsCommand::Hole { dst: TASK, vaddr: 0x10000, nr_pages: 1 }),
            add_f(TASK, 0x11000, 1, PageFlags::PRESENT),
            data(9, 1),
            add_f(TASK, 0x12000, 2, PageFlags::PARENT | PageFlags::LAZY),
            add_f(TASK, 0x20000, 1, PageFlags::PARENT),
            // Implicit open ("w/o open") of the shmem pagemap by a hole.
            add_f(SHM, 0, 1, PageFlags::PARENT),
            cmd(PsCommand::Close),
        ],
    )
    .unwrap();
    let mut want = 1i32.to_ne_bytes().to_vec();
    want.extend(0i32.to_ne_bytes());
    want.push(1);
    want.extend(0i32.to_ne_bytes()); // CLOSE
    assert_eq!(replies, want);
    assert_eq!(s.committed().map(|c| c.number), Some(2));
    assert_eq!(s.stats().parent_pages, 5);

    let chain = ImageChain::open(&tmp.path().join("last"), None, PS).unwrap();
    chain.verify().unwrap();
    let page = |id, addr| chain.page_at(id, addr).unwrap();
    let task = PagemapId::Task(1);
    assert_eq!(page(task, 0x10000), PageLookup::Data(vec![1; PS as usize]), "from session 1");
    assert_eq!(page(task, 0x11000), PageLookup::Data(vec![9; PS as usize]), "session 2's own data");
    assert_eq!(page(task, 0x13000), PageLookup::Data(vec![3; PS as usize]), "PARENT|LAZY resolves");
    assert_eq!(page(task, 0x20000), PageLookup::Lazy);
    assert_eq!(page(PagemapId::Shmem(77), 0), PageLookup::Data(vec![4; PS as usize]));
    assert_eq!(names(tmp.path()), ["1", "2", "last"]);
}

/// Runs a failing session 2 on top of a committed session 1 and checks that it left nothing.
fn refused(inputs: Vec<ServerInput>) -> SessionError {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = SessionDirs::open(tmp.path(), PS).unwrap();
    first_session(&dirs);
    let mut s = PageServerSession::begin(&dirs).unwrap();
    let err = match feed(&mut s, inputs) {
        Ok(_) => s.end_of_stream().unwrap_err(),
        Err(e) => e,
    };
    assert!(s.is_failed() && s.target().is_none());
    assert!(matches!(s.handle(cmd(PsCommand::Close), &mut Vec::new()), Err(SessionError::Finished("failed"))));
    drop(s);
    assert_eq!(names(tmp.path()), ["1", "last"], "after {err}");
    assert_eq!(dirs.last().unwrap(), Some(1));
    err
}

#[test]
fn refuses_parent_holes_the_parent_does_not_cover() {
    let open = cmd(PsCommand::Open2 { dst: TASK });
    let err = refused(vec![open.clone(), add_f(TASK, 0x13000, 2, PageFlags::PARENT)]);
    assert!(matches!(err, SessionError::MissingInParent { missing: 0x14000, .. }), "{err}");
    assert_eq!(err.to_string(), "Missing 0x14000 in parent pagemap pagemap-1.img (PE_PARENT entry 0x13000 x 2)");
    let err = refused(vec![cmd(PsCommand::Hole { dst: DstId::task(2), vaddr: 0, nr_pages: 1 })]);
    assert!(matches!(err, SessionError::NoParent { .. }), "{err}");
}

#[test]
fn refuses_parent_holes_without_any_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = SessionDirs::open(tmp.path(), PS).unwrap();
    let mut s = PageServerSession::begin(&dirs).unwrap();
    let err = feed(&mut s, vec![cmd(PsCommand::Open2 { dst: TASK }), add_f(TASK, 0, 1, PageFlags::PARENT)]);
    assert!(matches!(err, Err(SessionError::NoParent { .. })), "{err:?}");
    drop(s);
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn refuses_bad_entries() {
    let open = || cmd(PsCommand::Open2 { dst: TASK });
    let cases: Vec<(Vec<ServerInput>, &str)> = vec![
        (vec![open(), add_f(TASK, 0x5000, 1, PageFlags::LAZY), add_f(TASK, 0x4000, 1, PageFlags::LAZY)], "unsorted"),
        (vec![open(), add_f(TASK, 0x5000, 2, PageFlags::LAZY), add_f(TASK, 0x6000, 1, PageFlags::LAZY)], "unsorted"),
        (vec![open(), add_f(TASK, 0x5000, 1, PageFlags(0))], "carries no PE_* flag"),
        (vec![open(), add_f(TASK, 0x5000, 1, PageFlags(8))], "unknown flags 0x8"),
        (vec![open(), add_f(TASK, 0x5001, 1, PageFlags::LAZY)], "not page aligned"),
        (vec![open(), add_f(TASK, 0x5000, 0, PageFlags::LAZY)], "has 0 pages"),
        (vec![open(), cmd(PsCommand::Open { dst: SHM }), cmd(PsCommand::Open2 { dst: TASK })], "opened a second time"),
        (vec![open(), add_f(SHM, 0, 1, PageFlags::LAZY), add_f(TASK, 0x90000, 1, PageFlags::LAZY)], "second time"),
        (vec![cmd(PsCommand::Get { pid: 1, vaddr: 0x10000, nr_pages: 1 })], "does not serve lazy pages"),
        (vec![open(), data(1, 1)], "bytes of page data where only 0 were owed"),
        (vec![open(), add_f(TASK, 0x5000, 2, PageFlags::PRESENT), data(1, 3)], "where only 8192 were owed"),
        (vec![open(), add_f(TASK, 0x5000, 2, PageFlags::PRESENT), data(1, 1)], "connection closed before CLOSE"),
        (vec![], "connection closed before CLOSE (after 0 commands"),
    ];
    for (inputs, want) in cases {
        let err = refused(inputs).to_string();
        assert!(err.contains(want), "{err:?} does not mention {want:?}");
    }
}

#[test]
fn a_command_inside_page_data_is_refused() {
    let err = refused(vec![
        cmd(PsCommand::Open2 { dst: TASK }),
        add_f(TASK, 0x5000, 1, PageFlags::PRESENT),
        cmd(PsCommand::Close),
    ]);
    assert!(matches!(err, SessionError::DataMissing { command: "CLOSE", owed: 4096 }), "{err}");
}

#[test]
fn force_close_commits_like_close() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = SessionDirs::open(tmp.path(), PS).unwrap();
    let mut s = PageServerSession::begin(&dirs).unwrap();
    let reply = feed(&mut s, vec![add_f(TASK, 0, 1, PageFlags::PRESENT), data(5, 1), cmd(PsCommand::ForceClose)]);
    assert_eq!(reply.unwrap(), 0i32.to_ne_bytes(), "implicit open sends no reply; FORCE_CLOSE gets 0");
    assert_eq!(dirs.last().unwrap(), Some(1));
    assert!(matches!(s.handle(data(1, 1), &mut Vec::new()), Err(SessionError::Finished("committed"))));
    assert_eq!(dirs.last().unwrap(), Some(1), "input after commit changes nothing");
}
