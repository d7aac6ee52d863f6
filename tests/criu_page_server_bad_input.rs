//! Bad input on the CRIU-facing socket of pagestream's page server, over real TCP loopback: each
//! bad session ends with a clear error, gets no CLOSE reply, commits nothing (no new `DIR/k`, no
//! temporary leftovers, `last` unchanged), and the same server then serves a good session that
//! continues the chain. In both header layouts, fixed and detected, and with mismatched layouts.

mod criu_page_server_client;

use std::fs;
use std::net::TcpStream;
use std::path::Path;

use criu_page_server_client::{names, pattern, ps, Client, PageFlags, Server};
use pagestream_engine::criu::ImageChain;
use pagestream_transport::criu_ps::{DstId, HeaderLayout, LayoutChoice, PsCommand, RawIov};

const A: DstId = DstId::task(100);
const HEAP: u64 = 0x7f00_0000_0000;

type Play = fn(&mut Client<TcpStream>, HeaderLayout);

/// A bad session: what the client does before hanging up, and what the error must say.
struct Case {
    name: &'static str,
    play: Play,
    want: &'static str,
    /// Only for clients of this layout.
    only: Option<HeaderLayout>,
}

fn raw_header(layout: HeaderLayout, raw: RawIov) -> Vec<u8> {
    let mut out = Vec::new();
    raw.encode(layout, &mut out).unwrap();
    out
}

fn cases() -> Vec<Case> {
    let case = |name, play: Play, want| Case { name, play, want, only: None };
    vec![
        case(
            "garbage",
            |c, _| drop(c.raw(b"GET / HTTP/1.1\r\nHost: pagestream\r\n\r\n")),
            "unknown page-server command 0x4547",
        ),
        case(
            "truncated header",
            |c, _| drop(c.raw(&c.header(PsCommand::Open2 { dst: A })[..10])),
            "connection closed inside a header (10 of",
        ),
        Case {
            name: "ADD_F page count overflows",
            play: |c, _| {
                c.open2(A);
                c.send(PsCommand::AddF { dst: A, vaddr: 0, nr_pages: 1 << 60, flags: PageFlags::PRESENT }, &[]);
            },
            want: "ADD_F nr_pages 1152921504606846976 * page size",
            only: Some(HeaderLayout::Wide32),
        },
        Case {
            name: "ADD_F page count above the limit",
            play: |c, _| {
                c.open2(A);
                c.send(PsCommand::AddF { dst: A, vaddr: 0, nr_pages: 1 << 40, flags: PageFlags::PRESENT }, &[]);
            },
            want: "exceeds the limit",
            only: Some(HeaderLayout::Wide32),
        },
        case(
            "ADD_F range wraps",
            |c, _| {
                c.open2(A);
                let flags = PageFlags::PRESENT;
                c.send(PsCommand::AddF { dst: A, vaddr: u64::MAX - 0xFFFF_FFFF, nr_pages: 0x10_0000, flags }, &[]);
            },
            "wraps past the end of the 64-bit address space",
        ),
        case(
            "ADD_F with fewer bytes than it announces",
            |c, _| {
                c.open2(A);
                c.add_f(A, HEAP, 1, PageFlags::PRESENT, &pattern(1, 1));
                c.send(
                    PsCommand::AddF { dst: A, vaddr: HEAP + 0x10000, nr_pages: 4, flags: PageFlags::PRESENT },
                    &pattern(2, 1),
                );
            },
            "connection closed in the middle of page data of ADD_F (4096 of 16384 bytes)",
        ),
        case(
            "unknown command",
            |c, layout| {
                c.open2(A);
                drop(c.raw(&raw_header(layout, RawIov { cmd: 0x77, nr_pages: 0, vaddr: 0, dst_id: 0x6401 })));
            },
            "unknown page-server command 0x77",
        ),
        case(
            "close in the middle of page data",
            |c, _| {
                c.open2(A);
                c.send(PsCommand::AddF { dst: A, vaddr: HEAP, nr_pages: 2, flags: PageFlags::PRESENT }, &[]);
                drop(c.raw(&pattern(3, 1)));
                let close = c.header(PsCommand::Close);
                drop(c.raw(&close)); // just bytes of page data to the server
            },
            "connection closed in the middle of page data of ADD_F (",
        ),
        case(
            "PE_PARENT not covered by the parent",
            |c, _| {
                assert!(c.open2(A), "session 1 holds pagemap-100.img");
                c.add_f(A, HEAP + 0x1000, 2, PageFlags::PARENT, &[]);
                drop(c.raw(&c.header(PsCommand::Close)));
            },
            "Missing 0x7f0000002000 in parent pagemap pagemap-100.img (PE_PARENT entry 0x7f0000001000 x 2)",
        ),
        case(
            "PE_PARENT for a pagemap the parent lacks",
            |c, _| {
                assert!(!c.open2(DstId::task(999)));
                c.add_f(DstId::task(999), 0x1000, 1, PageFlags::PARENT, &[]);
                drop(c.raw(&c.header(PsCommand::Close)));
            },
            "but there is no parent pagemap-999.img",
        ),
        case(
            "unsorted entries",
            |c, _| {
                c.open2(A);
                c.add_f(A, HEAP + 0x5000, 1, PageFlags::LAZY, &[]);
                c.add_f(A, HEAP, 1, PageFlags::LAZY, &[]);
            },
            "is below the previous entry's end 0x7f0000006000 (unsorted or overlapping)",
        ),
        case(
            "lazy GET inside a dump",
            |c, _| {
                c.open2(A);
                c.send(PsCommand::Get { pid: 100, vaddr: HEAP, nr_pages: 1 }, &[]);
            },
            "a dump session does not serve lazy pages",
        ),
        case(
            "EOF before CLOSE",
            |c, _| {
                c.open2(A);
                c.add_f(A, HEAP, 1, PageFlags::PRESENT, &pattern(4, 1));
            },
            "connection closed before CLOSE (after 2 commands and 4096 bytes of page data)",
        ),
    ]
}

fn assert_nothing_committed(root: &Path, after: &str) {
    assert_eq!(names(root), ["1", "last"], "after {after}");
    assert_eq!(fs::read_link(root.join("last")).unwrap(), Path::new("1"), "after {after}");
}

/// Session 1 (good), every bad case, then a good session 2 that continues the chain.
fn bad_sessions_between_good_ones(server_layout: LayoutChoice, layout: HeaderLayout) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let cases: Vec<Case> = cases().into_iter().filter(|c| c.only.is_none_or(|l| l == layout)).collect();
    let server = Server::start(&root, server_layout, cases.len() as u64 + 2);

    let mut c = Client::connect(server.addr, layout);
    assert!(!c.open2(A));
    c.add_f(A, HEAP, 2, PageFlags::PRESENT, &pattern(1, 2));
    assert_eq!(c.close(false), 0);
    assert_eq!(server.next().0, Some(1));

    for case in &cases {
        let mut c = Client::connect(server.addr, layout);
        (case.play)(&mut c, layout);
        let leftover = c.hang_up();
        assert!(leftover.is_empty(), "{}: the server answered {leftover:?} to a failed session", case.name);
        let (number, outcome) = server.next();
        // A session that fails before its first command is complete has no number yet.
        assert!(number.is_none_or(|n| n == 2), "{}: {number:?}", case.name);
        let err = outcome.err().unwrap_or_else(|| panic!("{}: the session was committed", case.name));
        assert!(err.contains(case.want), "{} ({layout:?}): error {err:?} does not say {:?}", case.name, case.want);
        assert_nothing_committed(&root, case.name);
    }

    let mut c = Client::connect(server.addr, layout);
    assert!(c.open2(A), "the good session after the bad ones still sees session 1 as parent");
    c.add_f(A, HEAP, 1, PageFlags::PARENT, &[]);
    c.add_f(A, HEAP + ps(), 1, PageFlags::PRESENT, &pattern(9, 1));
    assert_eq!(c.close(false), 0);
    let (number, outcome) = server.next();
    assert_eq!(number, Some(2));
    assert!(outcome.is_ok(), "{outcome:?}");
    let totals = server.join();
    assert_eq!((totals.committed, totals.failed), (2, cases.len() as u64));
    assert_eq!(names(&root), ["1", "2", "last"]);
    assert_eq!(fs::read_link(root.join("last")).unwrap(), Path::new("2"));
    ImageChain::open(&root.join("last"), None, ps()).unwrap().verify().unwrap();
}

#[test]
fn bad_input_detected_layout_24() {
    bad_sessions_between_good_ones(LayoutChoice::Detect, HeaderLayout::Legacy24);
}

#[test]
fn bad_input_detected_layout_32() {
    bad_sessions_between_good_ones(LayoutChoice::Detect, HeaderLayout::Wide32);
}

#[test]
fn bad_input_fixed_layout_24() {
    bad_sessions_between_good_ones(LayoutChoice::Fixed(HeaderLayout::Legacy24), HeaderLayout::Legacy24);
}

#[test]
fn bad_input_fixed_layout_32() {
    bad_sessions_between_good_ones(LayoutChoice::Fixed(HeaderLayout::Wide32), HeaderLayout::Wide32);
}

/// A client of the other layout than the one configured: refused, nothing committed, and the
/// next client of the right layout is served.
#[test]
fn mismatched_fixed_layout_is_refused_and_the_server_goes_on() {
    for (server, client, want) in [
        (HeaderLayout::Legacy24, HeaderLayout::Wide32, "unknown pagemap type 0 in dst_id 0x0 of OPEN2"),
        (HeaderLayout::Wide32, HeaderLayout::Legacy24, "unknown pagemap type 4 in dst_id 0x4 of OPEN2"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(tmp.path(), LayoutChoice::Fixed(server), 2);
        let mut c = Client::connect(srv.addr, client);
        let open2 = c.header(PsCommand::Open2 { dst: A });
        drop(c.raw(&[open2.clone(), open2].concat()));
        assert!(c.hang_up().is_empty());
        let (_, outcome) = srv.next();
        let err = outcome.expect_err("a mismatched layout must fail");
        assert!(err.contains(want), "{server:?} server, {client:?} client: {err:?}");
        assert!(names(tmp.path()).is_empty(), "nothing at all: {:?}", names(tmp.path()));

        let mut c = Client::connect(srv.addr, server);
        assert!(!c.open2(A));
        assert_eq!(c.close(false), 0);
        assert!(srv.next().1.is_ok());
        srv.join();
        assert_eq!(names(tmp.path()), ["1", "last"]);
    }
}
