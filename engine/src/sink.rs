//! [`PageSink`]: where a migration's pages go, round by round. The engine's pre-copy loop drives
//! a sink; `pagestream-transport` implements it over QUIC (and CRIU's page-server protocol), and
//! [`crate::store::PageStore`] is the destination-side counterpart a transport feeds.

use crate::criu::PagemapId;
use crate::PageRun;

/// Why a sink failed. Transports wrap their own errors in [`SinkError::Transport`].
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("destination refused: {0}")]
    Refused(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("destination aborted the session: {0}")]
    Aborted(String),
}

/// What the sender says about a finished round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundSummary {
    /// Round number (0 = the first, full round).
    pub round: u32,
    /// Pages sent with data this round.
    pub data_pages: u64,
    /// Pages sent as zero this round.
    pub zero_pages: u64,
}

/// What the destination confirms on commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitReceipt {
    /// Where the destination stored the image (its own path, informational).
    pub location: String,
    /// Pages the destination holds (data and zero).
    pub pages: u64,
}

/// Byte counters of a sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkStats {
    /// Page bytes handed to the sink (data pages only).
    pub raw_bytes: u64,
    /// Bytes put on the wire (frames, headers and payloads).
    pub wire_bytes: u64,
    /// The destination's estimate, as of the last acknowledged round, of how long its commit
    /// would take beyond the final round's own pages (e.g. finishing a background image
    /// write); `None` when it gives none.
    pub commit_estimate: Option<std::time::Duration>,
}

/// A destination for pages. Calls come from one thread, in this order per round:
/// `begin_round`, any number of `send_pages` / `send_zero`, `end_round`; after the last round
/// `commit` (or `abort` at any time).
pub trait PageSink {
    /// Starts round `round`.
    fn begin_round(&mut self, round: u32) -> Result<(), SinkError>;
    /// Sends `run` of pagemap `id` with its data (`run.nr_pages` pages, none of them all-zero
    /// necessarily; the sink may compress).
    fn send_pages(&mut self, id: PagemapId, run: PageRun, data: &[u8]) -> Result<(), SinkError>;
    /// Sends `run` of pagemap `id` as zero pages (no payload).
    fn send_zero(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError>;
    /// Tells the destination that `run` of `id` no longer exists in the source (its area was
    /// unmapped or shrunk): it must not be restored. The default sends the run as zero pages,
    /// which is equivalent for anonymous memory; sinks that can drop pages override it.
    fn discard(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        self.send_zero(id, run)
    }
    /// Ends the round and waits until the destination holds every page of it (discarded pages
    /// are not counted).
    fn end_round(&mut self, summary: &RoundSummary) -> Result<(), SinkError>;
    /// Asks the destination to make the migration durable and waits for its confirmation. Only
    /// after `Ok` may the source be stopped for good.
    fn commit(&mut self) -> Result<CommitReceipt, SinkError>;
    /// Tells the destination to discard everything (best effort).
    fn abort(&mut self, reason: &str);
    /// Byte counters so far.
    fn stats(&self) -> SinkStats;
}

/// A boxed sink is a sink (a CLI picks its transport at run time).
impl<S: PageSink + ?Sized> PageSink for Box<S> {
    fn begin_round(&mut self, round: u32) -> Result<(), SinkError> {
        (**self).begin_round(round)
    }
    fn send_pages(&mut self, id: PagemapId, run: PageRun, data: &[u8]) -> Result<(), SinkError> {
        (**self).send_pages(id, run, data)
    }
    fn send_zero(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        (**self).send_zero(id, run)
    }
    fn discard(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        (**self).discard(id, run)
    }
    fn end_round(&mut self, summary: &RoundSummary) -> Result<(), SinkError> {
        (**self).end_round(summary)
    }
    fn commit(&mut self) -> Result<CommitReceipt, SinkError> {
        (**self).commit()
    }
    fn abort(&mut self, reason: &str) {
        (**self).abort(reason)
    }
    fn stats(&self) -> SinkStats {
        (**self).stats()
    }
}
