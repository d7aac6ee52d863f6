//! [`CommitMarker`]: the file that says an image directory holds a *complete* dump that
//! pagestream received and committed durably (page data and every other image file), written
//! inside the directory before its atomic rename so that it exists exactly when the directory
//! does. The CRIU plugin refuses to restore from a directory without a valid marker.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{ImageError, ImageErrorKind};

/// The marker's file name inside the image directory.
pub const MARKER_NAME: &str = "pagestream-complete.json";
/// The marker format this build writes and reads.
pub const MARKER_FORMAT: u32 = 1;
/// The largest marker accepted when reading (bytes).
const MAX_MARKER_BYTES: u64 = 16 << 20;

/// One image file the dump shipped besides page data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkedFile {
    /// File name inside the directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What the marker records about the committed dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMarker {
    /// [`MARKER_FORMAT`].
    pub format: u32,
    /// The session number the destination gave the dump (`DIR/k`).
    pub session: u64,
    /// Bytes of page data received.
    pub page_bytes: u64,
    /// The other image files, sorted by name.
    pub files: Vec<MarkedFile>,
}

impl CommitMarker {
    /// The marker as the bytes written to [`MARKER_NAME`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Reads and checks the marker of `dir`: it exists, parses, has this format, and every file it
    /// lists is in `dir` as a regular file of the recorded size.
    pub fn verify(dir: &Path) -> Result<CommitMarker, ImageError> {
        let path = dir.join(MARKER_NAME);
        let invalid = |msg: String| ImageError::file(&path, ImageErrorKind::Invalid(msg));
        let meta = fs::symlink_metadata(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                invalid("missing: pagestream did not commit this directory as a complete dump".into())
            } else {
                ImageError::io(&path, e)
            }
        })?;
        if !meta.is_file() || meta.len() > MAX_MARKER_BYTES {
            return Err(invalid(format!("not a regular file of at most {MAX_MARKER_BYTES} bytes")));
        }
        let bytes = fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
        let marker: CommitMarker = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("unreadable: {e}")))?;
        if marker.format != MARKER_FORMAT {
            return Err(invalid(format!("format {} (this build reads {MARKER_FORMAT})", marker.format)));
        }
        for f in &marker.files {
            if f.name.contains('/') || f.name.starts_with('.') || f.name.is_empty() {
                return Err(invalid(format!("lists the file name {:?}", f.name)));
            }
            let file = dir.join(&f.name);
            match fs::symlink_metadata(&file) {
                Ok(m) if m.is_file() && m.len() == f.size => {}
                Ok(m) => {
                    return Err(invalid(format!(
                        "{} should be a regular file of {} bytes but is {} bytes{}",
                        f.name,
                        f.size,
                        m.len(),
                        if m.is_file() { "" } else { " and not a regular file" }
                    )))
                }
                Err(e) => return Err(invalid(format!("lists {} but it cannot be read: {e}", f.name))),
            }
        }
        Ok(marker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> CommitMarker {
        CommitMarker {
            format: MARKER_FORMAT,
            session: 3,
            page_bytes: 8192,
            files: vec![MarkedFile { name: "core-1.img".into(), size: 5 }],
        }
    }

    #[test]
    fn a_marker_verifies_against_its_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("core-1.img"), b"12345").unwrap();
        fs::write(dir.path().join(MARKER_NAME), marker().to_bytes()).unwrap();
        assert_eq!(CommitMarker::verify(dir.path()).unwrap(), marker());
    }

    #[test]
    fn missing_changed_or_foreign_markers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = CommitMarker::verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("did not commit this directory"), "{err}");

        fs::write(dir.path().join("core-1.img"), b"1234").unwrap();
        fs::write(dir.path().join(MARKER_NAME), marker().to_bytes()).unwrap();
        let err = CommitMarker::verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("core-1.img should be a regular file of 5 bytes but is 4 bytes"), "{err}");

        fs::write(dir.path().join(MARKER_NAME), b"{\"format\": 9}").unwrap();
        let err = CommitMarker::verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unreadable"), "{err}");

        let mut evil = marker();
        evil.files[0].name = "../x".into();
        fs::write(dir.path().join(MARKER_NAME), evil.to_bytes()).unwrap();
        assert!(CommitMarker::verify(dir.path()).unwrap_err().to_string().contains("lists the file name"));
    }
}
