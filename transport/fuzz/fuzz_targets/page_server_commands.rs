//! Fuzz target: the page server's `CommandDecoder` on arbitrary bytes, split at a fuzzer-chosen
//! point and with both layout choices, never panics and never hands out more page data than the
//! current command owes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pagestream_transport::criu_ps::{CommandDecoder, HeaderLayout, LayoutChoice, ServerInput};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let choice = match sel % 3 {
        0 => LayoutChoice::Detect,
        1 => LayoutChoice::Fixed(HeaderLayout::Legacy24),
        _ => LayoutChoice::Fixed(HeaderLayout::Wide32),
    };
    let Ok(mut dec) = CommandDecoder::new(choice, 4096) else { return };
    let split = (sel as usize * 7) % (rest.len() + 1);
    let mut buf = BytesMut::new();
    for piece in [&rest[..split], &rest[split..]] {
        buf.extend_from_slice(piece);
        loop {
            let owed = dec.payload_remaining();
            match dec.decode(&mut buf) {
                Ok(Some(ServerInput::PageData(chunk))) => {
                    assert!(!chunk.is_empty() && chunk.len() as u64 <= owed);
                }
                Ok(Some(ServerInput::Command(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = dec.finish();
});
