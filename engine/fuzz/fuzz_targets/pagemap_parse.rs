//! Fuzz target: `Pagemap::parse` on arbitrary bytes never panics, and whatever it accepts
//! re-encodes to a pagemap that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pagestream_engine::criu::Pagemap;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.img");
    if let Ok(pm) = Pagemap::parse(path, data, 4096) {
        let again = Pagemap::parse(path, &pm.encode(), 4096).expect("re-encoded pagemap must parse");
        assert_eq!(again, pm);
    }
});
