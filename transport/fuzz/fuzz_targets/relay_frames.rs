//! Fuzz target: the CRIU relay's frame decoder (`relay::FrameDecoder`, both directions on one
//! codec) on arbitrary bytes split at a fuzzer-chosen point: never panics, never hands out a Data
//! chunk outside 1..=MAX_CHUNK bytes or a File frame with an empty name, and stays failed once
//! failed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pagestream_transport::relay::frame::MAX_CHUNK;
use pagestream_transport::relay::{FrameDecoder, RelayFrame};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let split = (sel as usize * 7) % (rest.len() + 1);
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::new();
    for piece in [&rest[..split], &rest[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(RelayFrame::Data(d))) => assert!(!d.is_empty() && d.len() <= MAX_CHUNK),
                Ok(Some(RelayFrame::File { name, .. })) => assert!(!name.is_empty()),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(dec.decode(&mut buf), Err(e));
                    break;
                }
            }
        }
    }
    let _ = dec.finish();
});
