//! Fuzz target: pagestream's own wire decoders (`ControlDecoder`, and `DataDecoder` under each
//! set of negotiated encodings) on arbitrary bytes split at a fuzzer-chosen point, never panic,
//! never hand out a run whose data is not exactly its size, and keep failing once failed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pagestream_transport::wire::{Codecs, ControlDecoder, DataDecoder, DataLimits, RunContent};

const PAGE_SIZE: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let codecs = match sel % 3 {
        0 => Codecs::ALL,
        1 => Codecs::RAW,
        _ => Codecs::LZ4,
    };
    let Ok(limits) = DataLimits::new(PAGE_SIZE, 1 + u32::from(sel >> 4), codecs) else { return };
    let split = (sel as usize * 7) % (rest.len() + 1);

    let mut data_dec = DataDecoder::new(limits);
    let mut control_dec = ControlDecoder::new();
    let (mut data_buf, mut control_buf) = (BytesMut::new(), BytesMut::new());
    for piece in [&rest[..split], &rest[split..]] {
        data_buf.extend_from_slice(piece);
        loop {
            match data_dec.decode(&mut data_buf) {
                Ok(Some(run)) => {
                    assert!(run.run.nr_pages >= 1 && run.run.nr_pages <= u64::from(limits.max_run_pages()));
                    if let RunContent::Data(bytes) = &run.content {
                        assert_eq!(bytes.len() as u64, run.run.nr_pages * PAGE_SIZE);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(data_dec.decode(&mut data_buf), Err(e));
                    break;
                }
            }
        }
        control_buf.extend_from_slice(piece);
        while let Ok(Some(_)) = control_dec.decode(&mut control_buf) {}
    }
    let _ = data_dec.finish();
    let _ = control_dec.finish();
});
