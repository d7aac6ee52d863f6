//! `pagestream image show`: the pagemaps of one image directory, as text or as `crit show` JSON.

use std::fs;
use std::path::Path;

use std::io::Write;

use anyhow::{Context, Result};
use pagestream_engine::criu::image_dir::pagemap_ids;
use pagestream_engine::criu::magic::{pages_file_name, PARENT_LINK};
use pagestream_engine::criu::{Pagemap, PagemapId};
use pagestream_engine::page_size;
use serde_json::{json, Value};

/// Prints every pagemap of `dir`.
pub fn run(dir: &Path, as_json: bool) -> Result<()> {
    let ps = page_size();
    let mut out = std::io::stdout().lock();
    let mut maps = Vec::new();
    for id in pagemap_ids(dir)? {
        let path = dir.join(id.file_name());
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        maps.push((id, Pagemap::parse(&path, &data, ps)?));
    }
    let parent = fs::read_link(dir.join(PARENT_LINK)).ok();
    if as_json {
        let doc = json!({
            "dir": dir.display().to_string(),
            "parent": parent.map(|p| p.display().to_string()),
            "pagemaps": maps.iter().map(|(id, pm)| crit_json(*id, pm)).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    match &parent {
        Some(p) => writeln!(out, "image directory {} (parent -> {})", dir.display(), p.display())?,
        None => writeln!(out, "image directory {}", dir.display())?,
    }
    if maps.is_empty() {
        writeln!(out, "  no pagemap images")?;
    }
    for (id, pm) in &maps {
        let count = |f: fn(&pagestream_engine::criu::PagemapEntry) -> bool| -> u64 {
            pm.entries.iter().filter(|e| f(e)).map(|e| e.nr_pages).sum()
        };
        writeln!(
            out,
            "{}  data in {}  {} entries: {} pages present, {} in parent, {} lazy",
            id.file_name(),
            pages_file_name(pm.pages_id),
            pm.entries.len(),
            count(|e| e.flags.is_present()),
            count(|e| e.flags.is_parent()),
            count(|e| e.flags.is_lazy()),
        )?;
        writeln!(out, "  {:>18}  {:>10}  flags", "vaddr", "nr_pages")?;
        for e in &pm.entries {
            writeln!(out, "  {:>#18x}  {:>10}  {}", e.vaddr, e.nr_pages, e.flags)?;
        }
    }
    Ok(())
}

/// One pagemap in the layout of `crit show`: a head entry, then entries with hex vaddr and flag
/// names.
pub fn crit_json(id: PagemapId, pm: &Pagemap) -> Value {
    let mut entries = vec![json!({ "pages_id": pm.pages_id })];
    entries.extend(
        pm.entries.iter().map(
            |e| json!({ "vaddr": format!("{:#x}", e.vaddr), "nr_pages": e.nr_pages, "flags": e.flags.to_string() }),
        ),
    );
    json!({ "file": id.file_name(), "magic": "PAGEMAP", "entries": entries })
}
