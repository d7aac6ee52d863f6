//! pagestream's CRIU plugin (`libpagestream_criu.so`, loaded with `criu --libdir DIR`): one
//! `criu dump --page-server` leaves a complete, committed image directory at a pagestream
//! destination, with no page server to run on the source and nothing to copy by hand.
//!
//! * `init(DUMP | PRE_DUMP)`: reads [`config`] from the environment, listens where CRIU's
//!   `--page-server --address --port` connects, connects to `pagestream receive --criu-sessions`
//!   over QUIC (mutual TLS) and relays CRIU's page-server session ([`dump`]).
//! * `exit(DUMP, ret)`: on success ships the dump directory's other image files, waits until the
//!   destination committed the directory durably and logs a one-line summary into CRIU's log; on
//!   failure aborts (the destination keeps nothing). If the destination cannot commit a
//!   successful dump, the plugin ends CRIU before CRIU would stop the dumped tasks for good: they
//!   resume when CRIU's ptrace goes away, so the source is never lost.
//! * `init(RESTORE)`: refuses a directory without pagestream's commit marker ([`restore`]).
//!
//! The descriptor declares CRIU 3.17's ten hooks, all empty, so every CRIU from 3.17 on accepts
//! it (`max_hooks` ≤ its `CR_PLUGIN_HOOK__MAX`) and none calls a hook with the wrong signature.
//! No panic crosses into CRIU (every entry point catches it), and `exit` ends the plugin's
//! threads before CRIU unloads it.

pub mod config;
pub mod dump;
pub mod restore;
pub mod sys;

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use config::PluginConfig;
use dump::{DumpForwarder, Outcome};
use sys::{criu_image_dir, criu_log, exit_now, Level};

/// `CR_PLUGIN_STAGE__DUMP`.
pub const STAGE_DUMP: c_int = 0;
/// `CR_PLUGIN_STAGE__PRE_DUMP`.
pub const STAGE_PRE_DUMP: c_int = 1;
/// `CR_PLUGIN_STAGE__RESTORE`.
pub const STAGE_RESTORE: c_int = 2;
/// `CRIU_PLUGIN_VERSION`: GEN(0, 2, 0).
pub const PLUGIN_VERSION: c_uint = 0x200;
/// CRIU 3.17's `CR_PLUGIN_HOOK__MAX`: the oldest CRIU this plugin loads in.
pub const MAX_HOOKS: usize = 10;

/// `cr_plugin_desc_t` as CRIU 3.17 declares it (112 bytes on x86_64).
#[repr(C)]
pub struct PluginDesc {
    pub name: *const c_char,
    pub init: Option<unsafe extern "C" fn(c_int) -> c_int>,
    pub exit: Option<unsafe extern "C" fn(c_int, c_int)>,
    pub version: c_uint,
    pub max_hooks: c_uint,
    pub hooks: [*mut c_void; MAX_HOOKS],
}

// SAFETY: the descriptor is immutable after load; its pointers are to 'static data and functions.
unsafe impl Sync for PluginDesc {}

/// The symbol CRIU looks up with `dlsym`.
#[no_mangle]
pub static CR_PLUGIN_DESC: PluginDesc = PluginDesc {
    name: c"pagestream".as_ptr(),
    init: Some(plugin_init),
    exit: Some(plugin_exit),
    version: PLUGIN_VERSION,
    max_hooks: MAX_HOOKS as c_uint,
    hooks: [std::ptr::null_mut(); MAX_HOOKS],
};

/// The running dump's forwarder, between `init` and `exit`.
static FORWARDER: Mutex<Option<DumpForwarder>> = Mutex::new(None);

unsafe extern "C" fn plugin_init(stage: c_int) -> c_int {
    match catch_unwind(|| init(stage)) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            criu_log(Level::Error, &msg);
            -1
        }
        Err(_) => {
            criu_log(Level::Error, "internal error (panic) in init");
            -1
        }
    }
}

unsafe extern "C" fn plugin_exit(stage: c_int, ret: c_int) {
    if catch_unwind(AssertUnwindSafe(|| exit(stage, ret))).is_err() {
        criu_log(Level::Error, "internal error (panic) in exit");
    }
}

fn init(stage: c_int) -> Result<(), String> {
    match stage {
        STAGE_DUMP | STAGE_PRE_DUMP => {
            let hold = stage == STAGE_DUMP;
            let cfg = PluginConfig::from_env()?;
            let page_size = pagestream_engine::page::page_size();
            let forwarder = DumpForwarder::start(&cfg, page_size, hold)?;
            let what = if hold { "dump" } else { "pre-dump" };
            criu_log(
                Level::Info,
                &format!("relaying the {what} from {} to {} (QUIC, {})", cfg.listen, cfg.to, cfg.security),
            );
            let mut slot = FORWARDER.lock().map_err(|_| "internal error: plugin state poisoned".to_string())?;
            *slot = Some(forwarder);
            Ok(())
        }
        STAGE_RESTORE => {
            let dir = criu_image_dir().ok_or("CRIU has no images directory open")?;
            let marker = restore::check_restorable(&dir)?;
            criu_log(
                Level::Info,
                &format!(
                    "restoring session {} committed by pagestream ({} image files)",
                    marker.session,
                    marker.files.len()
                ),
            );
            Ok(())
        }
        other => Err(format!("unknown plugin stage {other}")),
    }
}

fn exit(stage: c_int, ret: c_int) {
    let forwarder = FORWARDER.lock().ok().and_then(|mut slot| slot.take());
    let Some(forwarder) = forwarder else { return };
    if stage != STAGE_DUMP {
        // Pre-dumps never reach `exit` in CRIU; a forwarder left here only needs stopping.
        forwarder.finish(false, None);
        return;
    }
    match forwarder.finish(ret == 0, criu_image_dir()) {
        Outcome::Committed { summary, files, elapsed } => {
            let page_size = pagestream_engine::page::page_size();
            // At WARN, CRIU's default log level, so that the one summary line is always in the log.
            criu_log(
                Level::Warn,
                &format!(
                    "dump committed as session {} at the destination: {} pages ({:.1} MiB, {:.1} MiB on the wire), \
                     {} image files ({:.1} KiB), {:.2} s",
                    summary.session,
                    summary.data_bytes / page_size,
                    summary.data_bytes as f64 / (1 << 20) as f64,
                    summary.wire_bytes as f64 / (1 << 20) as f64,
                    files.files,
                    files.bytes as f64 / 1024.0,
                    elapsed.as_secs_f64()
                ),
            );
        }
        Outcome::Failed(reason) if ret != 0 => {
            criu_log(Level::Warn, &format!("the dump failed; the destination keeps nothing ({reason})"));
        }
        Outcome::NoSession if ret != 0 => {
            criu_log(Level::Warn, "the dump failed before CRIU connected; the destination keeps nothing");
        }
        failed => {
            let reason = match failed {
                Outcome::Failed(reason) => reason,
                _ => "CRIU never connected: run criu dump with --page-server --address/--port matching \
                      PAGESTREAM_LISTEN"
                    .into(),
            };
            criu_log(
                Level::Error,
                &format!(
                    "the destination did not commit the dump ({reason}); ending CRIU now so that it does not \
                     stop the dumped tasks: they resume when CRIU's ptrace ends"
                ),
            );
            exit_now(1);
        }
    }
}
