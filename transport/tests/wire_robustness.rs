//! Hostile input for pagestream's wire decoders (proptest): random bytes, valid streams with
//! bytes overwritten, and well-formed run headers with random LZ4 payloads, fed in random
//! pieces. Errors are fine; panics are not, nor a decoded run whose data is not exactly its
//! size, nor an error that does not stick.

use bytes::BytesMut;
use pagestream_engine::criu::PagemapId;
use pagestream_engine::PageRun;
use pagestream_transport::wire::{
    encode_control, Codecs, ControlDecoder, ControlFrame, DataDecoder, DataLimits, Encoding, RunContent, RunEncoder,
    RunHeader, WireError,
};
use proptest::prelude::*;

const PS: u64 = 4096;

fn limits(codecs: Codecs) -> DataLimits {
    DataLimits::new(PS, 8, codecs).unwrap()
}

fn codecs() -> impl Strategy<Value = Codecs> {
    prop_oneof![Just(Codecs::ALL), Just(Codecs::RAW), Just(Codecs::LZ4)]
}

/// Feeds `wire` in pieces to the data decoder, checking every run; returns the first error.
fn run_data(limits: DataLimits, wire: &[u8], sizes: &[usize]) -> Result<usize, WireError> {
    let mut dec = DataDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut pos = 0;
    let mut runs = 0;
    for size in sizes.iter().cycle() {
        if pos >= wire.len() {
            break;
        }
        let end = (pos + size).min(wire.len());
        buf.extend_from_slice(&wire[pos..end]);
        pos = end;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(run)) => {
                    runs += 1;
                    assert!(run.run.nr_pages >= 1 && run.run.nr_pages <= 8);
                    assert_eq!(run.run.vaddr % PS, 0);
                    match run.content {
                        RunContent::Data(d) => assert_eq!(d.len() as u64, run.run.nr_pages * PS),
                        RunContent::Zero => assert_eq!(run.encoding, Encoding::Zero),
                        RunContent::Discard => assert_eq!(run.encoding, Encoding::Discard),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(dec.decode(&mut buf), Err(e.clone()), "errors stick");
                    assert_eq!(dec.finish(), Err(e.clone()));
                    return Err(e);
                }
            }
        }
    }
    dec.finish().map(|()| runs)
}

fn run_control(wire: &[u8], sizes: &[usize]) -> Result<usize, WireError> {
    let mut dec = ControlDecoder::new();
    let mut buf = BytesMut::new();
    let mut pos = 0;
    for size in sizes.iter().cycle() {
        if pos >= wire.len() {
            break;
        }
        let end = (pos + size).min(wire.len());
        buf.extend_from_slice(&wire[pos..end]);
        pos = end;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(dec.decode(&mut buf), Err(e.clone()), "errors stick");
                    return Err(e);
                }
            }
        }
    }
    dec.finish().map(|()| dec.frames_decoded() as usize)
}

fn valid_data_stream() -> Vec<u8> {
    let mut enc = RunEncoder::new(limits(Codecs::ALL));
    let mut wire = Vec::new();
    let text: Vec<u8> = b"pagestream ".iter().copied().cycle().take(3 * PS as usize).collect();
    let noise: Vec<u8> = (0..2 * PS as usize).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    wire.extend_from_slice(&enc.encode_pages(1, PagemapId::Task(9), PageRun::new(0x10000, 3), &text).unwrap());
    wire.extend_from_slice(&enc.encode_zero(1, PagemapId::Shmem(2), PageRun::new(0, 8)).unwrap());
    wire.extend_from_slice(&enc.encode_pages(2, PagemapId::Task(9), PageRun::new(0x40000, 2), &noise).unwrap());
    wire
}

fn valid_control_stream() -> Vec<u8> {
    let mut wire = BytesMut::new();
    for f in [
        ControlFrame::RoundBegin { round: 0 },
        ControlFrame::RoundEnd { round: 0, data_pages: 10, zero_pages: 2, digest: 0x1234 },
        ControlFrame::CommitAck { location: "/tmp/x".into(), pages: 12 },
        ControlFrame::Abort { reason: "because".into() },
    ] {
        encode_control(&f, &mut wire).unwrap();
    }
    wire.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096),
                                sizes in prop::collection::vec(1usize..=64, 1..16), c in codecs()) {
        let _ = run_data(limits(c), &bytes, &sizes);
        let _ = run_control(&bytes, &sizes);
    }

    #[test]
    fn random_bytes_behind_a_run_frame_type_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..256), len in any::<u32>(), c in codecs()) {
        let mut wire = vec![0x20];
        wire.extend_from_slice(&len.to_le_bytes());
        wire.extend_from_slice(&body);
        let _ = run_data(limits(c), &wire, &[wire.len()]);
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        sizes in prop::collection::vec(1usize..=5000, 1..8), c in codecs()) {
        for valid in [valid_data_stream(), valid_control_stream()] {
            let mut wire = valid.clone();
            for (at, byte) in &edits {
                let i = at.index(wire.len());
                wire[i] = *byte;
            }
            let _ = run_data(limits(c), &wire, &sizes);
            let _ = run_control(&wire, &sizes);
        }
    }

    #[test]
    fn random_lz4_payloads_never_panic(nr in 1u32..=8, payload in prop::collection::vec(any::<u8>(), 1..2048),
                                       vpage in 0u64..1 << 20) {
        let h = RunHeader { round: 1, pagemap: PagemapId::Task(1), vaddr: vpage * PS, nr_pages: nr,
                            encoding: Encoding::Lz4, payload_len: payload.len() as u32 };
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[0x20]);
        wire.extend_from_slice(&(30 + payload.len() as u32).to_le_bytes());
        h.encode(&mut wire);
        wire.extend_from_slice(&payload);
        match run_data(limits(Codecs::ALL), &wire, &[wire.len()]) {
            Ok(runs) => prop_assert_eq!(runs, 1),
            Err(e) => prop_assert!(
                matches!(e, WireError::Lz4Corrupt { .. } | WireError::Lz4Size { .. }),
                "unexpected error {e}"
            ),
        }
    }
}

#[test]
fn valid_streams_decode() {
    assert_eq!(run_data(limits(Codecs::ALL), &valid_data_stream(), &[1, 7, 4096]), Ok(3));
    assert_eq!(run_control(&valid_control_stream(), &[3]), Ok(4));
}
