//! Error cases of the page-server [`CommandDecoder`]: overflowing and over-limit page counts,
//! unknown commands and pagemap types, and EOF inside a header or page data. Every check must fire
//! before the offending header is consumed, and the decoder must stay poisoned.

use bytes::BytesMut;
use pagestream_engine::criu::PageFlags;
use pagestream_transport::criu_ps::{
    encode_command, CommandDecoder, DstId, HeaderLayout, LayoutChoice, ProtocolError, PsCommand, RawIov, ServerInput,
    DEFAULT_MAX_PAGES_PER_COMMAND,
};

const PS: u64 = 4096;

fn wire(layout: HeaderLayout, commands: &[PsCommand]) -> BytesMut {
    let mut out = BytesMut::new();
    for c in commands {
        encode_command(c, layout, &mut out).unwrap();
        out.extend_from_slice(&vec![0xA5; c.payload_len(PS).unwrap() as usize]);
    }
    out
}

fn drain(dec: &mut CommandDecoder, buf: &mut BytesMut) -> Result<Vec<ServerInput>, ProtocolError> {
    let mut out = Vec::new();
    while let Some(input) = dec.decode(buf)? {
        out.push(input);
    }
    Ok(out)
}

#[test]
fn overflowing_page_count_is_rejected_before_consuming() {
    let dst = DstId::task(1);
    let huge = PsCommand::AddF { dst, vaddr: 0, nr_pages: u64::MAX, flags: PageFlags::PRESENT };
    let mut buf = wire_header_only(HeaderLayout::Wide32, huge);
    let mut dec = CommandDecoder::new(LayoutChoice::Fixed(HeaderLayout::Wide32), PS)
        .unwrap()
        .with_max_pages_per_command(u64::MAX);
    let err = dec.decode(&mut buf).unwrap_err();
    assert_eq!(err.to_string(), "ADD_F nr_pages 18446744073709551615 * page size 4096 overflows");
    assert_eq!(buf.len(), 32, "header not consumed");
    assert_eq!(dec.decode(&mut buf), Err(err.clone()), "poisoned");
    assert_eq!(dec.finish(), Err(err));
}

fn wire_header_only(layout: HeaderLayout, command: PsCommand) -> BytesMut {
    let mut out = BytesMut::new();
    encode_command(&command, layout, &mut out).unwrap();
    out
}

#[test]
fn page_count_limit() {
    let dst = DstId::task(1);
    let make = |nr_pages| PsCommand::Add { dst, vaddr: 0x1000, nr_pages };
    let mut dec =
        CommandDecoder::new(LayoutChoice::Fixed(HeaderLayout::Legacy24), PS).unwrap().with_max_pages_per_command(16);
    let mut buf = wire_header_only(HeaderLayout::Legacy24, make(16));
    assert_eq!(dec.decode(&mut buf), Ok(Some(ServerInput::Command(make(16)))));

    let mut dec =
        CommandDecoder::new(LayoutChoice::Fixed(HeaderLayout::Legacy24), PS).unwrap().with_max_pages_per_command(16);
    let mut buf = wire_header_only(HeaderLayout::Legacy24, make(17));
    let err = dec.decode(&mut buf).unwrap_err();
    assert_eq!(err.to_string(), "ADD nr_pages 17 exceeds the limit of 16 pages per command");
    assert_eq!(buf.len(), 24, "header not consumed");

    let get = PsCommand::Get { pid: 1, vaddr: 0x1000, nr_pages: DEFAULT_MAX_PAGES_PER_COMMAND + 1 };
    let mut dec = CommandDecoder::new(LayoutChoice::Fixed(HeaderLayout::Wide32), PS).unwrap();
    let mut buf = wire_header_only(HeaderLayout::Wide32, get);
    assert!(matches!(dec.decode(&mut buf), Err(ProtocolError::TooManyPages { command: "GET", .. })));
}

#[test]
fn unknown_command_and_pagemap_type_errors() {
    let mut dec = CommandDecoder::new(LayoutChoice::Fixed(HeaderLayout::Legacy24), PS).unwrap();
    let mut buf = BytesMut::new();
    RawIov { cmd: 0x1025, ..RawIov::default() }.encode(HeaderLayout::Legacy24, &mut buf).unwrap();
    assert_eq!(dec.decode(&mut buf), Err(ProtocolError::UnknownCommand { command: 0x1025, cmd: 0x1025 }));

    let mut dec = CommandDecoder::new(LayoutChoice::Fixed(HeaderLayout::Legacy24), PS).unwrap();
    let mut buf = BytesMut::new();
    RawIov { cmd: 4, dst_id: 0x509, ..RawIov::default() }.encode(HeaderLayout::Legacy24, &mut buf).unwrap();
    assert_eq!(dec.decode(&mut buf).unwrap_err().to_string(), "unknown pagemap type 9 in dst_id 0x509 of OPEN2");
}

#[test]
fn eof_mid_header_and_mid_data() {
    let dst = DstId::task(1);
    let add = PsCommand::Add { dst, vaddr: 0x1000, nr_pages: 2 };
    let full = wire(HeaderLayout::Legacy24, &[add]);
    for (cut, expected) in [
        (0, Ok(())),
        (10, Err(ProtocolError::TruncatedHeader { got: 10, need: 24 })),
        (24, Err(ProtocolError::TruncatedPayload { command: "ADD", got: 0, total: 8192 })),
        (24 + 5000, Err(ProtocolError::TruncatedPayload { command: "ADD", got: 5000, total: 8192 })),
        (24 + 8192, Ok(())),
    ] {
        let mut dec = CommandDecoder::new(LayoutChoice::Detect, PS).unwrap();
        let mut buf = BytesMut::from(&full[..cut]);
        drain(&mut dec, &mut buf).unwrap();
        assert_eq!(dec.finish(), expected, "cut at {cut}");
    }
    let err = ProtocolError::TruncatedPayload { command: "ADD", got: 5000, total: 8192 };
    assert_eq!(err.to_string(), "connection closed in the middle of page data of ADD (5000 of 8192 bytes)");
    let err = ProtocolError::TruncatedHeader { got: 10, need: 24 };
    assert_eq!(err.to_string(), "connection closed inside a header (10 of 24 bytes)");
}
