//! [`PreCopyPolicy`]: when to stop iterating and freeze.
//!
//! After each round the dirty set for the next one is known. Its transfer time is estimated as
//! `dirty bytes x compression ratio / bandwidth`, both measured on the rounds so far (the last
//! two rounds, weighted to the latest), plus what the destination says its commit would take
//! beyond those pages (a background image write still going on). Pre-copy stops when that
//! estimate fits the downtime budget, when rounds stop shrinking (the process dirties memory as
//! fast as we send it), at the round limit, or at the deadline. When the pages would fit but
//! the destination's commit would not, it waits a little and sends another round (shrinking is
//! not judged then: the rounds are small anyway), as long as that commit estimate keeps coming
//! down.

use std::time::Duration;

/// Why pre-copy stopped iterating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The estimated final round fits the downtime budget.
    FitsDowntime,
    /// The dirty set stopped shrinking: more rounds would not converge.
    NotShrinking,
    /// `max_rounds` reached.
    MaxRounds,
    /// The deadline passed.
    Deadline,
    /// No live rounds were asked for: freeze first, send once (a sink that takes one round, such
    /// as a real `criu page-server`).
    StopAndCopy,
}

/// The decision after a round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Send another live round.
    Continue,
    /// The last round would fit but the destination's commit would not yet: wait this long
    /// (while it writes), then send another live round.
    Wait(Duration),
    /// Freeze and send the final round.
    Stop(StopReason),
}

/// What the policy knows about a finished round.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundMeasure {
    /// Pages the round carried (data and zero).
    pub pages: u64,
    /// Bytes of page data handed to the transport.
    pub raw_bytes: u64,
    /// Bytes the transport put on the wire.
    pub wire_bytes: u64,
    /// How long the round took (read, compress, send, acknowledged).
    pub duration: Duration,
    /// The destination's commit estimate once the round was acknowledged
    /// ([`SinkStats::commit_estimate`](crate::sink::SinkStats::commit_estimate)).
    pub commit: Option<Duration>,
}

/// The convergence policy.
#[derive(Clone, Debug)]
pub struct PreCopyPolicy {
    /// The downtime budget for the final (frozen) round.
    pub downtime: Duration,
    /// Live rounds at most (the final round comes on top).
    pub max_rounds: u32,
    /// Stop iterating once this much time has passed since the start.
    pub deadline: Option<Duration>,
    /// A round must be smaller than this fraction of the previous one to count as shrinking.
    pub shrink_factor: f64,
}

impl Default for PreCopyPolicy {
    fn default() -> Self {
        Self { downtime: Duration::from_millis(300), max_rounds: 30, deadline: None, shrink_factor: 0.9 }
    }
}

/// Rounds within which a destination's commit estimate must have come down for pre-copy to
/// keep waiting for it: with pauses of up to [`MAX_WAIT`] between them (~2 s in all), long
/// enough for one of the destination's 128 MiB sync steps on a slow disk.
pub const STALL_ROUNDS: usize = 16;

/// How far below its highest value in the window the estimate must be to count as coming down.
const STALL_FALL: f64 = 0.9;

/// Wire bytes a round must carry for its bandwidth to count in [`PreCopyPolicy::estimate`].
pub const MIN_BANDWIDTH_SAMPLE: u64 = 1 << 20;

/// The longest [`Verdict::Wait`].
pub const MAX_WAIT: Duration = Duration::from_millis(100);

impl PreCopyPolicy {
    /// Estimated time to send `pages` pages, from the measured rounds (`None` before any):
    /// bandwidth and wire bytes per page of the last two rounds big enough to measure them
    /// ([`MIN_BANDWIDTH_SAMPLE`], the latest weighted twice), else of the biggest round. A round
    /// of a few pages takes the same few milliseconds of round trips whatever the link, so its
    /// "bandwidth" says nothing about the next round's.
    pub fn estimate(&self, history: &[RoundMeasure], pages: u64) -> Option<Duration> {
        let measured = || history.iter().rev().filter(|m| m.duration > Duration::ZERO);
        let mut sample: Vec<&RoundMeasure> =
            measured().filter(|m| m.wire_bytes >= MIN_BANDWIDTH_SAMPLE).take(2).collect();
        if sample.is_empty() {
            sample.extend(measured().max_by_key(|m| m.wire_bytes));
        }
        if sample.is_empty() {
            return None;
        }
        // Weight the latest round twice.
        let (mut wire, mut secs, mut pgs) = (0.0, 0.0, 0.0);
        for (i, m) in sample.iter().enumerate() {
            let w = if i == 0 { 2.0 } else { 1.0 };
            wire += w * m.wire_bytes as f64;
            secs += w * m.duration.as_secs_f64();
            pgs += w * m.pages.max(1) as f64;
        }
        // Wire bytes per page (compression and zero elision included) over wire bytes per second.
        let bandwidth = (wire / secs.max(1e-6)).max(1.0);
        let wire_per_page = wire / pgs;
        Some(Duration::from_secs_f64(pages as f64 * wire_per_page / bandwidth))
    }

    /// Decides after live round `round` (0-based) given the measured rounds so far, the pages
    /// now dirty, and the time since the migration started.
    pub fn decide(
        &self,
        history: &[RoundMeasure],
        round: u32,
        next_pages: u64,
        elapsed: Duration,
    ) -> (Verdict, Option<Duration>) {
        let transfer = self.estimate(history, next_pages);
        let commit = history.last().and_then(|m| m.commit).unwrap_or_default();
        let est = transfer.map(|t| t + commit);
        if est.is_some_and(|e| e <= self.downtime) {
            return (Verdict::Stop(StopReason::FitsDowntime), est);
        }
        if self.deadline.is_some_and(|d| elapsed >= d) {
            return (Verdict::Stop(StopReason::Deadline), est);
        }
        if round + 1 >= self.max_rounds {
            return (Verdict::Stop(StopReason::MaxRounds), est);
        }
        // The pages fit and the destination's commit does not yet: wait while its estimate
        // comes down (a background write making progress), not once it stalled. Progress comes
        // in steps (the destination syncs in pieces) and the estimate jumps up when its rate is
        // first measured, so it counts as coming down if the latest value is clearly below the
        // highest of the last STALL_ROUNDS rounds (a wobble of the estimate is not progress).
        let window = &history[history.len().saturating_sub(STALL_ROUNDS + 1)..];
        let peak = window.iter().filter_map(|m| m.commit).max().unwrap_or_default();
        let fell = commit.as_secs_f64() < peak.as_secs_f64() * STALL_FALL;
        let commit_coming_down = history.len() <= STALL_ROUNDS || fell;
        if let Some(t) = transfer.filter(|t| *t <= self.downtime && commit_coming_down) {
            let over = (t + commit).saturating_sub(self.downtime);
            return (Verdict::Wait(over.min(MAX_WAIT)), est);
        }
        // Round 0 carried everything; shrinking is judged from round 1 on.
        if history.len() >= 2 {
            let last = history[history.len() - 1].pages as f64;
            if next_pages as f64 > last * self.shrink_factor {
                return (Verdict::Stop(StopReason::NotShrinking), est);
            }
        }
        (Verdict::Continue, est)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u64 = 4096;

    fn m(pages: u64, ms: u64) -> RoundMeasure {
        // 50% compression
        RoundMeasure {
            pages,
            raw_bytes: pages * PS,
            wire_bytes: pages * PS / 2,
            duration: Duration::from_millis(ms),
            commit: None,
        }
    }

    #[test]
    fn waits_while_the_destination_commit_would_not_fit() {
        let p = PreCopyPolicy { downtime: Duration::from_millis(50), max_rounds: 5, ..Default::default() };
        // 10 pages per ms: 400 pages take 40 ms; a 200 ms commit on top does not fit: wait (at
        // most MAX_WAIT), even though the rounds stopped shrinking.
        let slow = |ms| RoundMeasure { commit: Some(Duration::from_millis(ms)), ..m(5_000, 500) };
        let h = [m(10_000, 1000), slow(200)];
        let (v, est) = p.decide(&h, 1, 9_500, Duration::ZERO);
        assert_eq!(v, Verdict::Stop(StopReason::NotShrinking), "the pages alone do not fit: {est:?}");
        let (v, est) = p.decide(&h, 1, 400, Duration::ZERO);
        assert_eq!(v, Verdict::Wait(MAX_WAIT));
        let est = est.unwrap().as_secs_f64();
        assert!((est - 0.24).abs() < 1e-6, "{est}");
        let h = [m(10_000, 1000), slow(60)];
        let (v, _) = p.decide(&h, 1, 400, Duration::ZERO);
        assert!(matches!(v, Verdict::Wait(w) if (w.as_secs_f64() - 0.05).abs() < 1e-6), "{v:?}");
        let h = [m(10_000, 1000), slow(5)];
        assert_eq!(p.decide(&h, 1, 400, Duration::ZERO).0, Verdict::Stop(StopReason::FitsDowntime));
        // A commit estimate that stopped coming down over STALL_ROUNDS rounds (nothing being
        // written) is not waited for; a pause between two steps of progress is.
        let long = PreCopyPolicy { max_rounds: 30, ..p.clone() };
        let with = |commits: &[u64]| {
            let mut h = vec![m(10_000, 1000)];
            h.extend(commits.iter().map(|&c| slow(c)));
            long.decide(&h, h.len() as u32, 400, Duration::ZERO).0
        };
        let n = STALL_ROUNDS;
        let mut falls = vec![250];
        falls.extend([200].repeat(n));
        assert_eq!(with(&falls), Verdict::Wait(MAX_WAIT));
        assert_eq!(with(&[200].repeat(n + 1)), Verdict::Continue);
        // The estimate jumps up once its rate is measured, then comes down again: still waited for.
        let mut jump = vec![300, 280, 400];
        jump.extend([420].repeat(n - 3));
        jump.push(350);
        assert_eq!(with(&jump), Verdict::Wait(MAX_WAIT));
        // A wobble is not progress.
        let wobble: Vec<u64> = (0..=n as u64).map(|i| 200 + i % 2).collect();
        assert_eq!(with(&wobble), Verdict::Continue);
        // Early on (fewer rounds than the window) it is waited for.
        assert_eq!(with(&[200, 200, 200]), Verdict::Wait(MAX_WAIT));
        // The round limit still holds.
        let h = [m(10_000, 1000), slow(200)];
        assert_eq!(p.decide(&h, 4, 400, Duration::ZERO).0, Verdict::Stop(StopReason::MaxRounds));
    }

    #[test]
    fn estimate_follows_measured_bandwidth() {
        let p = PreCopyPolicy::default();
        assert_eq!(p.estimate(&[], 10), None);
        // 1000 pages in 100 ms -> 10 pages per ms -> 500 pages take 50 ms.
        let e = p.estimate(&[m(1000, 100)], 500).unwrap();
        assert!((e.as_secs_f64() - 0.05).abs() < 1e-6, "{e:?}");
        // Rounds of a few pages (a few ms of round trips each) do not set the bandwidth.
        let e = p.estimate(&[m(1000, 100), m(2, 20), m(3, 15)], 500).unwrap();
        assert!((e.as_secs_f64() - 0.05).abs() < 1e-6, "{e:?}");
        // Without a big round, the biggest one does.
        let e = p.estimate(&[m(40, 8), m(2, 20)], 500).unwrap();
        assert!((e.as_secs_f64() - 0.1).abs() < 1e-6, "{e:?}");
    }

    #[test]
    fn stops_when_the_last_round_fits() {
        let p = PreCopyPolicy { downtime: Duration::from_millis(50), ..Default::default() };
        let h = [m(10_000, 1000)];
        assert_eq!(p.decide(&h, 0, 400, Duration::ZERO).0, Verdict::Stop(StopReason::FitsDowntime));
        assert_eq!(p.decide(&h, 0, 4000, Duration::ZERO).0, Verdict::Continue);
    }

    #[test]
    fn stops_when_not_shrinking_at_limit_or_deadline() {
        let p = PreCopyPolicy {
            downtime: Duration::from_millis(1),
            max_rounds: 5,
            deadline: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        let h = [m(10_000, 1000), m(3000, 300)];
        assert_eq!(p.decide(&h, 1, 1000, Duration::ZERO).0, Verdict::Continue);
        assert_eq!(p.decide(&h, 1, 2900, Duration::ZERO).0, Verdict::Stop(StopReason::NotShrinking));
        assert_eq!(p.decide(&h, 4, 1000, Duration::ZERO).0, Verdict::Stop(StopReason::MaxRounds));
        assert_eq!(p.decide(&h, 1, 1000, Duration::from_secs(11)).0, Verdict::Stop(StopReason::Deadline));
    }
}
