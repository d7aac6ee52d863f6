//! [`PageReader`]: copies runs of another process's pages into page-aligned buffers with
//! `process_vm_readv` (up to 1024 ranges per call), and survives areas that change under it.
//!
//! A short read means the range it stopped at is gone or unreadable; that range is retried a
//! page at a time through `/proc/PID/mem` (which also reaches pages without PROT_READ), and pages
//! that cannot be read at all are reported in [`ReadReport::missing`], never a crash.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::process::target::{Target, TargetError};
use crate::runset::PageRunSet;
use crate::sys::aligned::AlignedBuf;
use crate::sys::vm_read::{self, IOV_MAX};
use crate::PageRun;

/// Default batch: 4 MiB per `process_vm_readv`.
pub const DEFAULT_BATCH_BYTES: usize = 4 << 20;

/// What a read delivered.
#[derive(Debug)]
pub struct ReadReport {
    /// Pages delivered to the sink.
    pub pages: u64,
    /// Pages that could not be read (unmapped meanwhile).
    pub missing: PageRunSet,
}

/// Reads pages of one process.
pub struct PageReader {
    pid: i32,
    mem: Option<File>,
    buf: AlignedBuf,
    page_size: u64,
}

impl PageReader {
    /// A reader for `target` with the default batch size.
    pub fn new(target: &Target, page_size: u64) -> Result<Self, TargetError> {
        Self::with_batch(target, page_size, DEFAULT_BATCH_BYTES)
    }

    /// A reader whose batches hold `batch_bytes` (rounded to pages, at least one).
    pub fn with_batch(target: &Target, page_size: u64, batch_bytes: usize) -> Result<Self, TargetError> {
        let len = (batch_bytes as u64).max(page_size).div_ceil(page_size) * page_size;
        let buf = AlignedBuf::new(len as usize).map_err(|e| TargetError::Io {
            pid: target.pid(),
            op: "allocate a read buffer for",
            err: e,
        })?;
        Ok(Self { pid: target.pid(), mem: target.open_mem().ok(), buf, page_size })
    }

    /// Reads `runs` in order; `sink(run, bytes)` receives consecutive pieces (whole pages, at most
    /// one batch each). Pages that cannot be read are skipped and reported.
    pub fn read(
        &mut self,
        runs: impl IntoIterator<Item = PageRun>,
        mut sink: impl FnMut(PageRun, &[u8]),
    ) -> Result<ReadReport, TargetError> {
        let ps = self.page_size;
        let batch_pages = self.buf.len() as u64 / ps;
        let mut report = ReadReport { pages: 0, missing: PageRunSet::new(ps) };
        let mut batch: Vec<PageRun> = Vec::with_capacity(IOV_MAX);
        let mut batch_len = 0u64;
        for run in runs {
            for piece in run.chunks(batch_pages, ps) {
                if batch.len() == IOV_MAX || batch_len + piece.nr_pages > batch_pages {
                    self.flush(&batch, &mut sink, &mut report)?;
                    batch.clear();
                    batch_len = 0;
                }
                batch.push(piece);
                batch_len += piece.nr_pages;
            }
        }
        self.flush(&batch, &mut sink, &mut report)?;
        Ok(report)
    }

    fn flush(
        &mut self,
        batch: &[PageRun],
        sink: &mut impl FnMut(PageRun, &[u8]),
        report: &mut ReadReport,
    ) -> Result<(), TargetError> {
        let ps = self.page_size;
        let mut start = 0;
        while start < batch.len() {
            let ranges: Vec<vm_read::RemoteRange> =
                batch[start..].iter().map(|r| (r.vaddr, r.len_bytes(ps) as usize)).collect();
            let got = match vm_read::read(self.pid, self.buf.as_mut_slice(), &ranges) {
                Ok(n) => n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(TargetError::NoSuchProcess(self.pid)),
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => 0,
                Err(e) => return Err(TargetError::from_io(self.pid, "process_vm_readv", e)),
            };
            // Deliver every whole page that arrived.
            let mut off = 0u64;
            let mut failed_at = None;
            for (i, r) in batch[start..].iter().enumerate() {
                let len = r.len_bytes(ps);
                if off + len <= got {
                    sink(*r, &self.buf.as_slice()[off as usize..(off + len) as usize]);
                    report.pages += r.nr_pages;
                    off += len;
                    continue;
                }
                let whole = (got - off) / ps;
                if whole > 0 {
                    let head = PageRun::new(r.vaddr, whole);
                    sink(head, &self.buf.as_slice()[off as usize..(off + whole * ps) as usize]);
                    report.pages += whole;
                }
                failed_at = Some((i, PageRun::new(r.vaddr + whole * ps, r.nr_pages - whole)));
                break;
            }
            let Some((i, rest)) = failed_at else { return Ok(()) };
            self.read_slowly(rest, sink, report);
            start += i + 1;
        }
        Ok(())
    }

    /// Page by page through `/proc/PID/mem`; what fails is missing.
    fn read_slowly(&mut self, run: PageRun, sink: &mut impl FnMut(PageRun, &[u8]), report: &mut ReadReport) {
        let ps = self.page_size;
        for p in run.chunks(1, ps) {
            let page = &mut self.buf.as_mut_slice()[..ps as usize];
            let ok = self.mem.as_ref().is_some_and(|m| m.read_exact_at(page, p.vaddr).is_ok());
            if ok {
                sink(p, page);
                report.pages += 1;
            } else {
                report.missing.insert(p);
            }
        }
    }
}
