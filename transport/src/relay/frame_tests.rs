//! Tests of the relay frame codec: round trips of every frame (proptest, split at every
//! boundary), the zero / LZ4 / raw choice, length and content checks, and no panic on arbitrary
//! bytes.

use super::*;
use crate::criu_ps::DstId;
use pagestream_engine::criu::PageFlags;
use proptest::prelude::*;

fn encode_all(frames: &[RelayFrame]) -> BytesMut {
    let mut enc = FrameEncoder::new(true);
    let mut out = BytesMut::new();
    for f in frames {
        enc.encode(f, &mut out).unwrap();
    }
    out
}

fn decode_all(mut buf: BytesMut) -> Result<Vec<RelayFrame>, FrameError> {
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    while let Some(f) = dec.decode(&mut buf)? {
        got.push(f);
    }
    dec.finish()?;
    Ok(got)
}

fn arb_dst() -> impl Strategy<Value = DstId> {
    (any::<bool>(), 0u64..(1 << 56)).prop_map(|(task, id)| if task { DstId::task(id) } else { DstId::shmem(id) })
}

fn arb_command() -> impl Strategy<Value = PsCommand> {
    prop_oneof![
        (arb_dst(), any::<u64>(), any::<u64>()).prop_map(|(dst, vaddr, nr_pages)| PsCommand::Add {
            dst,
            vaddr,
            nr_pages
        }),
        (arb_dst(), any::<u64>(), any::<u64>()).prop_map(|(dst, vaddr, nr_pages)| PsCommand::Hole {
            dst,
            vaddr,
            nr_pages
        }),
        arb_dst().prop_map(|dst| PsCommand::Open { dst }),
        arb_dst().prop_map(|dst| PsCommand::Open2 { dst }),
        arb_dst().prop_map(|dst| PsCommand::Parent { dst }),
        (arb_dst(), any::<u64>(), any::<u64>(), 0u32..0x10000)
            .prop_map(|(dst, vaddr, nr_pages, f)| { PsCommand::AddF { dst, vaddr, nr_pages, flags: PageFlags(f) } }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(pid, vaddr, nr_pages)| PsCommand::Get {
            pid,
            vaddr,
            nr_pages
        }),
        Just(PsCommand::Close),
        Just(PsCommand::ForceClose),
    ]
}

/// Page-like data: zero, compressible, or random.
fn arb_chunk() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        (1usize..20_000).prop_map(|n| Bytes::from(vec![0u8; n])),
        (1usize..20_000, any::<u8>())
            .prop_map(|(n, s)| Bytes::from((0..n).map(|i| s ^ (i % 7) as u8).collect::<Vec<_>>())),
        proptest::collection::vec(any::<u8>(), 1..5000).prop_map(Bytes::from),
    ]
}

fn arb_frame() -> impl Strategy<Value = RelayFrame> {
    prop_oneof![
        (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(version, page_size, flags)| RelayFrame::Begin {
            version,
            page_size,
            flags
        }),
        ("[a-z0-9.-]{1,255}", any::<u64>()).prop_map(|(name, size)| RelayFrame::File { name, size }),
        Just(RelayFrame::Commit),
        arb_command().prop_map(RelayFrame::Command),
        arb_chunk().prop_map(RelayFrame::Data),
        "\\PC{0,200}".prop_map(|reason| RelayFrame::Abort { reason }),
        "\\PC{0,200}".prop_map(|reason| RelayFrame::Failed { reason }),
        proptest::collection::vec(any::<u8>(), 1..=MAX_REPLY).prop_map(|r| RelayFrame::Reply(Bytes::from(r))),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..=MAX_REPLY))
            .prop_map(|(session, r)| RelayFrame::Committed { session, reply: Bytes::from(r) }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(arb_frame(), 0..12)) {
        prop_assert_eq!(decode_all(encode_all(&frames)).unwrap(), frames);
    }

    #[test]
    fn frames_round_trip_fed_in_pieces(frames in proptest::collection::vec(arb_frame(), 1..6), step in 1usize..97) {
        let bytes = encode_all(&frames);
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in bytes.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        dec.finish().unwrap();
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = dec.decode(&mut buf) {}
        let _ = dec.finish();
    }

    #[test]
    fn corrupted_frames_never_panic(frames in proptest::collection::vec(arb_frame(), 1..4), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = encode_all(&frames);
        let at = at % bytes.len();
        bytes[at] = byte;
        let _ = decode_all(bytes);
    }
}

#[test]
fn data_picks_zero_lz4_or_raw() {
    let mut enc = FrameEncoder::new(true);
    let mut out = BytesMut::new();
    assert_eq!(enc.encode_data(&[0u8; 8192], &mut out).unwrap(), ChunkEncoding::Zero);
    assert_eq!(out.len(), FRAME_HEADER_LEN + DATA_HEAD, "a zero chunk has no payload");
    out.clear();
    let text: Vec<u8> = (0..8192).map(|i| b"pagestream "[i % 11]).collect();
    assert_eq!(enc.encode_data(&text, &mut out).unwrap(), ChunkEncoding::Lz4);
    assert!(out.len() < 1000, "{}", out.len());
    out.clear();
    let mut x = 0x1234_5678u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    assert_eq!(enc.encode_data(&noise, &mut out).unwrap(), ChunkEncoding::Raw);
    assert_eq!(out.len(), FRAME_HEADER_LEN + DATA_HEAD + 4096);
    let mut plain = FrameEncoder::new(false);
    out.clear();
    assert_eq!(plain.encode_data(&text, &mut out).unwrap(), ChunkEncoding::Raw);
    assert!(enc.encode_data(&[], &mut out).is_err());
    assert!(enc.encode_data(&vec![1u8; MAX_CHUNK + 1], &mut out).is_err());
}

fn frame(ty: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    put_header(&mut out, ty, body.len());
    out.put_slice(body);
    out
}

fn data_body(encoding: u8, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![encoding];
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn bad_frames_are_refused_with_their_reason() {
    let err = |b: BytesMut| decode_all(b).unwrap_err().to_string();
    assert_eq!(err(frame(0x7f, &[])), "unknown relay frame type 0x7f");
    assert!(err(frame(BEGIN, &[0; 12])).contains("Begin frame body of 12 bytes"), "a version 1 Begin");
    assert!(err(frame(FILE, &[0; 8])).contains("File frame body of 8 bytes"), "a file needs a name");
    assert!(err(frame(FILE, &[0, 0, 0, 0, 0, 0, 0, 0, 0xff])).contains("not UTF-8"));
    assert!(err(frame(COMMIT, &[0])).contains("Commit frame body of 1 bytes"));
    let mut huge = BytesMut::new();
    put_header(&mut huge, DATA, DATA_HEAD + MAX_CHUNK + 1);
    assert!(err(huge).contains("Data frame body of 1048582 bytes"), "checked before any payload arrives");
    assert!(err(frame(DATA, &data_body(0, 4096, &[1]))).contains("zero chunk of 4096 bytes with 1 bytes"));
    assert!(err(frame(DATA, &data_body(1, 4096, &[1; 10]))).contains("raw chunk"));
    assert!(err(frame(DATA, &data_body(0, 0, &[]))).contains("chunk of 0 bytes"));
    assert!(err(frame(DATA, &data_body(9, 1, &[1]))).contains("unknown encoding 9"));
    assert!(err(frame(DATA, &data_body(2, 4096, &[0xff; 8]))).contains("LZ4"));
    assert!(err(frame(REPLY, &[])).contains("Reply frame body of 0 bytes"));
    assert!(err(frame(FAILED, &[0xff, 0xfe])).contains("not UTF-8"));
    let mut unknown = vec![0u8; COMMAND_BODY];
    unknown[0] = 0x99;
    assert!(err(frame(COMMAND, &unknown)).contains("unknown page-server command 0x99"));
    let mut cut = encode_all(&[RelayFrame::Begin { version: 2, page_size: 4096, flags: 0 }]);
    cut.truncate(10);
    assert_eq!(decode_all(cut).unwrap_err(), FrameError::Truncated { got: 10, need: 21 });
}

#[test]
fn a_failed_decoder_stays_failed() {
    let mut dec = FrameDecoder::new();
    let mut buf = frame(0x7f, &[]);
    assert!(dec.decode(&mut buf).is_err());
    let mut good = encode_all(&[RelayFrame::Command(PsCommand::Close)]);
    assert!(dec.decode(&mut good).is_err());
    assert!(dec.finish().is_err());
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let mut enc = FrameEncoder::new(true);
    let mut out = BytesMut::new();
    assert!(enc.encode(&RelayFrame::Reply(Bytes::new()), &mut out).is_err());
    let long = "x".repeat(MAX_REASON + 1);
    assert!(enc.encode(&RelayFrame::Abort { reason: long.clone() }, &mut out).is_err());
    assert!(enc.encode(&RelayFrame::File { name: String::new(), size: 1 }, &mut out).is_err());
    assert!(enc.encode(&RelayFrame::File { name: "x".repeat(MAX_FILE_NAME + 1), size: 1 }, &mut out).is_err());
    assert!(out.is_empty(), "nothing written on error");
    assert_eq!(bounded_reason(&long).len(), MAX_REASON);
    assert_eq!(bounded_reason(&"é".repeat(MAX_REASON)).len(), MAX_REASON);
    let wide = PsCommand::Open2 { dst: DstId::task(1 << 56) };
    assert!(enc.encode(&RelayFrame::Command(wide), &mut out).is_err());
}
