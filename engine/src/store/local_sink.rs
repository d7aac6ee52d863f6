//! [`LocalSink`]: a [`PageSink`] straight into a [`PageStore`] on this host, committing to an
//! image directory. For migrating to local disk, and for testing the pre-copy loop without a
//! network. Each completed round may start a background snapshot, so the commit writes only
//! what changed since (a pre-dump chain inside the directory).

use std::path::{Path, PathBuf};

use super::page_store::PageStore;
use crate::criu::PagemapId;
use crate::sink::{CommitReceipt, PageSink, RoundSummary, SinkError, SinkStats};
use crate::PageRun;

/// Pages into a local store, committed as the image directory `dir`.
pub struct LocalSink {
    store: PageStore,
    dir: PathBuf,
    round: u32,
    stats: SinkStats,
    aborted: bool,
}

impl LocalSink {
    /// A sink that will commit to `dir` (which must not exist), staging next to it.
    pub fn new(dir: &Path, page_size: u64) -> Result<Self, SinkError> {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut store = PageStore::new(parent, page_size).map_err(|e| SinkError::Refused(e.to_string()))?;
        store.enable_snapshots_or_warn();
        Ok(Self { store, dir: dir.to_path_buf(), round: 0, stats: SinkStats::default(), aborted: false })
    }
}

impl PageSink for LocalSink {
    fn begin_round(&mut self, round: u32) -> Result<(), SinkError> {
        self.round = round;
        Ok(())
    }

    fn send_pages(&mut self, id: PagemapId, run: PageRun, data: &[u8]) -> Result<(), SinkError> {
        self.stats.raw_bytes += data.len() as u64;
        self.stats.wire_bytes += data.len() as u64;
        self.store.put_pages(self.round, id, run, data).map_err(|e| SinkError::Refused(e.to_string()))
    }

    fn send_zero(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        self.store.put_zero(self.round, id, run).map_err(|e| SinkError::Refused(e.to_string()))
    }

    fn discard(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        self.store.discard(self.round, id, run).map_err(|e| SinkError::Refused(e.to_string()))
    }

    fn end_round(&mut self, summary: &RoundSummary) -> Result<(), SinkError> {
        let got = self.store.pages_in_round(summary.round);
        if got != summary.data_pages + summary.zero_pages {
            return Err(SinkError::Refused(format!(
                "round {} holds {got} pages, sender said {}",
                summary.round,
                summary.data_pages + summary.zero_pages
            )));
        }
        // As of the round's end, as a remote destination reports it with its acknowledgement.
        self.stats.commit_estimate = self.store.round_complete(summary.round);
        Ok(())
    }

    fn commit(&mut self) -> Result<CommitReceipt, SinkError> {
        if self.aborted {
            return Err(SinkError::Aborted("aborted before commit".into()));
        }
        let image = self.store.commit(&self.dir, 1).map_err(|e| SinkError::Refused(e.to_string()))?;
        Ok(CommitReceipt { location: image.dir.display().to_string(), pages: self.store.len_pages() })
    }

    fn abort(&mut self, _reason: &str) {
        self.aborted = true;
    }

    fn stats(&self) -> SinkStats {
        self.stats
    }
}
