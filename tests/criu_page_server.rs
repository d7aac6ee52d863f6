//! pagestream's page server over real TCP loopback, driven by a CRIU-like client built from the
//! codec: a two-session pre-dump chain (`DIR/1`, `DIR/2 -> parent ../1`, `DIR/last -> 2`) that
//! `ImageChain` verifies and resolves page by page, in both header layouts, fixed and detected.
//! Then a lazy-pages client's GET session on the same server: the pages of `DIR/last`, through
//! its parent, answered in order and in full, nothing written.

mod criu_page_server_client;

use std::fs;
use std::path::Path;

use criu_page_server_client::{names, pattern, ps, Client, PageFlags, Server};
use pagestream_engine::criu::{ImageChain, PageLookup};
use pagestream_transport::criu_ps::session::pagemap_id;
use pagestream_transport::criu_ps::{DstId, HeaderLayout, LayoutChoice, PsCommand};

const A: DstId = DstId::task(100);
const B: DstId = DstId::task(101);
const C: DstId = DstId::task(102);
const SHM: DstId = DstId::shmem(5000);
const HEAP: u64 = 0x7f00_0000_0000;

fn page(data: &[u8], i: u64) -> Vec<u8> {
    let ps = ps() as usize;
    data[i as usize * ps..(i as usize + 1) * ps].to_vec()
}

/// The data the two sessions send, by name.
struct Data {
    heap: Vec<u8>,
    stack: Vec<u8>,
    text: Vec<u8>,
    shm: Vec<u8>,
    heap2: Vec<u8>,
    c: Vec<u8>,
    shm2: Vec<u8>,
}

fn data() -> Data {
    Data {
        heap: pattern(1, 3),
        stack: pattern(40, 1),
        text: pattern(60, 2),
        shm: pattern(80, 4),
        heap2: pattern(120, 1),
        c: pattern(140, 1),
        shm2: pattern(160, 2),
    }
}

/// Session 1, a full dump: two tasks and a shmem object, present / lazy-with-data / lazy entries.
fn first_session(addr: std::net::SocketAddr, layout: HeaderLayout, d: &Data) {
    let mut c = Client::connect(addr, layout);
    assert!(!c.open2(A), "session 1 has no parent");
    c.add_f(A, HEAP, 3, PageFlags::PRESENT | PageFlags::LAZY, &d.heap);
    c.add_f(A, HEAP + 0x5000, 2, PageFlags::LAZY, &[]);
    c.add_f(A, HEAP + 0x10000, 1, PageFlags::PRESENT, &d.stack);
    assert!(!c.open2(B));
    c.add_f(B, 0x40_0000, 2, PageFlags::PRESENT, &d.text);
    assert!(!c.open2(SHM));
    c.add_f(SHM, 0, 4, PageFlags::PRESENT, &d.shm);
    assert_eq!(c.close(false), 0);
}

/// Session 2, an incremental round: holes for what did not change, new data for what did, a new
/// task, and legacy HOLE / ADD for the shmem object.
fn second_session(addr: std::net::SocketAddr, layout: HeaderLayout, d: &Data) {
    let ps = ps();
    let mut c = Client::connect(addr, layout);
    assert!(c.parent(A), "pre-dump asks PARENT first");
    assert!(c.open2(A), "session 1 holds pagemap-100.img");
    c.add_f(A, HEAP, 1, PageFlags::PARENT, &[]);
    c.add_f(A, HEAP + ps, 1, PageFlags::PRESENT | PageFlags::LAZY, &d.heap2);
    c.add_f(A, HEAP + 2 * ps, 1, PageFlags::PARENT | PageFlags::LAZY, &[]);
    c.add_f(A, HEAP + 0x5000, 2, PageFlags::PARENT, &[]);
    c.add_f(A, HEAP + 0x10000, 1, PageFlags::PARENT, &[]);
    assert!(c.open2(B));
    c.add_f(B, 0x40_0000, 2, PageFlags::PARENT, &[]);
    assert!(!c.open2(C), "a task that was not in session 1 has no parent");
    c.add_f(C, 0x1000, 1, PageFlags::PRESENT, &d.c);
    assert!(c.open2(SHM));
    c.send(PsCommand::Hole { dst: SHM, vaddr: 0, nr_pages: 2 }, &[]);
    c.send(PsCommand::Add { dst: SHM, vaddr: 2 * ps, nr_pages: 2 }, &d.shm2);
    assert_eq!(c.close(false), 0);
}

fn check_chain(root: &Path, d: &Data) {
    let ps = ps();
    assert_eq!(names(root), ["1", "2", "last"], "no temporary directories or links left");
    assert_eq!(fs::read_link(root.join("2/parent")).unwrap(), Path::new("../1"));
    assert_eq!(fs::read_link(root.join("last")).unwrap(), Path::new("2"));
    assert!(fs::symlink_metadata(root.join("1/parent")).is_err());
    let mut files = names(&root.join("1"));
    files.retain(|n| n.starts_with("pages-"));
    assert_eq!(files, ["pages-65537.img", "pages-65538.img", "pages-65539.img"], "ids from 0x10001");

    let chain = ImageChain::open(&root.join("2"), None, ps).unwrap();
    chain.verify().unwrap();
    assert_eq!(chain.levels().len(), 2);
    let at = |id: DstId, addr: u64| chain.page_at(pagemap_id(id), addr).unwrap();
    let data = |v: Vec<u8>| PageLookup::Data(v);
    assert_eq!(at(A, HEAP), data(page(&d.heap, 0)), "hole -> session 1");
    assert_eq!(at(A, HEAP + ps), data(page(&d.heap2, 0)), "rewritten in session 2");
    assert_eq!(at(A, HEAP + 2 * ps), data(page(&d.heap, 2)), "PARENT|LAZY -> session 1");
    assert_eq!(at(A, HEAP + 0x5000), PageLookup::Lazy);
    assert_eq!(at(A, HEAP + 0x6000), PageLookup::Lazy);
    assert_eq!(at(A, HEAP + 0x10000), data(d.stack.clone()));
    assert_eq!(at(A, HEAP + 0x11000), PageLookup::Absent);
    assert_eq!(at(B, 0x40_1000), data(page(&d.text, 1)));
    assert_eq!(at(C, 0x1000), data(d.c.clone()));
    for i in 0..2 {
        assert_eq!(at(SHM, i * ps), data(page(&d.shm, i)), "shmem page {i} from session 1");
        assert_eq!(at(SHM, (2 + i) * ps), data(page(&d.shm2, i)), "shmem page {} from session 2", 2 + i);
    }
}

fn chain_through_server(server_layout: LayoutChoice, client_layout: HeaderLayout) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let server = Server::start(&root, server_layout, 3);
    let d = data();

    first_session(server.addr, client_layout, &d);
    let (number, outcome) = server.next();
    let s1 = outcome.unwrap_or_else(|e| panic!("session 1 failed: {e}"));
    assert_eq!(number, Some(1));
    assert_eq!(s1.layout, Some(client_layout));
    assert_eq!((s1.stats.has_parent_true, s1.stats.has_parent_false), (0, 3));
    assert_eq!((s1.stats.present_pages, s1.stats.lazy_pages, s1.stats.parent_pages), (10, 2, 0));
    assert_eq!(s1.stats.data_bytes, 10 * ps());
    assert_eq!(s1.warning, None);

    second_session(server.addr, client_layout, &d);
    let s2 = server.next().1.unwrap_or_else(|e| panic!("session 2 failed: {e}"));
    assert_eq!(s2.committed.number, 2);
    assert_eq!((s2.stats.has_parent_true, s2.stats.has_parent_false), (4, 1));
    assert_eq!((s2.stats.present_pages, s2.stats.parent_pages), (4, 9));

    // `criu lazy-pages --page-server`: GETs of session 2's lazy pages (one from its own data,
    // the others through its parent), then CLOSE.
    let mut c = Client::connect(server.addr, client_layout);
    let pages = c.get(100, HEAP, 3);
    assert_eq!(pages, [page(&d.heap, 0), d.heap2.clone(), page(&d.heap, 2)].concat());
    assert_eq!(c.get(100, HEAP + ps(), 1), d.heap2, "a page can be asked for again");
    assert_eq!(c.close(false), 0);
    let served = server.next().1.unwrap_or_else(|e| panic!("GET session failed: {e}"));
    assert_eq!(served.committed.number, 2, "served from last");
    assert_eq!(served.lazy.map(|l| (l.gets, l.pages)), Some((2, 4)));

    let totals = server.join();
    assert_eq!((totals.committed, totals.failed), (3, 0));
    assert_eq!(names(&root), ["1", "2", "last"], "a GET session writes nothing");
    check_chain(&root, &d);
}

#[test]
fn chain_with_fixed_24_byte_headers() {
    chain_through_server(LayoutChoice::Fixed(HeaderLayout::Legacy24), HeaderLayout::Legacy24);
}

#[test]
fn chain_with_fixed_32_byte_headers() {
    chain_through_server(LayoutChoice::Fixed(HeaderLayout::Wide32), HeaderLayout::Wide32);
}

#[test]
fn chain_with_detected_24_byte_headers() {
    chain_through_server(LayoutChoice::Detect, HeaderLayout::Legacy24);
}

#[test]
fn chain_with_detected_32_byte_headers() {
    chain_through_server(LayoutChoice::Detect, HeaderLayout::Wide32);
}
