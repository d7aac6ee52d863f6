//! `impl PageSink for QuicSink`: rounds, pages, zero runs and discards gathered into batches for
//! the data streams, and the control requests of a round's end and of the commit (see the parent
//! module for how batches, the window and acknowledgements work).

use std::time::Duration;

use pagestream_engine::criu::PagemapId;
use pagestream_engine::round_digest::RoundDigest;
use pagestream_engine::sink::{CommitReceipt, PageSink, RoundSummary, SinkError, SinkStats};
use pagestream_engine::PageRun;

use super::{QuicSink, State};
use crate::quic::session::{close, CLOSE_ABORT, CLOSE_DONE};
use crate::quic::TransportError;
use crate::wire::{ControlFrame, RunEncoder, NO_COMMIT_ESTIMATE};

impl PageSink for QuicSink {
    fn begin_round(&mut self, round: u32) -> Result<(), SinkError> {
        self.check_fault()?;
        if let State::InRound(open) = self.state {
            return Err(SinkError::Transport(format!("round {open} is still open; end it before round {round}")));
        }
        if let Some(last) = self.last_round.filter(|last| round <= *last) {
            return Err(SinkError::Transport(format!("round {round} does not follow round {last}")));
        }
        if let Err(e) = self.send_control(ControlFrame::RoundBegin { round }) {
            return Err(self.fail(e));
        }
        self.state = State::InRound(round);
        self.round_data = 0;
        self.round_zero = 0;
        self.digest = RoundDigest::new(self.page_size);
        Ok(())
    }

    fn send_pages(&mut self, id: PagemapId, run: PageRun, data: &[u8]) -> Result<(), SinkError> {
        self.check_fault()?;
        let round = self.in_round()?;
        let ps = self.page_size;
        if PageRun::checked(run.vaddr, run.nr_pages, ps).is_none() {
            return Err(SinkError::Transport(format!("{run:?} is not page aligned, empty or wraps")));
        }
        if data.len() as u64 != run.len_bytes(ps) {
            return Err(SinkError::Transport(format!(
                "{run:?} needs {} bytes of data, got {}",
                run.len_bytes(ps),
                data.len()
            )));
        }
        let max = u64::from(self.encoder.limits().max_run_pages());
        for piece in run.chunks(max, ps) {
            let from = ((piece.vaddr - run.vaddr) / ps * ps) as usize;
            let bytes = &data[from..from + piece.len_bytes(ps) as usize];
            self.batch_room(self.encoder.max_frame_len(piece.nr_pages))?;
            if let Err(e) = self.encoder.encode_pages_into(round, id, piece, bytes, &mut self.batch) {
                return Err(self.fail(e.into()));
            }
            self.batch_added()?;
        }
        self.digest.add_pages(run.vaddr, data);
        self.round_data += run.nr_pages;
        self.stats.raw_bytes += data.len() as u64;
        self.report.data_pages += run.nr_pages;
        Ok(())
    }

    fn send_zero(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        self.queue_without_payload(id, run, RunEncoder::encode_zero_into)?;
        self.digest.add_zero(run.vaddr, run.nr_pages);
        self.round_zero += run.nr_pages;
        self.report.zero_pages += run.nr_pages;
        Ok(())
    }

    fn discard(&mut self, id: PagemapId, run: PageRun) -> Result<(), SinkError> {
        // Not a page of the round: not counted, not in the digest.
        self.queue_without_payload(id, run, RunEncoder::encode_discard_into)
    }

    fn end_round(&mut self, summary: &RoundSummary) -> Result<(), SinkError> {
        self.check_fault()?;
        let round = self.in_round()?;
        if summary.round != round {
            return Err(SinkError::Transport(format!(
                "end_round for round {} while round {round} is open",
                summary.round
            )));
        }
        if (summary.data_pages, summary.zero_pages) != (self.round_data, self.round_zero) {
            tracing::warn!(
                round,
                summary_data = summary.data_pages,
                summary_zero = summary.zero_pages,
                sent_data = self.round_data,
                sent_zero = self.round_zero,
                "round summary disagrees with the pages sent; announcing the pages sent"
            );
        }
        self.flush_batch()?;
        let digest = std::mem::replace(&mut self.digest, RoundDigest::new(self.page_size)).value();
        let frame = ControlFrame::RoundEnd { round, data_pages: self.round_data, zero_pages: self.round_zero, digest };
        match self.request(frame, "RoundAck", |f| matches!(f, ControlFrame::RoundAck { round: r, .. } if *r == round)) {
            Ok(ack) => {
                if let ControlFrame::RoundAck { commit_ms, .. } = ack {
                    self.commit_estimate =
                        (commit_ms != NO_COMMIT_ESTIMATE).then(|| Duration::from_millis(u64::from(commit_ms)));
                }
                self.state = State::Idle;
                self.last_round = Some(round);
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn commit(&mut self) -> Result<CommitReceipt, SinkError> {
        self.check_fault()?;
        if let State::InRound(open) = self.state {
            return Err(SinkError::Transport(format!("round {open} is still open; end it before commit")));
        }
        self.report.raw_bytes = self.stats.raw_bytes;
        self.report.wire_bytes = self.stats.wire_bytes;
        if let Err(e) = self.send_control(ControlFrame::Stats(self.report)) {
            return Err(self.fail(e));
        }
        let frame = ControlFrame::Commit {
            final_round: self.last_round.unwrap_or(0),
            total_pages: self.report.data_pages + self.report.zero_pages,
        };
        match self.request(frame, "CommitAck", |f| matches!(f, ControlFrame::CommitAck { .. })) {
            Ok(ControlFrame::CommitAck { location, pages }) => {
                self.state = State::Committed;
                self.control.finish();
                // The close goes out in the background; waiting for the close handshake (a few
                // round trips) would keep the source frozen for nothing: the copy is durable.
                // Dropping the sink waits for it.
                close(&self.conn, CLOSE_DONE, "committed");
                Ok(CommitReceipt { location, pages })
            }
            Ok(other) => Err(self.fail(TransportError::Violation(format!("expected CommitAck, got {}", other.name())))),
            Err(TransportError::Aborted(reason)) => {
                let err = self.fail(TransportError::Aborted(reason));
                Err(match err {
                    SinkError::Aborted(reason) => SinkError::Refused(reason),
                    other => other,
                })
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn abort(&mut self, reason: &str) {
        if !matches!(self.state, State::Idle | State::InRound(_)) {
            return;
        }
        tracing::info!("aborting the QUIC page stream: {reason}");
        self.batch.clear();
        let control = &mut self.control;
        self.rt.block_on(control.send_abort(reason, Duration::from_secs(1)));
        self.state = State::Aborted;
        self.shut(CLOSE_ABORT, reason);
    }

    fn stats(&self) -> SinkStats {
        let (_, control_out) = self.control.bytes();
        let batched = self.batch.len() as u64;
        SinkStats {
            raw_bytes: self.stats.raw_bytes,
            wire_bytes: self.stats.wire_bytes + batched + control_out,
            commit_estimate: self.commit_estimate,
        }
    }
}
