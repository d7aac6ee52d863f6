//! [`PageStore`]: stages received pages in an unnamed temporary file next to the destination
//! (so memory stays flat however large the process is) with an index of where each page's
//! newest copy is, and writes the CRIU image directory on commit.
//!
//! Pages may arrive in any order across rounds (several streams): each carries its round, and
//! an older round never overwrites a newer one. A page re-sent in a later round overwrites its
//! slot in place, so the staging file never grows past the migrated memory. Zero pages take no
//! staging space and become holes in `pages-<id>.img` (CRIU reads holes as zeros).
//!
//! New pages are gathered in a reused, page-aligned buffer and written in large pieces; where the
//! file system allows they are written `O_DIRECT`, so the bulk of staged pages never takes
//! fresh page-cache memory (on this kind of virtual machine first-touching memory costs about
//! 0.8 s per GiB, more than copying the pages). Pages re-sent by later rounds are rewritten in
//! place through a second, buffered descriptor of the same file (a synchronous disk write per
//! page would slow every later round), and reads go through it too; reads see the pages still
//! in the buffer. The kernel keeps the two coherent: an offset is written directly once, before
//! any buffered access to it.
//!
//! With [`enable_snapshots`](PageStore::enable_snapshots), each completed round may start a
//! background parent image ([`snapshot`](super::snapshot)) so that the commit, made while the
//! source is frozen, writes only what changed since.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::image_out::{write_pages, DIRECT_MIN_JOB_BYTES};
use super::snapshot::Snapshots;
use crate::criu::{ImageDirWriter, ImageError, PagemapId};
use crate::sys::aligned::AlignedBuf;
use crate::sys::direct_io::{refused, set_direct};
use crate::PageRun;

mod snapshots;

/// Why storing or committing failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("staging file: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("run {run:?} carries {got} bytes, expected {want}")]
    BadLength { run: PageRun, got: usize, want: u64 },
    #[error("run {0:?} is not page aligned or wraps")]
    BadRun(PageRun),
    #[error("cancelled")]
    Cancelled,
}

/// Bytes of new pages gathered before one write to the staging file.
const PENDING_BYTES: usize = 4 << 20;

/// Alignment of buffers and offsets for `O_DIRECT` I/O.
const DIRECT_ALIGN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Data(u64),
    Zero,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    round: u32,
    /// When this content was stored (the store's write sequence): a snapshot holds it only if
    /// it was stored before the snapshot was planned.
    seq: u64,
    content: Content,
    /// Staging offset owned by this page, kept when it turns zero so it can be reused.
    offset: Option<u64>,
}

/// What a commit made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedImage {
    /// The image directory.
    pub dir: PathBuf,
    /// Background snapshots it holds (`pre-1` ..), the levels of its pre-dump chain.
    pub snapshots: usize,
    /// Page bytes the commit itself wrote (the rest was in the snapshots).
    pub written_bytes: u64,
}

/// Pages received so far, staged on disk.
pub struct PageStore {
    page_size: u64,
    staging: File,
    /// The same file through a buffered descriptor: rewrites and reads.
    cached: File,
    /// Logical length of the staging file, pages still in `pending` included.
    staging_len: u64,
    /// Whether `staging` is open with `O_DIRECT` (aligned buffers, offsets and lengths only).
    direct: bool,
    /// New pages not yet written: they belong at `pending_from ..`.
    pending: AlignedBuf,
    pending_used: usize,
    pending_from: u64,
    index: BTreeMap<(PagemapId, u64), Slot>,
    per_round: HashMap<u32, u64>,
    /// Pages stored so far (each store of a page takes the next number).
    writes: u64,
    /// Bytes written to staging in large pieces and the time it took (a first guess of the
    /// rate the commit writes at, before a snapshot has measured it).
    staged_io: (u64, Duration),
    /// Background parent images, when enabled.
    snapshots: Option<Snapshots>,
    staging_dir: PathBuf,
    /// Image writes of at least this many page bytes go around the page cache.
    direct_min_bytes: u64,
}

impl PageStore {
    /// A store whose staging file lives (unnamed, removed automatically) in `staging_dir`.
    pub fn new(staging_dir: &Path, page_size: u64) -> Result<Self, StoreError> {
        let staging = tempfile::tempfile_in(staging_dir)?;
        let ps = page_size as usize;
        let cached = reopen(&staging)?;
        let direct = ps >= DIRECT_ALIGN && ps % DIRECT_ALIGN == 0 && set_direct(&staging, true);
        let pending_pages = (PENDING_BYTES / ps.max(1)).max(1);
        Ok(Self {
            page_size,
            staging,
            cached,
            staging_len: 0,
            direct,
            pending: AlignedBuf::new(pending_pages * ps)?,
            pending_used: 0,
            pending_from: 0,
            index: BTreeMap::new(),
            per_round: HashMap::new(),
            writes: 0,
            staged_io: (0, Duration::ZERO),
            snapshots: None,
            direct_min_bytes: DIRECT_MIN_JOB_BYTES,
            staging_dir: staging_dir.to_path_buf(),
        })
    }

    /// Image copies (snapshots, commit) of at least `bytes` page bytes go around the page cache
    /// (`O_DIRECT`, in long writes); smaller ones through it. Default
    /// [`DIRECT_MIN_JOB_BYTES`](super::image_out::DIRECT_MIN_JOB_BYTES) (256 MiB); 0 makes
    /// every copy direct, `u64::MAX` none.
    pub fn set_direct_min_bytes(&mut self, bytes: u64) {
        self.direct_min_bytes = bytes;
    }

    fn next_seq(&mut self) -> u64 {
        self.writes += 1;
        self.writes
    }

    /// Writes `data` at `off` of the staging file; if the file system refuses `O_DIRECT` I/O,
    /// falls back to buffered I/O for good.
    fn write_staging(staging: &File, direct: &mut bool, data: &[u8], off: u64) -> Result<(), StoreError> {
        match staging.write_all_at(data, off) {
            Err(e) if *direct && refused(&e) => {
                *direct = false;
                set_direct(staging, false);
                staging.write_all_at(data, off)?;
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// Writes the gathered new pages to the staging file.
    fn flush_pending(&mut self) -> Result<(), StoreError> {
        if self.pending_used > 0 {
            let data = &self.pending.as_slice()[..self.pending_used];
            let t0 = std::time::Instant::now();
            Self::write_staging(&self.staging, &mut self.direct, data, self.pending_from)?;
            if self.direct {
                // Only direct writes tell the disk's rate (buffered ones tell the page cache's).
                self.staged_io = (self.staged_io.0 + data.len() as u64, self.staged_io.1 + t0.elapsed());
            }
            self.pending_from += self.pending_used as u64;
            self.pending_used = 0;
        }
        Ok(())
    }

    /// Appends one new page; returns its staging offset.
    fn append_page(&mut self, page: &[u8]) -> Result<u64, StoreError> {
        if self.pending_used + page.len() > self.pending.len() {
            self.flush_pending()?;
        }
        let off = self.pending_from + self.pending_used as u64;
        self.pending.as_mut_slice()[self.pending_used..self.pending_used + page.len()].copy_from_slice(page);
        self.pending_used += page.len();
        self.staging_len += page.len() as u64;
        Ok(off)
    }

    /// Rewrites the staged page at `off`.
    fn rewrite_page(&mut self, page: &[u8], off: u64) -> Result<(), StoreError> {
        if off >= self.pending_from {
            let at = (off - self.pending_from) as usize;
            self.pending.as_mut_slice()[at..at + page.len()].copy_from_slice(page);
            return Ok(());
        }
        Ok(self.cached.write_all_at(page, off)?)
    }

    /// Reads staged bytes at `off` into `out` (`out` aligned and page-sized pieces when direct).
    fn read_staged(&self, out: &mut [u8], off: u64) -> Result<(), StoreError> {
        let end = off + out.len() as u64;
        let in_file = end.min(self.pending_from).saturating_sub(off) as usize;
        if in_file > 0 {
            self.cached.read_exact_at(&mut out[..in_file], off)?;
        }
        if in_file < out.len() {
            let from = (off + in_file as u64 - self.pending_from) as usize;
            let n = out.len() - in_file;
            out[in_file..].copy_from_slice(&self.pending.as_slice()[from..from + n]);
        }
        Ok(())
    }

    fn check(&self, run: PageRun) -> Result<(), StoreError> {
        PageRun::checked(run.vaddr, run.nr_pages, self.page_size).map(|_| ()).ok_or(StoreError::BadRun(run))
    }

    /// Stores `run` of `id` from round `round` with its data.
    pub fn put_pages(&mut self, round: u32, id: PagemapId, run: PageRun, data: &[u8]) -> Result<(), StoreError> {
        self.check(run)?;
        let want = run.len_bytes(self.page_size);
        if data.len() as u64 != want {
            return Err(StoreError::BadLength { run, got: data.len(), want });
        }
        let ps = self.page_size as usize;
        // Pages seen before are rewritten in their slot; new pages get consecutive slots at the
        // end of the file, gathered in the pending buffer and written in large pieces.
        for (i, page) in data.chunks_exact(ps).enumerate() {
            let key = (id, run.vaddr + i as u64 * self.page_size);
            let old = self.index.get(&key).copied();
            if old.is_some_and(|s| s.round > round) {
                continue; // a newer round already delivered this page
            }
            let offset = match old.and_then(|s| s.offset) {
                Some(off) => {
                    self.rewrite_page(page, off)?;
                    off
                }
                None => self.append_page(page)?,
            };
            let seq = self.next_seq();
            self.index.insert(key, Slot { round, seq, content: Content::Data(offset), offset: Some(offset) });
        }
        *self.per_round.entry(round).or_default() += run.nr_pages;
        Ok(())
    }

    /// Stores `run` of `id` from round `round` as zero pages.
    pub fn put_zero(&mut self, round: u32, id: PagemapId, run: PageRun) -> Result<(), StoreError> {
        self.check(run)?;
        for i in 0..run.nr_pages {
            let key = (id, run.vaddr + i * self.page_size);
            let old = self.index.get(&key).copied();
            if old.is_some_and(|s| s.round > round) {
                continue;
            }
            let seq = self.next_seq();
            self.index.insert(key, Slot { round, seq, content: Content::Zero, offset: old.and_then(|s| s.offset) });
        }
        *self.per_round.entry(round).or_default() += run.nr_pages;
        Ok(())
    }

    /// Forgets `run` of `id` (the source unmapped it), unless a newer round re-sent it.
    pub fn discard(&mut self, round: u32, id: PagemapId, run: PageRun) -> Result<(), StoreError> {
        self.check(run)?;
        for i in 0..run.nr_pages {
            let key = (id, run.vaddr + i * self.page_size);
            if self.index.get(&key).is_some_and(|s| s.round <= round) {
                // The staging slot is simply abandoned; a later page of the same address gets a
                // new one.
                self.index.remove(&key);
            }
        }
        Ok(())
    }

    /// Pages (data and zero) received for `round`.
    pub fn pages_in_round(&self, round: u32) -> u64 {
        self.per_round.get(&round).copied().unwrap_or(0)
    }

    /// The page size of the store.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Distinct pages held.
    pub fn len_pages(&self) -> u64 {
        self.index.len() as u64
    }

    /// Bytes of staging file in use.
    pub fn staging_bytes(&self) -> u64 {
        self.staging_len
    }

    /// The newest content of one page: `Some(data)` (zeros for a zero page), `None` if absent.
    pub fn page(&self, id: PagemapId, vaddr: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self.index.get(&(id, vaddr & !(self.page_size - 1))) {
            None => Ok(None),
            Some(Slot { content: Content::Zero, .. }) => Ok(Some(vec![0u8; self.page_size as usize])),
            Some(Slot { content: Content::Data(off), .. }) => {
                let mut buf = AlignedBuf::new(self.page_size as usize)?;
                self.read_staged(buf.as_mut_slice(), *off)?;
                Ok(Some(buf.as_slice().to_vec()))
            }
        }
    }

    /// Writes the CRIU image directory `final_path` (which must not exist): one pagemap per id,
    /// consecutive pages merged into `PE_PRESENT` entries, zero pages as holes. With snapshots,
    /// it waits for the one being written and holds only what changed since the newest, over
    /// the snapshots moved inside it (see [`snapshot`](super::snapshot)). Atomic: nothing
    /// appears at `final_path` unless everything was written and synced.
    pub fn commit(&mut self, final_path: &Path, pages_id_base: u32) -> Result<CommittedImage, StoreError> {
        let started = std::time::Instant::now();
        let last_round = self.per_round.keys().max().copied();
        if let Some(s) = self.snapshots.as_mut() {
            s.settle_for_commit(last_round);
        }
        let settled = started.elapsed();
        let mut w = ImageDirWriter::create(final_path, self.page_size, pages_id_base)?;
        let newest = self.snapshots.as_ref().and_then(Snapshots::newest);
        let plan = self.index.iter().map(|(&(id, vaddr), slot)| (id, vaddr, slot.staged_over(newest, id, vaddr)));
        let (ps, direct_min) = (self.page_size, self.direct_min_bytes);
        let written_bytes =
            write_pages(&mut w, ps, plan, &mut |buf, off| self.read_staged(buf, off), &|| false, None, direct_min)?;
        let written = started.elapsed();
        let snapshots = match self.snapshots.as_mut() {
            Some(s) => s.adopt_into(&mut w)?,
            None => 0,
        };
        let dir = w.commit()?;
        tracing::debug!(
            settle_ms = settled.as_millis() as u64,
            write_ms = (written - settled).as_millis() as u64,
            written_bytes,
            sync_ms = (started.elapsed() - written).as_millis() as u64,
            "image committed"
        );
        Ok(CommittedImage { dir, snapshots, written_bytes })
    }
}

/// A second open file description of `file` (here: an unnamed temporary file), so that its
/// flags (`O_DIRECT`) are its own.
fn reopen(file: &File) -> Result<File, StoreError> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok(std::fs::OpenOptions::new().read(true).write(true).open(path)?)
}
