//! The image files of a whole dump on the relay (sessions begun with
//! [`BEGIN_WITH_FILES`](super::frame::BEGIN_WITH_FILES), sent by the CRIU plugin after CRIU's
//! CLOSE): which files of a dump directory travel ([`dump_files`]), the source's
//! [`send_files`] (File frame, then the bytes as Data frames, then Commit) and the destination's
//! [`receive_files`] (checked names and sizes, files written into the staged session directory,
//! the [`CommitMarker`] listing them, then the commit).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use pagestream_engine::criu::commit_marker::{CommitMarker, MarkedFile, MARKER_FORMAT};
use pagestream_engine::criu::session_dirs::{CommittedSession, SessionDirWriter};
use pagestream_engine::criu::writer::check_extra_file_name;

use super::frame::RelayFrame;
use super::source::CHUNK_BYTES;
use super::stream::FrameStream;
use super::RelayError;

/// The most files one dump may ship.
pub const MAX_FILES: usize = 100_000;
/// The most bytes (all files together) one dump may ship.
pub const MAX_FILE_BYTES: u64 = 64 << 30;

/// What a dump's files amounted to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Files shipped.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One file of a dump directory to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpFile {
    /// Its name (also its name at the destination).
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
}

/// The files of CRIU's dump directory `dir` that make up the dump besides page data: regular files
/// with plain image file names. Left out: CRIU's logs (`*.log`, still being written), hidden
/// files, links (`parent`: the destination links its own) and anything named like page data or
/// the commit marker (a page-server dump writes no page data locally).
pub fn dump_files(dir: &Path) -> std::io::Result<Vec<DumpFile>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if name.ends_with(".log") || !entry.file_type()?.is_file() || check_extra_file_name(&name).is_err() {
            continue;
        }
        files.push(DumpFile { name, path: entry.path() });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Sends `files` (File, then Data frames) and Commit; returns what was sent. The size sent is the
/// size read: a file that changes while being read is sent as read (CRIU has closed them all).
pub async fn send_files(relay: &mut FrameStream, files: &[DumpFile]) -> Result<FileStats, RelayError> {
    let mut stats = FileStats::default();
    let mut buf = vec![0u8; CHUNK_BYTES];
    for f in files {
        let io = |source| RelayError::File { name: f.name.clone(), source };
        let mut file = fs::File::open(&f.path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        relay.queue(&RelayFrame::File { name: f.name.clone(), size })?;
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            file.read_exact(&mut buf[..want]).map_err(io)?;
            let (encoder, out) = relay.encoder_and_pending();
            encoder.encode_data(&buf[..want], out)?;
            left -= want as u64;
            relay.flush().await?;
        }
        stats.files += 1;
        stats.bytes += size;
    }
    relay.send(&RelayFrame::Commit).await?;
    Ok(stats)
}

/// Receives File frames with their data into `dir` until Commit, then writes the marker and
/// commits; `page_bytes` goes into the marker.
pub async fn receive_files(
    relay: &mut FrameStream,
    mut dir: SessionDirWriter,
    page_bytes: u64,
    stats: &mut FileStats,
) -> Result<CommittedSession, RelayError> {
    let mut files = BTreeMap::new();
    loop {
        let (name, size) = match relay.recv().await? {
            Some(RelayFrame::File { name, size }) => (name, size),
            Some(RelayFrame::Commit) => break,
            Some(RelayFrame::Abort { reason }) => return Err(RelayError::SourceAborted(reason)),
            Some(other) => return Err(RelayError::Unexpected { got: other.name(), when: "among the image files" }),
            None => return Err(RelayError::SourceAborted("the stream ended before Commit".into())),
        };
        if files.contains_key(&name) {
            return Err(RelayError::Files(format!("{name} was sent twice")));
        }
        if files.len() >= MAX_FILES || stats.bytes.saturating_add(size) > MAX_FILE_BYTES {
            return Err(RelayError::Files(format!(
                "{name} ({size} bytes) would exceed the limit of {MAX_FILES} files or {MAX_FILE_BYTES} bytes"
            )));
        }
        let mut file = dir.writer().create_file(&name).map_err(|e| RelayError::Files(e.to_string()))?;
        while file.written() < size {
            match relay.recv().await? {
                Some(RelayFrame::Data(data)) if file.written() + data.len() as u64 <= size => {
                    file.write(&data).map_err(|e| RelayError::Files(e.to_string()))?
                }
                Some(RelayFrame::Data(data)) => {
                    return Err(RelayError::Files(format!(
                        "{name}: {} bytes of data after {} of {size}",
                        data.len(),
                        file.written()
                    )))
                }
                Some(RelayFrame::Abort { reason }) => return Err(RelayError::SourceAborted(reason)),
                Some(other) => return Err(RelayError::Unexpected { got: other.name(), when: "inside a file" }),
                None => return Err(RelayError::SourceAborted(format!("the stream ended inside {name}"))),
            }
        }
        file.finish().map_err(|e| RelayError::Files(e.to_string()))?;
        stats.files += 1;
        stats.bytes += size;
        files.insert(name, size);
    }
    if files.is_empty() {
        return Err(RelayError::Files("a dump without image files cannot be restored".into()));
    }
    let files = files.into_iter().map(|(name, size)| MarkedFile { name, size }).collect();
    let marker = CommitMarker { format: MARKER_FORMAT, session: dir.number(), page_bytes, files };
    dir.writer().mark_complete(&marker).map_err(|e| RelayError::Files(e.to_string()))?;
    dir.commit().map_err(|e| RelayError::Files(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_directory_ships_its_image_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["core-1.img", "inventory.img", "dump.log", "pagemap-1.img", "pages-1.img", ".hidden"] {
            fs::write(dir.path().join(name), name).unwrap();
        }
        fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("../1", dir.path().join("parent")).unwrap();
        let names: Vec<String> = dump_files(dir.path()).unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["core-1.img", "inventory.img"]);
    }
}
