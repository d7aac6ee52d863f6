//! pagestream's soft-dirty tracker on a real distribution kernel (Debian 12's 6.1, in the test
//! guest) against the workload's own record of what it wrote, which this host's kernel (no
//! CONFIG_MEM_SOFT_DIRTY) cannot show.

mod common;

use std::path::Path;
use std::time::Duration;

use common::guest::{self, GuestRun};

#[test]
fn soft_dirty_passes_ground_truth_on_debian_6_1() {
    if !guest::ready() {
        return;
    }
    let out = guest::run(&GuestRun {
        name: "guest_track",
        binaries: &[
            ("pagestream", Path::new(env!("CARGO_BIN_EXE_pagestream"))),
            ("pagestream-workload", Path::new(env!("CARGO_BIN_EXE_pagestream-workload"))),
        ],
        files: &[],
        script: include_str!("vm/scenarios/pagestream_selftest_track.sh"),
        timeout: Duration::from_secs(150),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.exit_status, 0, "selftest in the guest failed:\n{}", out.output);
    for want in [
        "soft-dirty round 4:",
        "soft-dirty: vanished and replaced areas handled",
        "soft-dirty: PASS",
        "uffd-wp: SKIPPED",
    ] {
        assert!(out.output.contains(want), "missing {want:?} in:\n{}", out.output);
    }
    guest::report_pass("soft_dirty_passes_ground_truth_on_debian_6_1", &out);
}
