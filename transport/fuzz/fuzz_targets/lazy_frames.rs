//! Fuzz target: the lazy-pages QUIC protocol's decoder (`lazy::LazyDecoder`) on arbitrary bytes
//! split at a fuzzer-chosen point: never panics, never hands out a run of 0 or more than
//! MAX_RUN_PAGES pages or Pages whose data is not exactly the run, and stays failed once failed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pagestream_transport::lazy::frame::MAX_RUN_PAGES;
use pagestream_transport::lazy::{LazyDecoder, LazyFrame};

const PAGE_SIZE: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let split = (sel as usize * 7) % (rest.len() + 1);
    let Ok(mut dec) = LazyDecoder::new(PAGE_SIZE) else { return };
    let mut buf = BytesMut::new();
    for piece in [&rest[..split], &rest[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(LazyFrame::Pages { run, data, .. })) => {
                    assert!(run.nr_pages >= 1 && run.nr_pages <= MAX_RUN_PAGES);
                    assert_eq!(data.len() as u64, run.nr_pages * PAGE_SIZE);
                }
                Ok(Some(LazyFrame::Fetch { run, .. })) => assert!(run.nr_pages >= 1 && run.nr_pages <= MAX_RUN_PAGES),
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
