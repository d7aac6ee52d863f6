//! pagestream's CRIU plugin (a cdylib CRIU loads with `--libdir`).
//!
//! The plugin's descriptor (`CR_PLUGIN_DESC`) and its dump/restore hooks arrive with the
//! "CRIU plugin" issue; until then this crate only holds the plugin's place in the workspace and
//! exports nothing, so a CRIU pointed at it would refuse it rather than load a plugin that does
//! nothing.
