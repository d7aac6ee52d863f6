//! The real-kernel test guest as an API for tests: boot Debian 12's stock 6.1 kernel under qemu
//! (TCG) with real CRIU 3.17, the given project binaries and files, run scenario scripts (busybox
//! sh) and get back each one's exit status and serial-console output.
//!
//! The shell side lives in `tests/vm/`: `prepare.sh` (kernel + base initramfs, cached under
//! `target/guest/`), `boot.sh` (one boot), `init` (the guest's PID 1) and `guest-lib.sh` (helpers
//! a scenario gets with `. /guest/lib.sh`). Scenarios run one after the other in one boot, each in
//! its own empty folder under `/tmp`, with a timeout, and with every leftover process killed
//! afterwards. Guest runs never overlap: a process-wide mutex here and a file lock in `boot.sh`.
//!
//! ```ignore
//! if !guest::ready() { return; }
//! let out = guest::run(&GuestRun {
//!     name: "my_test",
//!     binaries: &[("pagestream-workload", Path::new(env!("CARGO_BIN_EXE_pagestream-workload")))],
//!     files: &[],
//!     script: ". /guest/lib.sh\nrun criu check\n",
//!     timeout: Duration::from_secs(60),
//! }).expect("guest run");
//! assert_eq!(out.exit_status, 0, "{}", out.output);
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One boot running one script.
pub struct GuestRun<'a> {
    /// Names the run (its folder under `target/guest/runs/`) and its only scenario.
    pub name: &'a str,
    /// Executables installed as `/guest/bin/NAME` (on `PATH`), with their shared libraries.
    pub binaries: &'a [(&'a str, &'a Path)],
    /// Files copied into the guest: (absolute guest path, host path).
    pub files: &'a [(&'a str, &'a Path)],
    /// The busybox sh script to run.
    pub script: &'a str,
    /// How long the script may run (the boot gets its own allowance on top).
    pub timeout: Duration,
}

/// One scenario of a grouped run.
pub struct Scenario<'a> {
    /// Letters, digits, `_`, `-`, `.`; unique within the group.
    pub name: &'a str,
    pub script: &'a str,
    pub timeout: Duration,
}

/// What one scenario did.
#[derive(Clone, Debug)]
pub struct GuestOutput {
    pub name: String,
    /// The script's exit status (137: it hit its timeout).
    pub exit_status: i32,
    /// Serial-console text between the scenario's markers: its stdout and stderr, plus any kernel
    /// message printed meanwhile.
    pub output: String,
    /// How long the script ran, by the guest's clock.
    pub duration: Duration,
    /// Host wall-clock time of the whole guest run it was part of, boot included.
    pub run_wall: Duration,
}

/// What a grouped run did.
#[derive(Debug)]
pub struct GroupOutput {
    pub scenarios: Vec<GuestOutput>,
    /// Guest uptime when `/init` started.
    pub boot: Duration,
    /// Host wall-clock time of the whole run.
    pub wall: Duration,
    /// The whole serial console.
    pub console: String,
}

impl GroupOutput {
    /// The scenario called `name`, if it reached its end marker.
    pub fn scenario(&self, name: &str) -> Option<&GuestOutput> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// The last `n` bytes of the console, for failure messages.
    pub fn console_tail(&self, n: usize) -> &str {
        tail(&self.console, n)
    }
}

const MARK: &str = "=== pagestream-guest ";

fn vm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm")
}

/// `target/guest`, found from the running test executable (`target/<profile>/deps/<test>`).
fn cache_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let target =
        exe.ancestors().nth(3).ok_or_else(|| format!("cannot find the target folder from {}", exe.display()))?;
    Ok(target.join("guest"))
}

/// Whether the guest can run here: qemu installed and the kernel and base initramfs prepared
/// (downloaded and built on first use, cached afterwards). `Err` carries the reason.
pub fn available() -> Result<(), String> {
    static STATE: OnceLock<Result<(), String>> = OnceLock::new();
    STATE.get_or_init(check_available).clone()
}

fn check_available() -> Result<(), String> {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.map(|o| o.status.success()).unwrap_or(false) {
        return Err("qemu-system-x86_64 not installed (tests/vm/install.sh installs it, as root)".into());
    }
    let cache = cache_dir()?;
    let _serial = lock();
    let out = Command::new("bash")
        .arg(vm_dir().join("prepare.sh"))
        .arg(&cache)
        .output()
        .map_err(|e| format!("cannot run tests/vm/prepare.sh: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let reason = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
    Err(format!("guest kernel/initramfs not available: {reason}"))
}

/// Whether `PAGESTREAM_REQUIRE` lists `qemu` (run.sh sets it as root and in CI).
pub fn required() -> bool {
    std::env::var("PAGESTREAM_REQUIRE").unwrap_or_default().split(',').any(|t| t.trim() == "qemu")
}

/// True when the guest can run. Otherwise prints `skipped: <reason>` and returns false, or
/// panics when `PAGESTREAM_REQUIRE` lists `qemu`.
pub fn ready() -> bool {
    match available() {
        Ok(()) => true,
        Err(reason) if required() => panic!("the test guest is required (PAGESTREAM_REQUIRE) but {reason}"),
        Err(reason) => {
            note(&format!("skipped: {reason}"));
            false
        }
    }
}

/// Writes a line to the real stderr, past the test harness's output capture, so that CI logs
/// show which guest scenario ran, passed or was skipped.
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Prints `guest: <test>: passed (<scenario>: <secs> s in the guest)`; call it after a test's
/// assertions held.
pub fn report_pass(test: &str, out: &GuestOutput) {
    note(&format!(
        "guest: {test}: passed (scenario {} ran {:.1} s; its guest run took {:.1} s wall, boot included)",
        out.name,
        out.duration.as_secs_f64(),
        out.run_wall.as_secs_f64()
    ));
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Boots the guest once and runs `run.script`. `Err` when the guest could not be run or did not
/// get through the script (with the console's end); a failing script is an `Ok` with its status.
pub fn run(run: &GuestRun) -> Result<GuestOutput, String> {
    let scenario = Scenario { name: run.name, script: run.script, timeout: run.timeout };
    let group = run_group(run.name, run.binaries, run.files, &[scenario])?;
    group
        .scenario(run.name)
        .cloned()
        .ok_or_else(|| format!("scenario {} did not finish; console ends:\n{}", run.name, group.console_tail(3000)))
}

/// Boots the guest once and runs `scenarios` in order, each with its own timeout. `Err` when the
/// guest could not be run or stopped before its end marker. Scenarios that did not finish are
/// missing from the result.
pub fn run_group(
    name: &str,
    binaries: &[(&str, &Path)],
    files: &[(&str, &Path)],
    scenarios: &[Scenario],
) -> Result<GroupOutput, String> {
    let cache = cache_dir()?;
    let input = cache.join("runs").join(format!("{name}.in"));
    let run_dir = cache.join("runs").join(name);
    let manifest = write_inputs(&input, binaries, files, scenarios)?;

    let _serial = lock();
    let start = Instant::now();
    let out = Command::new("bash")
        .arg(vm_dir().join("boot.sh"))
        .arg(&manifest)
        .arg(&run_dir)
        .arg(&cache)
        .output()
        .map_err(|e| format!("cannot run tests/vm/boot.sh: {e}"))?;
    let wall = start.elapsed();
    let console = std::fs::read(run_dir.join("console.log"))
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default();
    if !out.status.success() {
        return Err(format!(
            "guest run {name} failed: {}\nconsole ({}) ends:\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            run_dir.join("console.log").display(),
            tail(&console, 3000)
        ));
    }
    Ok(parse_console(console, wall))
}

/// The last `n` bytes of `s` (or a little less, to start on a character).
pub fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn write_inputs(
    dir: &Path,
    binaries: &[(&str, &Path)],
    files: &[(&str, &Path)],
    scenarios: &[Scenario],
) -> Result<PathBuf, String> {
    let bad = |s: &str| s.is_empty() || s.chars().any(char::is_whitespace);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut manifest = String::new();
    for (name, path) in binaries {
        let path = path.to_string_lossy();
        if bad(name) || bad(&path) || name.contains('/') {
            return Err(format!("bad binary entry {name:?} -> {path:?} (no spaces or slashes in names)"));
        }
        manifest += &format!("bin {name} {path}\n");
    }
    for (guest_path, path) in files {
        let path = path.to_string_lossy();
        if bad(guest_path) || bad(&path) || !guest_path.starts_with('/') {
            return Err(format!("bad file entry {guest_path:?} -> {path:?} (absolute guest path, no spaces)"));
        }
        manifest += &format!("file {guest_path} {path}\n");
    }
    for (i, s) in scenarios.iter().enumerate() {
        let ok_name = !s.name.is_empty()
            && s.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            && !scenarios[..i].iter().any(|o| o.name == s.name);
        if !ok_name {
            return Err(format!("bad or repeated scenario name {:?}", s.name));
        }
        let script = dir.join(format!("{}.sh", s.name));
        std::fs::write(&script, s.script).map_err(|e| format!("write {}: {e}", script.display()))?;
        let secs = s.timeout.as_secs().max(1);
        manifest += &format!("scenario {} {secs} {}\n", s.name, script.display());
    }
    let path = dir.join("manifest");
    std::fs::write(&path, manifest).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Splits the console at the markers `tests/vm/init` prints.
fn parse_console(console: String, wall: Duration) -> GroupOutput {
    let mut scenarios = Vec::new();
    let mut boot = Duration::ZERO;
    let mut current: Option<(String, String)> = None;
    for raw in console.lines() {
        // A script whose last line lacks a newline leaves the marker mid-line.
        let (text, marker) = match raw.find(MARK) {
            Some(i) => (&raw[..i], Some(&raw[i + MARK.len()..])),
            None => (raw, None),
        };
        if let Some((_, out)) = current.as_mut() {
            if marker.is_none() || !text.is_empty() {
                out.push_str(text);
                out.push('\n');
            }
        }
        let Some(marker) = marker else { continue };
        let words: Vec<&str> = marker.split_whitespace().collect();
        let field = |key: &str| words.iter().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse::<i64>().ok());
        match words.as_slice() {
            ["boot", ..] => boot = Duration::from_millis(field("ms=").unwrap_or(0).max(0) as u64),
            ["scenario", name, "begin"] => current = Some((name.to_string(), String::new())),
            ["scenario", name, "end", ..] => {
                if let Some((cur, output)) = current.take().filter(|(cur, _)| cur == name) {
                    scenarios.push(GuestOutput {
                        name: cur,
                        exit_status: field("status=").unwrap_or(-1) as i32,
                        output,
                        duration: Duration::from_millis(field("ms=").unwrap_or(0).max(0) as u64),
                        run_wall: wall,
                    });
                }
            }
            _ => {}
        }
    }
    GroupOutput { scenarios, boot, wall, console }
}

/// Scenarios of one test file that share a single boot: the first test to ask boots the guest
/// and runs them all; every test then checks its own scenario.
pub struct SharedBoot {
    /// Name of the run (a file under target/guest/runs).
    pub name: &'static str,
    /// `(scenario name, script, timeout in seconds)`.
    pub scenarios: &'static [(&'static str, &'static str, u64)],
    /// Strings that must not appear in a passing scenario's output, with what they would mean.
    pub forbidden: &'static [(&'static str, &'static str)],
    /// The result, once booted.
    pub cell: OnceLock<Result<GroupOutput, String>>,
}

impl SharedBoot {
    fn group(&'static self, binaries: &[(&str, &Path)]) -> &'static Result<GroupOutput, String> {
        self.cell.get_or_init(|| {
            let scenarios: Vec<Scenario> = self
                .scenarios
                .iter()
                .map(|&(name, script, secs)| Scenario { name, script, timeout: Duration::from_secs(secs) })
                .collect();
            let out = run_group(self.name, binaries, &[], &scenarios);
            if let Ok(g) = &out {
                note(&format!(
                    "guest: {}: {} scenarios in one boot, {:.1} s wall (init after {:.1} s of guest uptime)",
                    self.name,
                    g.scenarios.len(),
                    g.wall.as_secs_f64(),
                    g.boot.as_secs_f64()
                ));
            }
            out
        })
    }

    /// The output of scenario `name` once it passed (status 0, nothing forbidden in it); `None`
    /// when the guest is not available here (the test then skips, or panics when required).
    pub fn passed(&'static self, name: &str, binaries: &[(&str, &Path)]) -> Option<&'static GuestOutput> {
        if !ready() {
            return None;
        }
        let group = self.group(binaries).as_ref().unwrap_or_else(|e| panic!("{e}"));
        let out = group
            .scenario(name)
            .unwrap_or_else(|| panic!("scenario {name} did not finish; console ends:\n{}", group.console_tail(4000)));
        assert_eq!(out.exit_status, 0, "scenario {name} failed (status {}):\n{}", out.exit_status, out.output);
        for (bad, meaning) in self.forbidden {
            assert!(!out.output.contains(bad), "{name}: {meaning}:\n{}", out.output);
        }
        Some(out)
    }
}

/// The line of `out` starting with `prefix`, panicking with the output if there is none.
pub fn line<'a>(out: &'a GuestOutput, prefix: &str) -> &'a str {
    out.output
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{}: no line starting with {prefix:?} in:\n{}", out.name, out.output))
}

/// The number after `key=` in `line`.
pub fn num(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key}= in {line:?}"))
}
