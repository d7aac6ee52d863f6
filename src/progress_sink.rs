//! [`ProgressSink`]: wraps any [`PageSink`] and shows the pages going out as a progress spinner
//! on a terminal (nothing when stderr is not a terminal or `--json` is on).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pagestream_engine::criu::PagemapId;
use pagestream_engine::sink::{CommitReceipt, PageSink, RoundSummary, SinkError, SinkStats};
use pagestream_engine::PageRun;

/// A sink that reports progress.
pub struct ProgressSink<S> {
    inner: S,
    bar: ProgressBar,
    round: u32,
    pages: u64,
}

impl<S: PageSink> ProgressSink<S> {
    /// Wraps `inner`; `show = false` hides the spinner.
    pub fn new(inner: S, show: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            None,
            if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
        );
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Self { inner, bar, round: 0, pages: 0 }
    }

    fn tick(&mut self, n: u64) {
        self.pages += n;
        if self.bar.is_hidden() {
            return; // --json or no terminal: no message to build on every call
        }
        let st = self.inner.stats();
        self.bar.set_message(format!(
            "round {}: {} pages, {} on the wire",
            self.round,
            self.pages,
            crate::round_report::human_bytes(st.wire_bytes)
        ));
        self.bar.tick();
    }
}

impl<S: PageSink> PageSink for ProgressSink<S> {
    fn begin_round(&mut self, round: u32) -> Result<(), SinkError> {
        self.round = round;
        self.pages = 0;
        self.inner.begin_round(round)
    }
    fn send_pages(&mut self, id: PagemapId, run: PageRun, data: &[u8]) -> Result<(), SinkError> {
        self.inner.send_pages(id, run, data)?;
        self.tick(run.nr_pages);
        Ok(())
    }
    fn send_zero(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        self.inner.send_zero(id, run)?;
        self.tick(run.nr_pages);
        Ok(())
    }
    fn discard(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        self.inner.discard(id, run)
    }
    fn end_round(&mut self, summary: &RoundSummary) -> Result<(), SinkError> {
        self.bar.set_message(format!("round {}: waiting for the destination", summary.round));
        self.inner.end_round(summary)
    }
    fn commit(&mut self) -> Result<CommitReceipt, SinkError> {
        self.bar.set_message("committing at the destination".to_string());
        let r = self.inner.commit();
        self.bar.finish_and_clear();
        r
    }
    fn abort(&mut self, reason: &str) {
        self.bar.finish_and_clear();
        self.inner.abort(reason)
    }
    fn stats(&self) -> SinkStats {
        self.inner.stats()
    }
}
