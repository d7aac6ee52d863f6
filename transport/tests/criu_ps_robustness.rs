//! Property tests feeding the page-server decoders hostile input: random bytes, and valid
//! streams with random bytes overwritten. Errors are fine; panics, oversized or empty data chunks,
//! and an error that does not stick are not.

use bytes::BytesMut;
use pagestream_transport::criu_ps::{
    ClientInput, CommandDecoder, HeaderLayout, LayoutChoice, ProtocolError, RawIov, ReplyDecoder, ReplyKind,
    ServerInput,
};
use proptest::prelude::*;

fn choice() -> impl Strategy<Value = LayoutChoice> {
    prop_oneof![
        Just(LayoutChoice::Detect),
        Just(LayoutChoice::Fixed(HeaderLayout::Legacy24)),
        Just(LayoutChoice::Fixed(HeaderLayout::Wide32)),
    ]
}

fn page_size() -> impl Strategy<Value = u64> {
    prop_oneof![Just(256u64), Just(4096)]
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=64, 1..16)
}

/// Headers that are often almost valid: known commands, small counts, real pagemap types.
fn raw_header() -> impl Strategy<Value = RawIov> {
    let cmd = prop_oneof![
        (0u32..=8, 0u32..=7).prop_map(|(c, f)| (f << 16) | c),
        Just(0x1023u32),
        Just(0x1024u32),
        any::<u32>(),
    ];
    let nr_pages = prop_oneof![0u64..4, any::<u64>()];
    let ty = prop_oneof![Just(1u64), Just(2), Just(10), Just(34), 0u64..=255];
    (cmd, nr_pages, any::<u64>(), 0u64..1000, ty).prop_map(|(cmd, nr_pages, vaddr, id, ty)| RawIov {
        cmd,
        nr_pages,
        vaddr: vaddr & !0xFFF,
        dst_id: (id << 8) | ty,
    })
}

/// Decodes `wire` in pieces, checking the invariants; returns the first error, if any.
fn run_server(mut dec: CommandDecoder, wire: &[u8], sizes: &[usize]) -> Result<(), ProtocolError> {
    let page_size = dec.page_size();
    let mut buf = BytesMut::new();
    let mut owed = 0u64;
    let mut result = Ok(());
    let mut pos = 0;
    'outer: for size in sizes.iter().cycle() {
        if pos >= wire.len() {
            break;
        }
        let end = (pos + size).min(wire.len());
        buf.extend_from_slice(&wire[pos..end]);
        pos = end;
        loop {
            match dec.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(ServerInput::Command(c))) => {
                    assert_eq!(owed, 0, "command before the previous payload ended");
                    owed = c.payload_len(page_size).expect("decoder accepted an overflowing count");
                    assert_eq!(dec.payload_remaining(), owed);
                }
                Ok(Some(ServerInput::PageData(d))) => {
                    assert!(!d.is_empty(), "empty chunk");
                    assert!(d.len() as u64 <= owed, "chunk of {} bytes, only {owed} owed", d.len());
                    owed -= d.len() as u64;
                    assert_eq!(dec.payload_remaining(), owed);
                }
                Err(err) => {
                    assert_eq!(dec.decode(&mut buf), Err(err.clone()), "error did not stick");
                    assert_eq!(dec.finish(), Err(err.clone()));
                    result = Err(err);
                    break 'outer;
                }
            }
        }
    }
    if result.is_ok() {
        let _ = dec.finish();
    }
    result
}

fn run_client(mut dec: ReplyDecoder, wire: &[u8], size: usize) {
    let page_size = dec.page_size();
    let mut buf = BytesMut::new();
    let mut owed = 0u64;
    for piece in wire.chunks(size) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(ClientInput::Reply(r))) => {
                    assert_eq!(owed, 0);
                    owed = r.payload_len(page_size).expect("decoder accepted an overflowing count");
                }
                Ok(Some(ClientInput::PageData(d))) => {
                    assert!(!d.is_empty() && d.len() as u64 <= owed);
                    owed -= d.len() as u64;
                }
                Err(err) => {
                    assert_eq!(dec.decode(&mut buf), Err(err.clone()), "error did not stick");
                    assert_eq!(dec.finish(), Err(err));
                    return;
                }
            }
        }
    }
    let _ = dec.finish();
}

fn reply_kind() -> impl Strategy<Value = ReplyKind> {
    prop_oneof![
        Just(ReplyKind::Open2),
        Just(ReplyKind::Parent),
        Just(ReplyKind::Close),
        (any::<u64>(), any::<u64>(), prop_oneof![0u64..4, any::<u64>()])
            .prop_map(|(pid, vaddr, nr_pages)| ReplyKind::Get { pid, vaddr, nr_pages }),
    ]
}

proptest! {
    #[test]
    fn command_decoder_survives_random_bytes(
        choice in choice(),
        page_size in page_size(),
        wire in prop::collection::vec(any::<u8>(), 0..600),
        sizes in chunks(),
    ) {
        let _ = run_server(CommandDecoder::new(choice, page_size).unwrap(), &wire, &sizes);
    }

    #[test]
    fn command_decoder_survives_mangled_headers(
        choice in choice(),
        page_size in page_size(),
        layout in prop_oneof![Just(HeaderLayout::Legacy24), Just(HeaderLayout::Wide32)],
        headers in prop::collection::vec((raw_header(), prop::collection::vec(any::<u8>(), 0..300)), 1..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        sizes in chunks(),
        max in prop_oneof![Just(u64::MAX), 0u64..8],
    ) {
        let mut wire = BytesMut::new();
        for (raw, tail) in &headers {
            let mut raw = *raw;
            if layout == HeaderLayout::Legacy24 {
                raw.nr_pages &= u64::from(u32::MAX);
            }
            raw.encode(layout, &mut wire).unwrap();
            wire.extend_from_slice(tail);
        }
        for (at, byte) in &flips {
            let i = at.index(wire.len());
            wire[i] = *byte;
        }
        let dec = CommandDecoder::new(choice, page_size).unwrap().with_max_pages_per_command(max);
        let _ = run_server(dec, &wire, &sizes);
    }

    #[test]
    fn reply_decoder_survives_random_bytes(
        layout in prop_oneof![Just(HeaderLayout::Legacy24), Just(HeaderLayout::Wide32)],
        page_size in page_size(),
        kinds in prop::collection::vec(reply_kind(), 0..6),
        wire in prop::collection::vec(any::<u8>(), 0..600),
        size in 1usize..64,
    ) {
        let mut dec = ReplyDecoder::new(layout, page_size).unwrap();
        for kind in kinds {
            dec.expect(kind);
        }
        run_client(dec, &wire, size);
    }

    #[test]
    fn reply_decoder_survives_mangled_get_replies(
        layout in prop_oneof![Just(HeaderLayout::Legacy24), Just(HeaderLayout::Wide32)],
        requests in prop::collection::vec((0u64..4, 0u64..1000, 1u64..4, 0u64..5), 1..5),
        tail in prop::collection::vec(any::<u8>(), 0..2000),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        size in 1usize..700,
    ) {
        let mut dec = ReplyDecoder::new(layout, 256).unwrap();
        let mut wire = BytesMut::new();
        for &(pid, page, requested, sent) in &requests {
            let vaddr = page * 256;
            dec.expect(ReplyKind::Get { pid, vaddr, nr_pages: requested });
            let raw = RawIov { cmd: 0x0004_0006, nr_pages: sent, vaddr, dst_id: pid };
            raw.encode(layout, &mut wire).unwrap();
            wire.extend_from_slice(&vec![0x5A; (sent * 256) as usize]);
        }
        wire.extend_from_slice(&tail);
        for (at, byte) in &flips {
            let i = at.index(wire.len());
            wire[i] = *byte;
        }
        run_client(dec, &wire, size);
    }
}
