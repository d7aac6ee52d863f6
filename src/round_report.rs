//! Printing a migration as it goes: the per-round table (or one JSON object per round) and the
//! totals, shared by `pagestream send` and `pagestream demo`.

use std::io::Write;

use pagestream_engine::precopy::{MigrationReport, RoundRecord};
use serde_json::json;

/// Where round lines go.
pub struct RoundPrinter {
    json: bool,
    header_done: bool,
}

impl RoundPrinter {
    /// A printer for text (`json = false`) or JSON lines.
    pub fn new(json: bool) -> Self {
        Self { json, header_done: false }
    }

    /// Prints one round.
    pub fn round(&mut self, r: &RoundRecord) {
        let mut out = std::io::stdout().lock();
        if self.json {
            let line = json!({
                "round": r.round, "final": r.final_round, "dirty_pages": r.dirty_pages,
                "zero_pages": r.zero_pages, "sent_pages": r.sent_pages, "discarded_pages": r.discarded_pages,
                "wire_bytes": r.wire_bytes, "raw_bytes": r.raw_bytes, "duration_ms": r.duration_ms,
                "est_downtime_ms": r.est_downtime_ms,
            });
            let _ = writeln!(out, "{line}");
            return;
        }
        if !self.header_done {
            let _ = writeln!(
                out,
                "{:>6} {:>11} {:>10} {:>10} {:>12} {:>7} {:>10} {:>13}",
                "round", "dirty pages", "zero pages", "sent pages", "wire bytes", "ratio", "duration", "est. downtime"
            );
            self.header_done = true;
        }
        let ratio = if r.raw_bytes > 0 { r.wire_bytes as f64 / r.raw_bytes as f64 } else { 0.0 };
        let est = r.est_downtime_ms.map_or("-".to_string(), |e| format!("{e:.1} ms"));
        let label = if r.final_round { format!("{}*", r.round) } else { r.round.to_string() };
        let _ = writeln!(
            out,
            "{label:>6} {:>11} {:>10} {:>10} {:>12} {:>7.3} {:>7.1} ms {:>13}",
            r.dirty_pages,
            r.zero_pages,
            r.sent_pages,
            human_bytes(r.wire_bytes),
            ratio,
            r.duration_ms,
            est
        );
    }

    /// Prints the totals (text) or the summary object (JSON), with `extra` fields merged in.
    pub fn summary(&self, m: &MigrationReport, extra: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let secs = m.total_ms / 1e3;
        let throughput = if secs > 0.0 { m.memory_bytes as f64 / secs / 1e9 } else { 0.0 };
        if self.json {
            let mut line = json!({
                "summary": true, "rounds": m.rounds.len(), "stop_reason": m.stop_reason, "total_ms": m.total_ms,
                "downtime_ms": m.downtime_ms, "memory_bytes": m.memory_bytes, "wire_bytes": m.wire_bytes,
                "throughput_gbps": throughput, "location": m.receipt.location,
            });
            if let (Some(obj), serde_json::Value::Object(more)) = (line.as_object_mut(), extra) {
                obj.extend(more);
            }
            let _ = writeln!(out, "{line}");
            return;
        }
        let _ = writeln!(out, "(* = final round, source frozen; stopped iterating: {:?})", m.stop_reason);
        let _ = writeln!(
            out,
            "total {:.0} ms, downtime {:.1} ms, memory {} in {} on the wire ({:.2}x), {:.2} GB/s of process memory",
            m.total_ms,
            m.downtime_ms,
            human_bytes(m.memory_bytes),
            human_bytes(m.wire_bytes),
            if m.wire_bytes > 0 { m.memory_bytes as f64 / m.wire_bytes as f64 } else { 0.0 },
            throughput
        );
        if let serde_json::Value::Object(more) = extra {
            for (k, v) in more {
                let _ = writeln!(out, "{k}: {v}");
            }
        }
    }
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
