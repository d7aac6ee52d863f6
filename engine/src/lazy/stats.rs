//! [`LazyStats`]: what a lazy restore did — faults and their service latency (hdrhistogram),
//! pages installed by faults and by the background push, time to full residency.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Counters and the fault latency histogram of one daemon run.
#[derive(Debug, Clone)]
pub struct LazyStats {
    /// Page faults read from the userfaultfds.
    pub faults: u64,
    /// Faults on pages that are not lazy (holes, removed ranges): resolved with the zero page.
    pub zero_faults: u64,
    /// Faults whose page was already installed (another thread's fault, or the push, got there first).
    pub faults_already_resolved: u64,
    /// Lazy pages installed by the fault path (the faulting page and its batched neighbours).
    pub pages_faulted: u64,
    /// Lazy pages installed by the background push.
    pub pages_pushed: u64,
    /// Lazy pages the kernel said were already present (EEXIST).
    pub pages_already_present: u64,
    /// Lazy pages forgotten because the process dropped them (REMOVE, UNMAP, REMAP onto them).
    pub pages_dropped: u64,
    /// Lazy pages the source said were zero (installed with the zero page).
    pub pages_zero: u64,
    /// Lazy pages when the tasks were handed over.
    pub lazy_pages: u64,
    /// Live tasks handed over.
    pub tasks: u64,
    /// Zombies announced.
    pub zombies: u64,
    /// FORK events (a child userfaultfd taken over).
    pub forks: u64,
    /// From the finish marker to the last lazy page installed.
    pub time_to_full_residency: Option<Duration>,
    /// Fault service latency in nanoseconds, from reading the event to the page being installed.
    pub fault_latency_ns: Histogram<u64>,
    /// The runs installed by faults, in order (dump-time addresses).
    pub working_set: super::working_set::WorkingSet,
}

impl Default for LazyStats {
    fn default() -> Self {
        Self::new()
    }
}

/// A serialisable summary of [`LazyStats`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct LazySummary {
    pub faults: u64,
    pub zero_faults: u64,
    pub faults_already_resolved: u64,
    pub pages_faulted: u64,
    pub pages_pushed: u64,
    pub pages_already_present: u64,
    pub pages_dropped: u64,
    pub pages_zero: u64,
    pub lazy_pages: u64,
    pub tasks: u64,
    pub zombies: u64,
    pub forks: u64,
    pub fault_latency_p50_us: f64,
    pub fault_latency_p99_us: f64,
    pub fault_latency_max_us: f64,
    pub time_to_full_residency_ms: Option<f64>,
}

impl LazyStats {
    /// Empty counters; the histogram covers 1 ns to 60 s with 3 significant digits.
    pub fn new() -> Self {
        let fault_latency_ns =
            Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid");
        Self {
            faults: 0,
            zero_faults: 0,
            faults_already_resolved: 0,
            pages_faulted: 0,
            pages_pushed: 0,
            pages_already_present: 0,
            pages_dropped: 0,
            pages_zero: 0,
            lazy_pages: 0,
            tasks: 0,
            zombies: 0,
            forks: 0,
            time_to_full_residency: None,
            fault_latency_ns,
            working_set: Default::default(),
        }
    }

    /// Records one fault's service time.
    pub fn record_fault_latency(&mut self, d: Duration) {
        self.fault_latency_ns.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
    }

    /// The summary for reports.
    pub fn summary(&self) -> LazySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        let h = &self.fault_latency_ns;
        let (p50, p99, max) = if h.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (us(h.value_at_quantile(0.5)), us(h.value_at_quantile(0.99)), us(h.max()))
        };
        LazySummary {
            faults: self.faults,
            zero_faults: self.zero_faults,
            faults_already_resolved: self.faults_already_resolved,
            pages_faulted: self.pages_faulted,
            pages_pushed: self.pages_pushed,
            pages_already_present: self.pages_already_present,
            pages_dropped: self.pages_dropped,
            pages_zero: self.pages_zero,
            lazy_pages: self.lazy_pages,
            tasks: self.tasks,
            zombies: self.zombies,
            forks: self.forks,
            fault_latency_p50_us: p50,
            fault_latency_p99_us: p99,
            fault_latency_max_us: max,
            time_to_full_residency_ms: self.time_to_full_residency.map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}
