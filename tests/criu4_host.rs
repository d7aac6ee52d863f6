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
//! * `ps_lazy_quic`: `criu restore --lazy-pages` with `pagestream lazy-pages --from` as the
//!   daemon and `pagestream serve-lazy` as the source (QUIC).
//! * `ps_lazy_criu_daemon`: CRIU's own `criu lazy-pages --page-server` fetching a dump's pages
//!   from `pagestream page-server` with PS_IOV_GET.
//!
//! And the other direction: `pagestream send --criu-page-server` dumps a paused workload into a
//! real `criu page-server -D DIR` (stop-and-copy, one session); the pages CRIU wrote equal the
//! process's memory byte for byte, and the source runs on; with no page server there, `send`
//! fails and the source is neither frozen nor stopped.
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

#[test]
fn criu_411_lazy_restore_with_pagestream_on_both_ends() {
    let Some(text) = scenario("ps_lazy_quic", 240) else { return };
    assert!(line(&text, "lazy summary ").contains("\"pages_dropped\":0"), "{text}");
    line(&text, "session 1 complete: ");
    assert_restored_alive(&text);
}

#[test]
fn criu_411_lazy_pages_daemon_fetches_from_pagestream_page_server() {
    let Some(text) = scenario("ps_lazy_criu_daemon", 240) else { return };
    assert!(line(&text, "lazy-pages client from ").contains("nothing written"), "{text}");
    assert_restored_alive(&text);
}

/// Waits until something listens on TCP `port` of 127.0.0.1 (without connecting: a `criu
/// page-server` serves exactly one connection).
fn wait_listening(port: u16) {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    for _ in 0..300 {
        if std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| t.contains(&needle)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("nothing listens on port {port}");
}

fn process_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')').next().and_then(|r| r.trim_start().chars().next()).unwrap()
}

#[test]
fn pagestream_send_dumps_into_a_real_criu_page_server_byte_for_byte() {
    let Some(criu) = criu4() else { return };
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    std::fs::create_dir(&img).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(&criu)
        .args(["page-server", "--address", "127.0.0.1", "--port", &port.to_string(), "-D"])
        .arg(&img)
        .args(["-o", "ps.log", "-v4"])
        .spawn()
        .unwrap();
    wait_listening(port);
    let exe = Path::new(env!("CARGO_BIN_EXE_pagestream-workload"));
    let mut w = pagestream::workload_client::Workload::spawn(exe, &["--size", "48M", "--rate", "3000"]).unwrap();
    w.cmd("pause", "paused").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pagestream"))
        .args(["send", "--pid", &w.pid.to_string(), "--leave-running", "--criu-page-server"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("StopAndCopy") && text.contains("source: \"resumed\""), "{text}");
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "criu page-server failed: {}",
        std::fs::read_to_string(img.join("ps.log")).unwrap_or_default()
    );
    // The paused workload's area, page by page, against what CRIU wrote (its stack and heap may
    // change while paused; its area does not).
    use std::os::unix::fs::FileExt;
    let ps = w.page_size;
    let chain = pagestream_engine::criu::ImageChain::open(&img, None, ps).unwrap();
    chain.verify().unwrap();
    let id = pagestream_engine::criu::PagemapId::Task(w.pid as u64);
    let mem = std::fs::File::open(format!("/proc/{}/mem", w.pid)).unwrap();
    let mut page = vec![0u8; ps as usize];
    let mut data_pages = 0;
    for i in 0..w.pages {
        let addr = w.base + i * ps;
        mem.read_exact_at(&mut page, addr).unwrap();
        match chain.page_at(id, addr).unwrap() {
            pagestream_engine::criu::PageLookup::Data(d) => {
                assert!(d == page, "page {addr:#x} differs");
                data_pages += 1;
            }
            other => assert!(page.iter().all(|&b| b == 0), "page {addr:#x} has data but the image has {other:?}"),
        }
    }
    assert!(data_pages > w.pages / 2, "{data_pages} of {} pages carried data", w.pages);
    w.cmd("resume", "resumed").unwrap();
    w.wait_for("progress").unwrap();

    // Nobody listening: a clear error, the source neither frozen nor stopped.
    let out = Command::new(env!("CARGO_BIN_EXE_pagestream"))
        .args(["send", "--pid", &w.pid.to_string(), "--criu-page-server"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to the CRIU page server"), "{out:?}");
    assert!(w.is_running() && process_state(w.pid) != 'T', "the source must run on");
    w.wait_for("progress").unwrap();
}
