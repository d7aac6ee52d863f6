//! The restore-side check: CRIU restores only from a directory that pagestream committed as a
//! complete dump (its [`CommitMarker`] is there and every file it lists has its recorded size).

use std::path::Path;

use pagestream_engine::criu::CommitMarker;

/// `Ok(marker)` when `dir` holds a complete dump committed by pagestream; otherwise why not.
pub fn check_restorable(dir: &Path) -> Result<CommitMarker, String> {
    // CRIU hands over /proc/self/fd/N: name the directory itself in messages.
    let dir = std::fs::read_link(dir).unwrap_or_else(|_| dir.to_path_buf());
    CommitMarker::verify(&dir).map_err(|e| {
        format!("refusing to restore from {}: {e} (restore only what `pagestream receive` committed)", dir.display())
    })
}
