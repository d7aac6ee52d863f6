//! [`ImageDir`]: one CRIU image directory as far as memory goes: its pagemaps, the offsets of
//! their data in the `pages-<id>.img` files, and the `parent` link (resolved by [`super::chain`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{ImageError, ImageErrorKind};
use super::magic::{pages_file_name, PagemapId, PARENT_LINK};
use super::pagemap::Pagemap;

/// One pagemap of a directory with the pages-file offset of each of its present entries.
#[derive(Debug)]
pub struct PagemapFile {
    /// Which pagemap this is.
    pub id: PagemapId,
    /// The parsed pagemap.
    pub pagemap: Pagemap,
    /// For each entry, the byte offset of its data in the pages file (`None` unless present).
    pub data_offsets: Vec<Option<u64>>,
    /// Path of the pages file.
    pub pages_path: PathBuf,
    /// Length of the pages file (0 when it is absent and nothing is present).
    pub pages_len: u64,
    /// The pages file, opened once (absent when nothing is present).
    pages_file: Option<File>,
}

impl PagemapFile {
    /// Reads `len` bytes of page data at byte `offset` of the pages file into `buf`.
    pub fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let f = self.pages_file.as_ref().ok_or_else(|| {
            ImageError::at(&self.pages_path, offset, std::io::Error::from(std::io::ErrorKind::NotFound).into())
        })?;
        f.read_exact_at(buf, offset).map_err(|e| ImageError::at(&self.pages_path, offset, e.into()))
    }
}

/// The ids of the pagemap images in directory `path`, sorted (tasks first, then shmem).
pub fn pagemap_ids(path: &Path) -> Result<Vec<PagemapId>, ImageError> {
    let mut ids = Vec::new();
    for dent in fs::read_dir(path).map_err(|e| ImageError::io(path, e))? {
        let dent = dent.map_err(|e| ImageError::io(path, e))?;
        if let Some(id) = dent.file_name().to_str().and_then(PagemapId::from_file_name) {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// The memory images of one image directory.
#[derive(Debug)]
pub struct ImageDir {
    path: PathBuf,
    page_size: u64,
    pagemaps: BTreeMap<PagemapId, PagemapFile>,
    parent_link: Option<PathBuf>,
}

impl ImageDir {
    /// Opens `path`, parses every `pagemap-*.img` in it and checks that each pages file holds at
    /// least the data its pagemap claims. Other image files are ignored.
    pub fn open(path: &Path, page_size: u64) -> Result<Self, ImageError> {
        let mut pagemaps = BTreeMap::new();
        for id in pagemap_ids(path)? {
            let file = Self::open_pagemap(path, id, page_size)?;
            pagemaps.insert(id, file);
        }
        let link = path.join(PARENT_LINK);
        let parent_link = match fs::symlink_metadata(&link) {
            Ok(md) if md.file_type().is_symlink() => Some(fs::read_link(&link).map_err(|e| ImageError::io(&link, e))?),
            Ok(md) if md.is_dir() => Some(PathBuf::from(PARENT_LINK)),
            Ok(_) => {
                return Err(ImageError::file(
                    &link,
                    ImageErrorKind::Invalid("`parent` is neither a link nor a directory".into()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ImageError::io(&link, e)),
        };
        Ok(Self { path: path.to_path_buf(), page_size, pagemaps, parent_link })
    }

    fn open_pagemap(dir: &Path, id: PagemapId, page_size: u64) -> Result<PagemapFile, ImageError> {
        let pm_path = dir.join(id.file_name());
        let data = fs::read(&pm_path).map_err(|e| ImageError::io(&pm_path, e))?;
        let pagemap = Pagemap::parse(&pm_path, &data, page_size)?;
        let mut data_offsets = Vec::with_capacity(pagemap.entries.len());
        let mut off = 0u64;
        for e in &pagemap.entries {
            let len = e.data_len(page_size);
            data_offsets.push((len > 0).then_some(off));
            off = off.checked_add(len).ok_or_else(|| {
                ImageError::file(&pm_path, ImageErrorKind::Invalid("page data size overflows u64".into()))
            })?;
        }
        let pages_path = dir.join(pages_file_name(pagemap.pages_id));
        let pages_file = match File::open(&pages_path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && off == 0 => None,
            Err(e) => return Err(ImageError::io(&pages_path, e)),
        };
        let pages_len = match &pages_file {
            Some(f) => f.metadata().map_err(|e| ImageError::io(&pages_path, e))?.len(),
            None => 0,
        };
        if pages_len < off {
            return Err(ImageError::file(
                &pages_path,
                ImageErrorKind::PagesTooShort { pagemap: id.file_name(), need: off, have: pages_len },
            ));
        }
        Ok(PagemapFile { id, pagemap, data_offsets, pages_path, pages_len, pages_file })
    }

    /// The directory's path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The page size the directory was read with.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The pagemaps, ordered by id (tasks first, then shmem).
    pub fn pagemaps(&self) -> impl Iterator<Item = &PagemapFile> {
        self.pagemaps.values()
    }

    /// The pagemap with `id`, if the directory has one.
    pub fn pagemap(&self, id: PagemapId) -> Option<&PagemapFile> {
        self.pagemaps.get(&id)
    }

    /// The target of the `parent` link as written in the link (not resolved).
    pub fn parent_link(&self) -> Option<&Path> {
        self.parent_link.as_deref()
    }
}
