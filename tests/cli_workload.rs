//! The workload built into `pagestream` (hidden `workload` subcommand), which `pagestream demo`
//! falls back to when no separate `pagestream-workload` binary sits next to it (as after
//! `cargo run -- demo` on a fresh checkout): it starts, answers its protocol and verifies itself.

use std::path::PathBuf;

use pagestream::workload_client::{Workload, WorkloadProgram};

#[test]
fn built_in_workload_speaks_the_protocol() {
    let program =
        WorkloadProgram { exe: PathBuf::from(env!("CARGO_BIN_EXE_pagestream")), prefix: vec!["workload".into()] };
    let mut w = Workload::spawn_program(&program, &["--size", "2M", "--rate", "1000", "--report-ms", "100"]).unwrap();
    assert_eq!(w.pages * w.page_size, 2 << 20);
    w.wait_for("progress").unwrap();
    w.cmd("verify", "verify ok").unwrap();
    w.cmd("exit", "bye").unwrap();
}
