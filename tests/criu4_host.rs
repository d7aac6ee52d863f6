//! Real CRIU 4.1.1 on this host (Debian 13's package, extracted by `tests/criu4/install.sh`, run
//! through its own dynamic loader; the host's CRIU 3.17 cannot dump on this kernel). The guest's
//! scenario scripts run here unchanged, with that CRIU first on PATH:
//!
//! * `plugin_dump_restore`: one `criu dump --libdir` with only the pagestream plugin on the source
//!   side; the destination's directory restores with nothing copied by hand; an unmarked
//!   directory is refused; a failed dump commits nothing.
//! * `ps_dump_restore`: `criu dump --page-server` to `pagestream page-server`, restored.
//! * `ps_relay_dump_restore`: the same relayed over QUIC (`page-server --to` → `receive
//!   --criu-sessions`).
//!
//! CRIU 4.1.1 speaks the page-server protocol with the 24-byte header, like 3.17. Skipped (with
//! the reason) when target/criu4/criu is missing, unless `PAGESTREAM_REQUIRE` lists `criu4`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One scenario at a time: they use fixed ports and both cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The extracted CRIU 4.1.1, or `None` (skipped) when it is not there.
fn criu4() -> Option<PathBuf> {
    let criu = repo().join("target/criu4/criu");
    let version = Command::new(&criu).arg("--version").output();
    if version.as_ref().is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("4.1")) {
        return Some(criu);
    }
    let required = std::env::var("PAGESTREAM_REQUIRE").unwrap_or_default();
    assert!(
        !required.split(',').any(|t| t.trim() == "criu4"),
        "CRIU 4.1.1 is required (PAGESTREAM_REQUIRE={required}) but {} does not run: bash tests/criu4/install.sh",
        criu.display()
    );
    eprintln!("skipped: CRIU 4.1.1 not extracted (run `bash tests/criu4/install.sh` as root)");
    None
}

/// Kills every process whose working directory is inside `dir` (the scenario's workload and
/// anything it left), as the guest's init does between scenarios.
fn kill_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
            // SAFETY: kill(2) with a pid read from /proc; at worst the process is already gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Runs scenario `name` with CRIU 4.1.1 first on PATH; returns its output once it passed.
fn scenario(name: &str, timeout_s: u32) -> Option<String> {
    let criu = criu4()?;
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let plugin = common::plugin_so();
    for (link, target) in [
        ("criu", criu.as_path()),
        ("pagestream", Path::new(env!("CARGO_BIN_EXE_pagestream"))),
        ("pagestream-workload", Path::new(env!("CARGO_BIN_EXE_pagestream-workload"))),
        ("libpagestream_criu.so", plugin.as_path()),
    ] {
        std::os::unix::fs::symlink(target, bin.join(link)).unwrap();
    }
    let script = repo().join(format!("tests/vm/scenarios/{name}.sh"));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("timeout")
        .args(["-s", "KILL", &timeout_s.to_string(), "sh"])
        .arg(&script)
        .current_dir(&run)
        .env("PATH", path)
        .env("PAGESTREAM_GUEST_LIB", repo().join("tests/vm/guest-lib.sh"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the scenario");
    kill_leftovers(tmp.path());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("--- {name} with CRIU 4.1.1:\n{text}");
    assert!(out.status.success(), "{name} failed with CRIU 4.1.1 ({}):\n{text}", out.status);
    assert!(!text.contains("CORRUPT"), "{name}: the workload saw corrupted memory:\n{text}");
    Some(text)
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{text}"))
}

fn verifies(text: &str, prefix: &str) -> u64 {
    line(text, prefix).rsplit('=').next().and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

fn assert_restored_alive(text: &str) {
    let (before, after) = (verifies(text, "before verifies="), verifies(text, "after verifies="));
    assert!(after > before, "the restored workload did not verify its memory again ({before} -> {after}):\n{text}");
}

#[test]
fn criu_411_dump_with_the_plugin_restores_from_the_destination() {
    let Some(text) = scenario("plugin_dump_restore", 240) else { return };
    line(&text, "failed dump committed nothing");
    assert!(line(&text, "session 1 committed from ").contains("a complete dump with "), "{text}");
    line(&text, "pagestream: dump committed as session 1 at the destination:");
    line(&text, "pagestream: refusing to restore from ");
    assert_restored_alive(&text);
}

#[test]
fn criu_411_dump_to_pagestream_page_server_restores() {
    let Some(text) = scenario("ps_dump_restore", 240) else { return };
    assert!(line(&text, "session 1 committed").contains("24-byte headers"), "{text}");
    assert_restored_alive(&text);
}

#[test]
fn criu_411_dump_relayed_over_quic_restores() {
    let Some(text) = scenario("ps_relay_dump_restore", 240) else { return };
    assert!(line(&text, "session relayed from ").contains("committed as session 1"), "{text}");
    assert_restored_alive(&text);
}
