//! Round trips of pagestream's wire codec (proptest): every control frame, run headers, and
//! runs of random, text-like and zero pages through the encoder and the streaming decoders, fed
//! in random-sized pieces. Also checks the encoder's choice: LZ4 only when it shrinks the run.

use bytes::BytesMut;
use pagestream_engine::criu::PagemapId;
use pagestream_engine::PageRun;
use pagestream_transport::wire::{
    encode_control, Codecs, ControlDecoder, ControlFrame, DataDecoder, DataLimits, DataRun, Encoding, Hello,
    RunContent, RunEncoder, RunHeader, StatsReport, MAX_STRING_LEN, PROTOCOL_VERSION, RUN_HEADER_LEN,
};
use proptest::prelude::*;

fn pagemap() -> impl Strategy<Value = PagemapId> {
    prop_oneof![any::<u64>().prop_map(PagemapId::Task), any::<u64>().prop_map(PagemapId::Shmem)]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,64}",
        Just(String::new()),
        Just("é".repeat(MAX_STRING_LEN / 2)),
        Just("x".repeat(MAX_STRING_LEN)),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (8u32..=20, any::<u8>(), any::<u32>(), any::<[u8; 16]>())
        .prop_map(|(shift, codecs, max, id)| Hello::new(1u64 << shift, Codecs::from_bits_truncate(codecs), max, id))
}

fn control_frame() -> impl Strategy<Value = ControlFrame> {
    prop_oneof![
        hello().prop_map(ControlFrame::Hello),
        text().prop_map(|reason| ControlFrame::Reject { reason }),
        any::<u32>().prop_map(|round| ControlFrame::RoundBegin { round }),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(round, data_pages, zero_pages, digest)| {
            ControlFrame::RoundEnd { round, data_pages, zero_pages, digest }
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(round, commit_ms)| ControlFrame::RoundAck { round, commit_ms }),
        (any::<u32>(), any::<u64>())
            .prop_map(|(final_round, total_pages)| ControlFrame::Commit { final_round, total_pages }),
        (text(), any::<u64>()).prop_map(|(location, pages)| ControlFrame::CommitAck { location, pages }),
        any::<[u64; 4]>().prop_map(|v| ControlFrame::Stats(StatsReport {
            raw_bytes: v[0],
            wire_bytes: v[1],
            data_pages: v[2],
            zero_pages: v[3],
        })),
        text().prop_map(|reason| ControlFrame::Abort { reason }),
    ]
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=300, 1..12)
}

/// Feeds `wire` in pieces of the given sizes (cycled) and collects what `decode` yields.
fn feed<T, E: std::fmt::Debug>(
    wire: &[u8],
    sizes: &[usize],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
) -> Vec<T> {
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
        while let Some(item) = decode(&mut buf).expect("valid stream decodes") {
            out.push(item);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

#[derive(Debug, Clone)]
enum Fill {
    Random(u64),
    Text,
    Zeros,
    ZeroRun,
}

fn fill() -> impl Strategy<Value = Fill> {
    prop_oneof![any::<u64>().prop_map(Fill::Random), Just(Fill::Text), Just(Fill::Zeros), Just(Fill::ZeroRun)]
}

fn page_bytes(fill: &Fill, len: usize) -> Vec<u8> {
    match fill {
        Fill::Random(seed) => {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
        Fill::Text => b"the quick brown fox jumps over the lazy dog; ".iter().copied().cycle().take(len).collect(),
        Fill::Zeros | Fill::ZeroRun => vec![0; len],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn control_frames_round_trip(frames in prop::collection::vec(control_frame(), 1..8), sizes in pieces()) {
        let mut wire = BytesMut::new();
        for f in &frames {
            encode_control(f, &mut wire).unwrap();
        }
        let mut dec = ControlDecoder::new();
        let got = feed(&wire, &sizes, |b| dec.decode(b));
        prop_assert_eq!(got, frames);
        prop_assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn run_headers_round_trip(round in any::<u32>(), pm in pagemap(), vaddr in any::<u64>(), nr in any::<u32>(),
                              enc in 0u8..4, payload_len in any::<u32>()) {
        let encoding = Encoding::from_byte(enc).unwrap();
        let h = RunHeader { round, pagemap: pm, vaddr, nr_pages: nr, encoding, payload_len };
        let mut out = BytesMut::new();
        h.encode(&mut out);
        prop_assert_eq!(out.len(), RUN_HEADER_LEN);
        let mut fixed = [0u8; RUN_HEADER_LEN];
        fixed.copy_from_slice(&out);
        prop_assert_eq!(RunHeader::decode(&fixed), Ok(h));
    }

    #[test]
    fn runs_round_trip(
        runs in prop::collection::vec((any::<u32>(), pagemap(), 0u64..1 << 30, 1u64..=16, fill()), 1..10),
        lz4 in any::<bool>(),
        page_shift in prop_oneof![Just(12u32), Just(8), Just(14)],
        sizes in prop::collection::vec(1usize..=20_000, 1..12),
    ) {
        let ps = 1u64 << page_shift;
        let codecs = if lz4 { Codecs::ALL } else { Codecs::RAW };
        let limits = DataLimits::new(ps, 16, codecs).unwrap();
        let mut enc = RunEncoder::new(limits);
        let mut wire = BytesMut::new();
        let mut want = Vec::new();
        for (round, pm, page, nr, fill) in &runs {
            let run = PageRun::new(page * ps, *nr);
            let data = page_bytes(fill, (nr * ps) as usize);
            let frame = match fill {
                Fill::ZeroRun => enc.encode_zero(*round, *pm, run).unwrap(),
                _ => enc.encode_pages(*round, *pm, run, &data).unwrap(),
            };
            wire.extend_from_slice(&frame);
            let content = match fill { Fill::ZeroRun => RunContent::Zero, _ => RunContent::Data(data.into()) };
            want.push((*round, *pm, run, content, frame.len() as u64));
        }
        let mut dec = DataDecoder::new(limits);
        let got: Vec<DataRun> = feed(&wire, &sizes, |b| dec.decode(b));
        prop_assert_eq!(got.len(), want.len());
        for (g, (round, pm, run, content, wire_len)) in got.iter().zip(want) {
            prop_assert_eq!(g.round, round);
            prop_assert_eq!(g.pagemap, pm);
            prop_assert_eq!(g.run, run);
            prop_assert_eq!(g.wire_len, wire_len);
            match (&g.content, &content) {
                (RunContent::Zero, RunContent::Zero) => prop_assert_eq!(g.encoding, Encoding::Zero),
                (RunContent::Data(a), RunContent::Data(b)) => {
                    prop_assert!(a == b, "page data differs for {:?}", run);
                    if !lz4 {
                        prop_assert_eq!(g.encoding, Encoding::Raw);
                    }
                    // LZ4 is used only when it shrinks the run.
                    if g.encoding == Encoding::Lz4 {
                        prop_assert!(wire_len < run.nr_pages * ps + 35);
                    }
                }
                (a, b) => prop_assert!(false, "content kind differs: {:?} vs {:?}", a, b),
            }
        }
        prop_assert_eq!(dec.finish(), Ok(()));
        prop_assert_eq!(dec.runs_decoded(), runs.len() as u64);
    }
}

#[test]
fn encoder_picks_lz4_for_text_and_raw_for_noise() {
    let ps = 4096;
    let mut enc = RunEncoder::new(DataLimits::new(ps, 1024, Codecs::ALL).unwrap());
    let run = PageRun::new(0x7f00_0000_0000, 4);
    let mut dec = DataDecoder::new(*enc.limits());
    for (fill, want) in [(Fill::Text, Encoding::Lz4), (Fill::Zeros, Encoding::Lz4), (Fill::Random(7), Encoding::Raw)] {
        let data = page_bytes(&fill, 4 * ps as usize);
        let frame = enc.encode_pages(1, PagemapId::Task(1), run, &data).unwrap();
        let mut buf = BytesMut::from(&frame[..]);
        let decoded = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(decoded.encoding, want, "{fill:?}");
        assert_eq!(decoded.content, RunContent::Data(data.into()));
        if want == Encoding::Raw {
            assert_eq!(frame.len(), 5 + RUN_HEADER_LEN + 4 * ps as usize);
        } else {
            assert!(frame.len() < 4 * ps as usize / 4, "{fill:?} compressed to {}", frame.len());
        }
    }
}

#[test]
fn hello_carries_this_protocol_version() {
    let h = Hello::new(4096, Codecs::ALL, 1024, [1; 16]);
    assert_eq!(h.version, PROTOCOL_VERSION);
    let mut wire = BytesMut::new();
    encode_control(&ControlFrame::Hello(h), &mut wire).unwrap();
    assert_eq!(wire[0], 0x01);
    assert_eq!(&wire[5..9], b"PGST");
}

#[test]
fn a_discard_round_trips_and_carries_no_payload() {
    let ps = 4096;
    let limits = DataLimits::new(ps, 16, Codecs::ALL).unwrap();
    let mut enc = RunEncoder::new(limits);
    let mut wire = BytesMut::new();
    let run = PageRun::new(0x10_0000, 3);
    enc.encode_discard_into(4, PagemapId::Task(9), run, &mut wire).unwrap();
    let mut dec = DataDecoder::new(limits);
    let got = dec.decode(&mut wire).unwrap().expect("a frame");
    assert_eq!((got.round, got.run, got.content, got.encoding), (4, run, RunContent::Discard, Encoding::Discard));

    let h = RunHeader {
        round: 0,
        pagemap: PagemapId::Task(9),
        vaddr: 0,
        nr_pages: 1,
        encoding: Encoding::Discard,
        payload_len: 1,
    };
    let mut bad = BytesMut::new();
    bad.extend_from_slice(&[0x20]);
    bad.extend_from_slice(&((RUN_HEADER_LEN + 1) as u32).to_le_bytes());
    h.encode(&mut bad);
    bad.extend_from_slice(&[0]);
    let err = DataDecoder::new(limits).decode(&mut bad).unwrap_err();
    assert!(err.to_string().contains("a discard has no payload"), "{err}");
}
