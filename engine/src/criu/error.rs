//! [`ImageError`]: every defect an image reader or writer reports, naming the file and offset.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// An error about one image file (or directory), with the byte offset of the defect when known.
#[derive(Debug, thiserror::Error)]
pub struct ImageError {
    /// The file or directory the defect is in.
    pub path: PathBuf,
    /// Byte offset of the defective record, when the defect is inside a file.
    pub offset: Option<u64>,
    /// What is wrong.
    #[source]
    pub kind: ImageErrorKind,
}

impl ImageError {
    /// An error in `path` at byte `offset`.
    pub fn at(path: impl Into<PathBuf>, offset: u64, kind: ImageErrorKind) -> Self {
        Self { path: path.into(), offset: Some(offset), kind }
    }
    /// An error about `path` as a whole.
    pub fn file(path: impl Into<PathBuf>, kind: ImageErrorKind) -> Self {
        Self { path: path.into(), offset: None, kind }
    }
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, err: io::Error) -> Self {
        Self::file(path, ImageErrorKind::Io(err))
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(off) = self.offset {
            write!(f, " at offset {off}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// The kinds of defects.
#[derive(Debug, thiserror::Error)]
pub enum ImageErrorKind {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad magic: expected {expected:#010x}, found {found:#010x}")]
    BadMagic { expected: u32, found: u32 },
    #[error("truncated {what}: need {need} bytes, {have} left")]
    Truncated { what: &'static str, need: u64, have: u64 },
    #[error("undecodable protobuf record: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("record lacks required field `{0}`")]
    MissingField(&'static str),
    #[error("pagemap has no head record")]
    NoHead,
    #[error("entry at {vaddr:#x} has nr_pages == 0")]
    ZeroPages { vaddr: u64 },
    #[error("entry at {vaddr:#x} is not page aligned")]
    Unaligned { vaddr: u64 },
    #[error("entry at {vaddr:#x} with {nr_pages} pages runs past the end of the address space")]
    Wraps { vaddr: u64, nr_pages: u64 },
    #[error("entry at {vaddr:#x} is below the previous entry's end {prev_end:#x} (unsorted or overlapping)")]
    Unsorted { vaddr: u64, prev_end: u64 },
    #[error("entry at {vaddr:#x} has unsupported flags {flags:#x} (written by a newer CRIU?)")]
    UnknownFlags { vaddr: u64, flags: u32 },
    #[error("pages file is {have} bytes but its pagemap {pagemap} claims {need}")]
    PagesTooShort { pagemap: String, need: u64, have: u64 },
    #[error("parent link -> {target} does not resolve: {err}")]
    ParentDangling { target: PathBuf, err: io::Error },
    #[error("parent link -> {target} escapes the image tree {root}")]
    ParentEscapes { target: PathBuf, root: PathBuf },
    #[error("parent chain loops back to {0}")]
    ParentLoop(PathBuf),
    #[error("PE_PARENT entry {vaddr:#x} x {nr_pages} but the image has no parent")]
    NoParent { vaddr: u64, nr_pages: u64 },
    #[error("missing {vaddr:#x} x {nr_pages} in parent pagemap {parent}")]
    MissingInParent { vaddr: u64, nr_pages: u64, parent: PathBuf },
    #[error("{0}")]
    Invalid(String),
}
