//! Helpers shared by the integration tests: running the CLI, and skipping loudly when a tool the
//! test needs is missing (unless CI demands it).

#![allow(dead_code)]

pub mod guest;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `pagestream` binary built for these tests.
pub fn pagestream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pagestream")).args(args).output().expect("run pagestream")
}

/// The CRIU plugin built with this test run (`cargo test --workspace` builds it): the newest of
/// the uplifted copy and the one in `deps`.
pub fn plugin_so() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let deps = exe.parent().expect("the test's directory");
    let target = deps.parent().expect("the target directory");
    [target.join("libpagestream_criu.so"), deps.join("libpagestream_criu.so")]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .expect("libpagestream_criu.so is built with the workspace (cargo build/test --workspace)")
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether `tool` answers `--help`-style probing by running `args`. When it does not, the test is
/// skipped with the reason printed, unless `PAGESTREAM_REQUIRE` lists the tool (as CI does), in
/// which case the test fails.
pub fn require_tool(tool: &str, args: &[&str]) -> bool {
    let ok = Command::new(tool).args(args).output().map(|o| o.status.success()).unwrap_or(false);
    if ok {
        return true;
    }
    let required = std::env::var("PAGESTREAM_REQUIRE").unwrap_or_default();
    if required.split(',').any(|t| t.trim() == tool) {
        panic!("{tool} is required (PAGESTREAM_REQUIRE={required}) but `{tool} {}` failed", args.join(" "));
    }
    let package = match tool {
        "crit" => "criu",
        "tc" | "ip" => "iproute2",
        other => other,
    };
    eprintln!("skipped: {tool} not installed (Debian package {package})");
    false
}

/// Runs `crit` with `args` in `dir`, panicking with its stderr on failure.
pub fn crit(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("crit").args(args).current_dir(dir).output().expect("run crit");
    assert!(o.status.success(), "crit {args:?} failed: {}", stderr(&o));
    stdout(&o)
}
