//! `pagestream image verify`: full validation of an image directory and its parent chain.

use std::path::Path;

use std::io::Write;

use anyhow::Result;
use pagestream_engine::criu::ImageChain;
use pagestream_engine::page_size;

/// Opens the chain at `dir` (links confined to `root`), checks it and prints a summary.
pub fn run(dir: &Path, root: Option<&Path>) -> Result<()> {
    let ps = page_size();
    let mut out = std::io::stdout().lock();
    let chain = ImageChain::open(dir, root, ps)?;
    chain.verify()?;
    let top = &chain.levels()[0];
    let (mut present, mut parent, mut lazy) = (0u64, 0u64, 0u64);
    for pm in top.pagemaps() {
        for e in &pm.pagemap.entries {
            present += if e.flags.is_present() { e.nr_pages } else { 0 };
            parent += if e.flags.is_parent() { e.nr_pages } else { 0 };
            lazy += if e.flags.is_lazy() && !e.flags.is_present() { e.nr_pages } else { 0 };
        }
    }
    writeln!(
        out,
        "ok: {}: {} pagemaps, {} pages of data ({:.1} MiB), {} pages in parent, {} lazy without data; chain of {} image director{}",
        dir.display(),
        top.pagemaps().count(),
        present,
        (present * ps) as f64 / (1024.0 * 1024.0),
        parent,
        lazy,
        chain.levels().len(),
        if chain.levels().len() == 1 { "y" } else { "ies" },
    )?;
    Ok(())
}
