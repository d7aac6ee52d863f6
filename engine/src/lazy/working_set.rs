//! [`WorkingSet`]: the runs a restored process faulted on, in the order it touched them. The
//! daemon records it (`lazy-pages --record-working-set FILE`); the next restore's source pushes
//! those pages first (`serve-lazy --working-set FILE`), so a process that restarts the same way
//! finds its hot pages already resident.
//!
//! The file is text, one run per line: `pagemap-<pid>.img 0x<dump-time vaddr> <pages>`. It is
//! written to a temporary name, fsynced and renamed.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::criu::PagemapId;
use crate::page::PageRun;

/// The most runs a working set keeps (the first ones are the most useful).
pub const MAX_RUNS: usize = 1 << 20;

/// Faulted runs in order; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingSet {
    /// `(pagemap, run at dump-time addresses)`, first touched first.
    pub runs: Vec<(PagemapId, PageRun)>,
}

impl WorkingSet {
    /// Records a faulted run (pages of `page_size` bytes); one that continues the last run
    /// upwards extends it, so the pushes that replay it send long runs. Ignored beyond
    /// [`MAX_RUNS`].
    pub fn record(&mut self, id: PagemapId, run: PageRun, page_size: u64) {
        if let Some((last_id, last)) = self.runs.last_mut() {
            if *last_id == id && last.end(page_size) == run.vaddr {
                last.nr_pages += run.nr_pages;
                return;
            }
        }
        if self.runs.len() < MAX_RUNS {
            self.runs.push((id, run));
        }
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        self.runs.iter().map(|(id, r)| format!("{} {:#x} {}\n", id.file_name(), r.vaddr, r.nr_pages)).collect()
    }

    /// Parses the file's text; errors name the line.
    pub fn parse(text: &str, page_size: u64) -> Result<WorkingSet, String> {
        let mut ws = WorkingSet::default();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
            let mut f = line.split_whitespace();
            let (Some(name), Some(addr), Some(n), None) = (f.next(), f.next(), f.next(), f.next()) else {
                return Err(bad("expected `pagemap-<pid>.img 0x<vaddr> <pages>`"));
            };
            let id = PagemapId::from_file_name(name).ok_or_else(|| bad("not a pagemap name"))?;
            let vaddr = addr
                .strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad("not a hexadecimal address"))?;
            let nr: u64 = n.parse().map_err(|_| bad("not a page count"))?;
            let run = PageRun::checked(vaddr, nr, page_size).ok_or_else(|| bad("not a page-aligned, non-empty run"))?;
            if ws.runs.len() >= MAX_RUNS {
                return Err(bad(&format!("more than {MAX_RUNS} runs")));
            }
            ws.runs.push((id, run));
        }
        Ok(ws)
    }

    /// Writes the file durably (temporary name, fsync, rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(self.to_text().as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path, page_size: u64) -> Result<WorkingSet, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        WorkingSet::parse(&text, page_size).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_lines() {
        let ps = 4096;
        let mut ws = WorkingSet::default();
        ws.record(PagemapId::Task(42), PageRun::new(0x7f00_0000_0000, 7), ps);
        ws.record(PagemapId::Task(42), PageRun::new(0x7f00_0000_7000, 9), ps);
        ws.record(PagemapId::Task(43), PageRun::new(0x1000, 1), ps);
        ws.record(PagemapId::Task(43), PageRun::new(0x0, 1), ps);
        let text = ws.to_text();
        assert_eq!(text, "pagemap-42.img 0x7f0000000000 16\npagemap-43.img 0x1000 1\npagemap-43.img 0x0 1\n");
        assert_eq!(WorkingSet::parse(&text, ps).unwrap(), ws);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ws");
        ws.write(&path).unwrap();
        assert_eq!(WorkingSet::read(&path, ps).unwrap(), ws);
        for (bad, why) in [
            ("core-1.img 0x1000 1", "not a pagemap name"),
            ("pagemap-1.img 4096 1", "not a hexadecimal address"),
            ("pagemap-1.img 0x1001 1", "page-aligned"),
            ("pagemap-1.img 0x1000 0", "page-aligned, non-empty"),
            ("pagemap-1.img 0x1000", "expected"),
        ] {
            let err = WorkingSet::parse(bad, ps).unwrap_err();
            assert!(err.contains(why) && err.starts_with("line 1"), "{bad}: {err}");
        }
    }
}
