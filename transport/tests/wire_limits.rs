//! Every size and validity check of pagestream's wire decoders, each with input that fails it.
//! Checks on a frame or run header must fire as soon as that header is buffered, before the
//! body or payload arrives (the tests give the decoder nothing more than the headers).

use bytes::BytesMut;
use pagestream_engine::criu::PagemapId;
use pagestream_engine::PageRun;
use pagestream_transport::wire::{
    encode_control, Codecs, ControlDecoder, ControlFrame, DataDecoder, DataLimits, Encoding, RunEncoder, RunHeader,
    WireError, HELLO_BODY_LEN, MAX_CONTROL_BODY, MAX_STRING_LEN, PROTOCOL_VERSION, RUN_HEADER_LEN,
};

const PS: u64 = 4096;
const MAX: u32 = 16;

fn limits() -> DataLimits {
    DataLimits::new(PS, MAX, Codecs::ALL).unwrap()
}

fn header(nr_pages: u32, encoding: Encoding, payload_len: u32) -> RunHeader {
    RunHeader { round: 3, pagemap: PagemapId::Task(42), vaddr: 0x7f00_0000_0000, nr_pages, encoding, payload_len }
}

/// A Run frame header and run header only, with the frame length `body_len`.
fn headers_only(h: &RunHeader, body_len: u32) -> BytesMut {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&[0x20]);
    wire.extend_from_slice(&body_len.to_le_bytes());
    h.encode(&mut wire);
    wire
}

fn frame(h: &RunHeader, payload: &[u8]) -> BytesMut {
    let mut wire = headers_only(h, (RUN_HEADER_LEN + payload.len()) as u32);
    wire.extend_from_slice(payload);
    wire
}

fn data_err(limits: DataLimits, mut wire: BytesMut) -> WireError {
    let mut dec = DataDecoder::new(limits);
    let err = dec.decode(&mut wire).expect_err("the decoder must refuse this input");
    assert_eq!(dec.decode(&mut wire), Err(err.clone()), "the error sticks");
    err
}

fn control_err(mut wire: BytesMut) -> WireError {
    let mut dec = ControlDecoder::new();
    let err = dec.decode(&mut wire).expect_err("the decoder must refuse this input");
    assert_eq!(dec.decode(&mut wire), Err(err.clone()), "the error sticks");
    err
}

fn control_frame(ty: u8, body: &[u8]) -> BytesMut {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&[ty]);
    wire.extend_from_slice(&(body.len() as u32).to_le_bytes());
    wire.extend_from_slice(body);
    wire
}

#[test]
fn unknown_frame_types_are_refused_on_both_streams() {
    assert_eq!(control_err(control_frame(0x7e, &[])), WireError::UnknownFrameType { ty: 0x7e });
    assert_eq!(data_err(limits(), control_frame(0x00, &[])), WireError::UnknownFrameType { ty: 0x00 });
}

#[test]
fn frames_on_the_wrong_stream_are_refused() {
    let run = frame(&header(1, Encoding::Zero, 0), &[]);
    assert_eq!(control_err(run), WireError::UnexpectedFrame { frame: "Run", stream: "control" });
    let mut ctl = BytesMut::new();
    encode_control(&ControlFrame::RoundBegin { round: 1 }, &mut ctl).unwrap();
    assert_eq!(data_err(limits(), ctl), WireError::UnexpectedFrame { frame: "RoundBegin", stream: "data" });
}

#[test]
fn oversized_control_frame_is_refused_from_its_header() {
    let mut wire = BytesMut::from(&[0x16u8][..]);
    wire.extend_from_slice(&(MAX_CONTROL_BODY as u32 + 1).to_le_bytes());
    let err = control_err(wire);
    assert_eq!(err, WireError::FrameTooLarge { frame: "Abort", len: MAX_CONTROL_BODY as u64 + 1, max: 8192 });
}

#[test]
fn oversized_run_frame_is_refused_from_its_header() {
    let max_body = RUN_HEADER_LEN as u64 + u64::from(MAX) * PS;
    let mut wire = BytesMut::from(&[0x20u8][..]);
    wire.extend_from_slice(&(max_body as u32 + 1).to_le_bytes());
    assert_eq!(data_err(limits(), wire), WireError::FrameTooLarge { frame: "Run", len: max_body + 1, max: max_body });
    let mut wire = BytesMut::from(&[0x20u8][..]);
    wire.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(data_err(limits(), wire), WireError::FrameTooLarge { .. }));
}

#[test]
fn run_frame_shorter_than_its_header_is_refused() {
    let mut wire = BytesMut::from(&[0x20u8][..]);
    wire.extend_from_slice(&29u32.to_le_bytes());
    assert_eq!(data_err(limits(), wire), WireError::BadLength { frame: "Run", got: 29, want: RUN_HEADER_LEN });
}

#[test]
fn page_count_checks_fire_before_the_payload() {
    let h = header(0, Encoding::Zero, 0);
    assert_eq!(data_err(limits(), headers_only(&h, 30)), WireError::EmptyRun { vaddr: h.vaddr });
    let h = header(MAX + 1, Encoding::Raw, (MAX + 1) * PS as u32);
    let err = data_err(limits(), headers_only(&h, 30 + h.payload_len));
    // The frame length is over the limit too; whichever fires, it fires on the headers.
    assert!(matches!(err, WireError::FrameTooLarge { .. } | WireError::TooManyPages { .. }), "{err}");
    let h = header(MAX + 1, Encoding::Zero, 0);
    assert_eq!(
        data_err(limits(), headers_only(&h, 30)),
        WireError::TooManyPages { vaddr: h.vaddr, nr_pages: u64::from(MAX) + 1, max: u64::from(MAX) }
    );
}

#[test]
fn address_checks() {
    let mut h = header(1, Encoding::Zero, 0);
    h.vaddr = 0x1001;
    assert_eq!(data_err(limits(), headers_only(&h, 30)), WireError::Unaligned { vaddr: 0x1001, page_size: PS });
    h.vaddr = u64::MAX - PS + 1;
    h.nr_pages = 2;
    assert_eq!(data_err(limits(), headers_only(&h, 30)), WireError::RunWraps { vaddr: h.vaddr, nr_pages: 2 });
    h.vaddr = u64::MAX - 2 * PS + 1;
    h.nr_pages = 1;
    assert!(DataDecoder::new(limits()).decode(&mut headers_only(&h, 30)).unwrap().is_some(), "ends below 2^64");
}

#[test]
fn unknown_kind_and_encoding_bytes() {
    let mut wire = headers_only(&header(1, Encoding::Zero, 0), 30);
    wire[5 + 4] = 7; // pagemap kind
    assert_eq!(data_err(limits(), wire), WireError::UnknownPagemapKind { kind: 7 });
    let mut wire = headers_only(&header(1, Encoding::Zero, 0), 30);
    wire[5 + 25] = 4; // encoding (0 zero, 1 raw, 2 lz4, 3 discard)
    assert_eq!(data_err(limits(), wire), WireError::UnknownEncoding { encoding: 4 });
}

#[test]
fn encodings_must_be_negotiated() {
    let raw_only = DataLimits::new(PS, MAX, Codecs::RAW).unwrap();
    let h = header(1, Encoding::Lz4, 100);
    assert_eq!(data_err(raw_only, headers_only(&h, 130)), WireError::EncodingNotNegotiated { encoding: Encoding::Lz4 });
    let lz4_only = DataLimits::new(PS, MAX, Codecs::LZ4).unwrap();
    let h = header(1, Encoding::Raw, PS as u32);
    let err = data_err(lz4_only, headers_only(&h, 30 + PS as u32));
    assert_eq!(err, WireError::EncodingNotNegotiated { encoding: Encoding::Raw });
    // Zero runs need no codec.
    let mut dec = DataDecoder::new(lz4_only);
    assert!(dec.decode(&mut frame(&header(2, Encoding::Zero, 0), &[])).unwrap().is_some());
}

#[test]
fn payload_lengths_must_fit_the_encoding() {
    let run_bytes = 2 * PS;
    let cases = [
        (Encoding::Zero, 1u32, "a zero run has no payload"),
        (Encoding::Raw, run_bytes as u32 - 1, "must equal the run"),
        (Encoding::Raw, run_bytes as u32 + 1, "must equal the run"),
        (Encoding::Lz4, 0, "must be 1 ..= the run"),
        (Encoding::Lz4, run_bytes as u32 + 1, "must be 1 ..= the run"),
    ];
    for (encoding, len, rule) in cases {
        let h = header(2, encoding, len);
        let err = data_err(limits(), headers_only(&h, 30 + len));
        assert_eq!(
            err,
            WireError::BadPayloadLen { encoding, got: u64::from(len), run_bytes, rule },
            "{encoding} {len}"
        );
    }
}

#[test]
fn frame_length_must_match_the_payload() {
    let h = header(1, Encoding::Lz4, 100);
    assert_eq!(data_err(limits(), headers_only(&h, 131)), WireError::FrameLenMismatch { frame_len: 131, want: 130 });
    assert_eq!(data_err(limits(), headers_only(&h, 129)), WireError::FrameLenMismatch { frame_len: 129, want: 130 });
}

#[test]
fn lz4_must_decompress_to_exactly_the_run() {
    let vaddr = header(1, Encoding::Lz4, 0).vaddr;
    // Fewer bytes than the run: one page compressed, announced as two.
    let one_page = lz4_flex::block::compress(&vec![b'a'; PS as usize]);
    let h = header(2, Encoding::Lz4, one_page.len() as u32);
    let err = data_err(limits(), frame(&h, &one_page));
    assert_eq!(err, WireError::Lz4Size { vaddr, got: PS as usize, want: 2 * PS as usize });
    // More bytes than the run: three pages compressed, announced as two.
    let three = lz4_flex::block::compress(&vec![b'a'; 3 * PS as usize]);
    let h = header(2, Encoding::Lz4, three.len() as u32);
    assert!(matches!(data_err(limits(), frame(&h, &three)), WireError::Lz4Corrupt { .. }));
    // Garbage.
    let h = header(1, Encoding::Lz4, 8);
    assert!(matches!(data_err(limits(), frame(&h, &[0xff; 8])), WireError::Lz4Corrupt { .. }));
}

#[test]
fn truncated_streams_fail_at_finish() {
    let h = header(1, Encoding::Raw, PS as u32);
    let mut wire = frame(&h, &vec![1u8; PS as usize]);
    let _ = wire.split_off(wire.len() - 10);
    let mut dec = DataDecoder::new(limits());
    assert_eq!(dec.decode(&mut wire), Ok(None));
    let need = 5 + RUN_HEADER_LEN as u64 + PS;
    assert_eq!(dec.finish(), Err(WireError::Truncated { got: need - 10, need }));
}

#[test]
fn fixed_size_control_bodies() {
    for (ty, name, want) in [
        (0x10u8, "RoundBegin", 4),
        (0x11, "RoundEnd", 28),
        (0x12, "RoundAck", 8),
        (0x13, "Commit", 12),
        (0x15, "Stats", 32),
    ] {
        for got in [want - 1, want + 1] {
            let err = control_err(control_frame(ty, &vec![0; got]));
            assert_eq!(err, WireError::BadLength { frame: name, got, want });
        }
    }
}

#[test]
fn string_checks() {
    let mut body = ((MAX_STRING_LEN + 1) as u16).to_le_bytes().to_vec();
    body.extend(std::iter::repeat_n(b'x', MAX_STRING_LEN + 1));
    let err = control_err(control_frame(0x16, &body));
    assert_eq!(err, WireError::StringTooLong { frame: "Abort", len: MAX_STRING_LEN + 1, max: MAX_STRING_LEN });
    assert_eq!(control_err(control_frame(0x02, &[2, 0, 0xc3, 0x28])), WireError::NotUtf8 { frame: "Reject" });
    assert_eq!(control_err(control_frame(0x16, &[5, 0, b'a'])), WireError::ShortBody { frame: "Abort" });
    assert_eq!(
        control_err(control_frame(0x16, &[1, 0, b'a', b'b'])),
        WireError::TrailingBytes { frame: "Abort", extra: 1 }
    );
    let mut ack = vec![1, 0, b'/'];
    ack.extend_from_slice(&[0; 7]);
    assert_eq!(control_err(control_frame(0x14, &ack)), WireError::ShortBody { frame: "CommitAck" });
    let err = encode_control(&ControlFrame::Abort { reason: "x".repeat(MAX_STRING_LEN + 1) }, &mut BytesMut::new());
    assert!(matches!(err, Err(WireError::StringTooLong { .. })));
}

#[test]
fn hello_checks() {
    let mut good = BytesMut::new();
    encode_control(
        &ControlFrame::Hello(pagestream_transport::wire::Hello::new(PS, Codecs::ALL, 1024, [3; 16])),
        &mut good,
    )
    .unwrap();
    let body = good[5..].to_vec();
    assert_eq!(body.len(), HELLO_BODY_LEN);
    assert!(matches!(control_err(control_frame(0x01, b"HTTP/1.1 200")), WireError::BadMagic { .. }));
    assert_eq!(
        control_err(control_frame(0x01, &body[..5])),
        WireError::BadLength { frame: "Hello", got: 5, want: HELLO_BODY_LEN }
    );
    assert_eq!(
        control_err(control_frame(0x01, &body[..HELLO_BODY_LEN - 1])),
        WireError::BadLength { frame: "Hello", got: HELLO_BODY_LEN - 1, want: HELLO_BODY_LEN }
    );
    let mut v9 = body.clone();
    v9[4..6].copy_from_slice(&9u16.to_le_bytes());
    assert_eq!(control_err(control_frame(0x01, &v9)), WireError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: 9 });
    let mut bad_ps = body;
    bad_ps[6..14].copy_from_slice(&(3 * PS).to_le_bytes());
    assert_eq!(control_err(control_frame(0x01, &bad_ps)), WireError::InvalidPageSize { page_size: 3 * PS });
}

#[test]
fn limits_and_encoder_refuse_bad_values() {
    assert!(matches!(DataLimits::new(PS, 0, Codecs::ALL), Err(WireError::InvalidRunLimit { .. })));
    assert!(matches!(DataLimits::new(PS, 16385, Codecs::ALL), Err(WireError::InvalidRunLimit { limit: 16384, .. })));
    assert!(DataLimits::new(PS, 16384, Codecs::ALL).is_ok());
    assert_eq!(DataLimits::new(1000, 1, Codecs::ALL), Err(WireError::InvalidPageSize { page_size: 1000 }));
    let mut enc = RunEncoder::new(limits());
    let err = enc.encode_pages(0, PagemapId::Task(1), PageRun::new(0, 2), &[0; 4096]).unwrap_err();
    assert_eq!(err, WireError::DataLenMismatch { vaddr: 0, nr_pages: 2, got: 4096, want: 8192 });
    let err = enc.encode_zero(0, PagemapId::Task(1), PageRun::new(0, u64::from(MAX) + 1)).unwrap_err();
    assert!(matches!(err, WireError::TooManyPages { .. }));
    let err = enc.encode_zero(0, PagemapId::Task(1), PageRun::new(0x10, 1)).unwrap_err();
    assert!(matches!(err, WireError::Unaligned { .. }));
}
