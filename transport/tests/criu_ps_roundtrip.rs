//! Property tests of the page-server codec: every command and reply survives encode → arbitrary
//! chunking → decode, with its page data byte for byte, in both header layouts and with layout
//! detection.

use bytes::BytesMut;
use pagestream_engine::criu::PageFlags;
use pagestream_transport::criu_ps::{
    encode_command, encode_reply, ClientInput, CommandDecoder, DstId, HeaderLayout, LayoutChoice, ProtocolError,
    PsCommand, Reply, ReplyDecoder, ReplyKind, ServerInput,
};
use proptest::prelude::*;

const PS: u64 = 4096;

fn layout() -> impl Strategy<Value = HeaderLayout> {
    prop_oneof![Just(HeaderLayout::Legacy24), Just(HeaderLayout::Wide32)]
}

fn dst() -> impl Strategy<Value = DstId> {
    let id = prop_oneof![0u64..100_000, 0u64..(1 << 56)];
    (any::<bool>(), id).prop_map(|(task, id)| if task { DstId::task(id) } else { DstId::shmem(id) })
}

/// Page-aligned, below 2^47 (so no range wraps).
fn vaddr() -> impl Strategy<Value = u64> {
    (0u64..(1 << 35)).prop_map(|p| p * PS)
}

/// Counts of commands without data: anything a 24-byte header can carry.
fn big_count() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..64, 0..=u64::from(u32::MAX)]
}

/// A command other than CLOSE / FORCE_CLOSE, shaped as CRIU sends them (page-aligned
/// addresses; GET: 1..1024 pages at vaddr ≥ one page), which layout detection relies on.
fn command() -> impl Strategy<Value = PsCommand> {
    prop_oneof![
        (dst(), vaddr(), 0u64..4).prop_map(|(dst, vaddr, nr_pages)| PsCommand::Add { dst, vaddr, nr_pages }),
        (dst(), vaddr(), big_count()).prop_map(|(dst, vaddr, nr_pages)| PsCommand::Hole { dst, vaddr, nr_pages }),
        dst().prop_map(|dst| PsCommand::Open { dst }),
        dst().prop_map(|dst| PsCommand::Open2 { dst }),
        dst().prop_map(|dst| PsCommand::Parent { dst }),
        (dst(), vaddr(), 0u64..4, big_count(), 0u32..=0xFFFF).prop_map(|(dst, vaddr, small, big, flags)| {
            let flags = PageFlags(flags);
            let nr_pages = if flags.is_present() { small } else { big };
            PsCommand::AddF { dst, vaddr, nr_pages, flags }
        }),
        (any::<u64>(), 1u64..(1 << 35), 1u64..1024).prop_map(|(pid, page, nr_pages)| PsCommand::Get {
            pid,
            vaddr: page * PS,
            nr_pages
        }),
    ]
}

fn session() -> impl Strategy<Value = Vec<PsCommand>> {
    let end = prop_oneof![Just(None), Just(Some(PsCommand::Close)), Just(Some(PsCommand::ForceClose))];
    (prop::collection::vec(command(), 0..8), end).prop_map(|(mut cmds, end)| {
        cmds.extend(end);
        cmds
    })
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..=40, 1usize..=10_000], 1..20)
}

/// Deterministic page data, different for every command and offset.
fn payload(seed: u64, index: usize, len: u64) -> Vec<u8> {
    let mut x = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Feeds `wire` in pieces of the given sizes (cycled) and collects every output.
fn feed<T>(
    wire: &[u8],
    sizes: &[usize],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtocolError>,
) -> Result<Vec<T>, ProtocolError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    for size in sizes.iter().cycle() {
        if pos >= wire.len() {
            break;
        }
        let end = (pos + size).min(wire.len());
        buf.extend_from_slice(&wire[pos..end]);
        pos = end;
        while let Some(item) = decode(&mut buf)? {
            out.push(item);
        }
    }
    Ok(out)
}

/// Groups decoder output into (command, its page data), checking chunks are non-empty.
fn group_server(inputs: Vec<ServerInput>) -> Vec<(PsCommand, Vec<u8>)> {
    let mut out: Vec<(PsCommand, Vec<u8>)> = Vec::new();
    for input in inputs {
        match input {
            ServerInput::Command(c) => out.push((c, Vec::new())),
            ServerInput::PageData(d) => {
                assert!(!d.is_empty(), "empty page-data chunk");
                out.last_mut().expect("page data before any command").1.extend_from_slice(&d);
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn commands_round_trip(layout in layout(), cmds in session(), sizes in chunks(), seed in any::<u64>()) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            encode_command(c, layout, &mut wire).unwrap();
            let data = payload(seed, i, c.payload_len(PS).unwrap());
            wire.extend_from_slice(&data);
            expected.push((*c, data));
        }
        for choice in [LayoutChoice::Fixed(layout), LayoutChoice::Detect] {
            let mut dec = CommandDecoder::new(choice, PS).unwrap();
            let got = feed(&wire, &sizes, |buf| dec.decode(buf)).unwrap();
            prop_assert_eq!(&group_server(got), &expected);
            prop_assert_eq!(dec.finish(), Ok(()));
            prop_assert_eq!(dec.payload_remaining(), 0);
            prop_assert_eq!(dec.commands_decoded(), cmds.len() as u64);
            if let Some(first) = cmds.first() {
                let detected = match first {
                    PsCommand::Close | PsCommand::ForceClose => HeaderLayout::Legacy24,
                    _ => layout,
                };
                let want = if choice == LayoutChoice::Detect { detected } else { layout };
                prop_assert_eq!(dec.layout(), Some(want));
            }
        }
    }

    #[test]
    fn replies_round_trip(
        layout in layout(),
        items in prop::collection::vec(reply_item(), 0..8),
        sizes in chunks(),
        seed in any::<u64>(),
    ) {
        let mut wire = BytesMut::new();
        let mut dec = ReplyDecoder::new(layout, PS).unwrap();
        let mut expected = Vec::new();
        for (i, (kind, reply)) in items.iter().enumerate() {
            dec.expect(*kind);
            encode_reply(reply, layout, PS, &mut wire).unwrap();
            let data = payload(seed, i, reply.payload_len(PS).unwrap());
            wire.extend_from_slice(&data);
            expected.push((*reply, data));
        }
        let got = feed(&wire, &sizes, |buf| dec.decode(buf)).unwrap();
        let mut grouped: Vec<(Reply, Vec<u8>)> = Vec::new();
        for input in got {
            match input {
                ClientInput::Reply(r) => grouped.push((r, Vec::new())),
                ClientInput::PageData(d) => {
                    prop_assert!(!d.is_empty());
                    grouped.last_mut().expect("page data before any reply").1.extend_from_slice(&d);
                }
            }
        }
        prop_assert_eq!(grouped, expected);
        prop_assert_eq!(dec.outstanding(), 0);
        prop_assert_eq!(dec.finish(), Ok(()));
    }
}

/// A reply the client waits for, and the reply the server sends.
fn reply_item() -> impl Strategy<Value = (ReplyKind, Reply)> {
    prop_oneof![
        any::<bool>().prop_map(|has_parent| (ReplyKind::Open2, Reply::Open2 { has_parent })),
        any::<bool>().prop_map(|has_parent| (ReplyKind::Parent, Reply::Parent { has_parent })),
        any::<i32>().prop_map(|status| (ReplyKind::Close, Reply::Close { status })),
        (any::<u64>(), vaddr(), 1u64..=4)
            .prop_flat_map(|(pid, vaddr, requested)| (Just(pid), Just(vaddr), Just(requested), 1..=requested))
            .prop_map(|(pid, vaddr, requested, k)| {
                (ReplyKind::Get { pid, vaddr, nr_pages: requested }, Reply::Get { pid, vaddr, nr_pages: k })
            }),
    ]
}
