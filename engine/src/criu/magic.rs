//! CRIU image magics and the names of the image files pagestream reads and writes.

use std::fmt;

/// First u32 of every image file except `inventory.img` and raw images (images format v1.1).
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// First u32 of service files (`stats-*`, `irmap-cache`).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// Second u32 of `pagemap-*.img` and `pagemap-shmem-*.img`.
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// Magic of `inventory.img` (which has no common magic before it).
pub const INVENTORY_MAGIC: u32 = 0x5831_3116;

/// Which pagemap an image or a page-server `dst_id` designates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize)]
pub enum PagemapId {
    /// Task memory: `pagemap-<vpid>.img`; entry addresses are virtual addresses.
    Task(u64),
    /// Shared memory (anon shared, memfd, SysV shm): `pagemap-shmem-<shmid>.img`; entry
    /// addresses are offsets inside the object.
    Shmem(u64),
}

impl PagemapId {
    /// The file name CRIU gives this pagemap.
    pub fn file_name(&self) -> String {
        match self {
            PagemapId::Task(id) => format!("pagemap-{id}.img"),
            PagemapId::Shmem(id) => format!("pagemap-shmem-{id}.img"),
        }
    }

    /// Recognises `pagemap-<n>.img` and `pagemap-shmem-<n>.img`.
    pub fn from_file_name(name: &str) -> Option<PagemapId> {
        let stem = name.strip_prefix("pagemap-")?.strip_suffix(".img")?;
        let (shmem, digits) = match stem.strip_prefix("shmem-") {
            Some(d) => (true, d),
            None => (false, stem),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let id = digits.parse().ok()?;
        Some(if shmem { PagemapId::Shmem(id) } else { PagemapId::Task(id) })
    }
}

impl fmt::Display for PagemapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// The file name of the pages image with id `pages_id`.
pub fn pages_file_name(pages_id: u32) -> String {
    format!("pages-{pages_id}.img")
}

/// The name of the link to the parent image directory (`CR_PARENT_LINK`).
pub const PARENT_LINK: &str = "parent";

/// The first pages id `criu page-server` uses (`up_page_ids_base`), so that its files never clash
/// with ids the dumping CRIU picks when both write to one directory.
pub const PAGE_SERVER_PAGES_ID_BASE: u32 = 0x10001;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        for id in [PagemapId::Task(1), PagemapId::Task(4242), PagemapId::Shmem(77)] {
            assert_eq!(PagemapId::from_file_name(&id.file_name()), Some(id));
        }
        for bad in ["pagemap-.img", "pagemap-x1.img", "pagemap-1.img.tmp", "pages-1.img", "pagemap-shmem-.img"] {
            assert_eq!(PagemapId::from_file_name(bad), None, "{bad}");
        }
    }
}
