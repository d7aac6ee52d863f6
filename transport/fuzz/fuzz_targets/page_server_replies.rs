//! Fuzz target: the client's `ReplyDecoder`, expecting a fuzzer-chosen sequence of replies, on
//! arbitrary bytes never panics.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pagestream_transport::criu_ps::{HeaderLayout, ReplyDecoder, ReplyKind};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let layout = if sel & 1 == 0 { HeaderLayout::Legacy24 } else { HeaderLayout::Wide32 };
    let Ok(mut dec) = ReplyDecoder::new(layout, 4096) else { return };
    for k in 0..(sel >> 1) % 8 {
        dec.expect(match k % 4 {
            0 => ReplyKind::Open2,
            1 => ReplyKind::Parent,
            2 => ReplyKind::Get { pid: 1, vaddr: 0x1000 * u64::from(k), nr_pages: 4 },
            _ => ReplyKind::Close,
        });
    }
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(_)) = dec.decode(&mut buf) {}
    let _ = dec.finish();
});
