//! The few raw calls the plugin makes: CRIU's own functions, found at run time with
//! `dlsym(RTLD_DEFAULT)` (CRIU links with `-rdynamic`; a loader without them still works: the
//! log falls back to stderr), and the signal mask of the threads the plugin starts.

use std::ffi::{c_char, c_int, c_uint, CString};
use std::path::PathBuf;

/// CRIU's log levels (`criu-log.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
}

type PrintOnLevel = unsafe extern "C" fn(c_uint, *const c_char, ...);
type GetImageDir = unsafe extern "C" fn() -> c_int;

fn lookup(name: &std::ffi::CStr) -> Option<*mut libc::c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads the loaded symbol tables.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!sym.is_null()).then_some(sym)
}

/// Writes `msg` (one line) into CRIU's log at `level`, or to stderr when CRIU's `print_on_level`
/// is not there.
pub fn criu_log(level: Level, msg: &str) {
    let line = CString::new(format!("pagestream: {}\n", msg.replace('\0', " "))).unwrap_or_default();
    match lookup(c"print_on_level") {
        Some(sym) => {
            // SAFETY: `print_on_level(unsigned int, const char *fmt, ...)` is CRIU's exported log
            // function; "%s" with one NUL-terminated string matches its printf contract.
            unsafe {
                let print: PrintOnLevel = std::mem::transmute::<*mut libc::c_void, PrintOnLevel>(sym);
                print(level as c_uint, c"%s".as_ptr(), line.as_ptr());
            }
        }
        None => eprint!("{}", line.to_string_lossy()),
    }
}

/// The path of CRIU's images directory (`criu_get_image_dir()`, CRIU's one public plugin API),
/// or `None` when the loader has no such function or no directory open.
pub fn criu_image_dir() -> Option<PathBuf> {
    let sym = lookup(c"criu_get_image_dir")?;
    // SAFETY: `int criu_get_image_dir(void)` returns the images directory fd CRIU holds open.
    let fd = unsafe { std::mem::transmute::<*mut libc::c_void, GetImageDir>(sym)() };
    (fd >= 0).then(|| PathBuf::from(format!("/proc/self/fd/{fd}")))
}

/// Runs `f` with every signal blocked in the calling thread, so that threads started inside
/// (and the runtime threads they start) never run CRIU's signal handlers; the mask is restored.
pub fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigfillset/pthread_sigmask on local, initialised sigset_t values.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    };
    let r = f();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
}

/// Ends the CRIU process at once (no atexit handlers, no unwinding).
pub fn exit_now(code: c_int) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}
