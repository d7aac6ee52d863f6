//! [`ImageChain`]: an image directory and its ancestors through `parent` links (pre-dump chains),
//! with `PE_PARENT` resolved through any depth.
//!
//! Links are confined to a root directory (by default the directory that holds the image
//! directory), so an image cannot make the reader follow a link out of the tree it was given;
//! a chain that comes back to a directory already in it is refused.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::error::{ImageError, ImageErrorKind};
use super::image_dir::ImageDir;
use super::magic::{PagemapId, PARENT_LINK};

/// What the chain holds for one page.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PageLookup {
    /// The page's data, from the nearest image that has it.
    Data(Vec<u8>),
    /// The page is `PE_LAZY` without data: a lazy source must supply it.
    Lazy,
    /// No entry covers the page: it was not dumped (never touched, or zero).
    Absent,
}

/// A directory and its parents: `levels()[0]` is the directory itself, `[1]` its parent, ...
#[derive(Debug)]
pub struct ImageChain {
    levels: Vec<ImageDir>,
    root: PathBuf,
}

impl ImageChain {
    /// Opens `dir` and every ancestor, with links confined to `root` (default: `dir`'s parent
    /// directory). Each directory is fully validated by [`ImageDir::open`].
    pub fn open(dir: &Path, root: Option<&Path>, page_size: u64) -> Result<Self, ImageError> {
        let canon = fs::canonicalize(dir).map_err(|e| ImageError::io(dir, e))?;
        let root = match root {
            Some(r) => fs::canonicalize(r).map_err(|e| ImageError::io(r, e))?,
            None => canon.parent().map(Path::to_path_buf).unwrap_or_else(|| canon.clone()),
        };
        if !canon.starts_with(&root) {
            return Err(ImageError::file(dir, ImageErrorKind::ParentEscapes { target: canon, root }));
        }
        let mut seen = HashSet::new();
        let mut levels = Vec::new();
        let mut next = Some((dir.to_path_buf(), canon));
        while let Some((path, canon)) = next.take() {
            if !seen.insert(canon.clone()) {
                let link = levels.last().map(|l: &ImageDir| l.path().join(PARENT_LINK)).unwrap_or_default();
                return Err(ImageError::file(link, ImageErrorKind::ParentLoop(canon)));
            }
            let level = ImageDir::open(&path, page_size)?;
            if let Some(target) = level.parent_link() {
                let link = path.join(PARENT_LINK);
                let resolved = fs::canonicalize(&link).map_err(|err| {
                    ImageError::file(&link, ImageErrorKind::ParentDangling { target: target.to_path_buf(), err })
                })?;
                if !resolved.starts_with(&root) {
                    return Err(ImageError::file(
                        &link,
                        ImageErrorKind::ParentEscapes { target: target.to_path_buf(), root: root.clone() },
                    ));
                }
                next = Some((path.join(target), resolved));
            }
            levels.push(level);
        }
        Ok(Self { levels, root })
    }

    /// The directories, newest first.
    pub fn levels(&self) -> &[ImageDir] {
        &self.levels
    }

    /// The root links were confined to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that every `PE_PARENT` entry is covered by the parent's pagemap of the same id (which
    /// is itself checked against its own parent), as `criu restore` requires.
    pub fn verify(&self) -> Result<(), ImageError> {
        for (depth, level) in self.levels.iter().enumerate() {
            let parent = self.levels.get(depth + 1);
            for pm in level.pagemaps() {
                let pm_path = level.path().join(pm.id.file_name());
                for e in pm.pagemap.entries.iter().filter(|e| e.flags.is_parent()) {
                    let (vaddr, nr_pages) = (e.vaddr, e.nr_pages);
                    let Some(parent) = parent else {
                        return Err(ImageError::file(&pm_path, ImageErrorKind::NoParent { vaddr, nr_pages }));
                    };
                    let covered = parent.pagemap(pm.id).is_some_and(|ppm| {
                        super::pagemap::first_uncovered(&ppm.pagemap.entries, vaddr, nr_pages, level.page_size())
                            .is_none()
                    });
                    if !covered {
                        let parent = parent.path().join(pm.id.file_name());
                        return Err(ImageError::file(
                            &pm_path,
                            ImageErrorKind::MissingInParent { vaddr, nr_pages, parent },
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// What the chain holds for the page containing `addr` in pagemap `id`, walking `PE_PARENT`
    /// entries down the chain.
    pub fn page_at(&self, id: PagemapId, addr: u64) -> Result<PageLookup, ImageError> {
        let Some(first) = self.levels.first() else { return Ok(PageLookup::Absent) };
        let ps = first.page_size();
        let page = addr & !(ps - 1);
        for (depth, level) in self.levels.iter().enumerate() {
            let found = level.pagemap(id).and_then(|pm| pm.pagemap.find(page, ps).map(|i| (pm, i)));
            let Some((pm, i)) = found else {
                if depth == 0 {
                    return Ok(PageLookup::Absent);
                }
                let child = self.levels[depth - 1].path().join(id.file_name());
                let parent = level.path().join(id.file_name());
                return Err(ImageError::file(
                    child,
                    ImageErrorKind::MissingInParent { vaddr: page, nr_pages: 1, parent },
                ));
            };
            let e = pm.pagemap.entries[i];
            if let Some(base) = pm.data_offsets[i] {
                let mut buf = vec![0u8; ps as usize];
                pm.read_data(base + (page - e.vaddr), &mut buf)?;
                return Ok(PageLookup::Data(buf));
            }
            if !e.flags.is_parent() {
                return Ok(if e.flags.is_lazy() { PageLookup::Lazy } else { PageLookup::Absent });
            }
            if depth + 1 == self.levels.len() {
                let path = level.path().join(id.file_name());
                return Err(ImageError::file(path, ImageErrorKind::NoParent { vaddr: e.vaddr, nr_pages: e.nr_pages }));
            }
        }
        Ok(PageLookup::Absent)
    }
}
