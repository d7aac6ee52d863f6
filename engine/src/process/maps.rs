//! `/proc/PID/maps` parsed into [`Vma`]s, and the migration policy: which areas a migration
//! copies (private anonymous and private file-backed memory: heap, stacks, anonymous mmaps,
//! written pages of private file mappings) and which it skips (vdso, vvar, vvar_vclock,
//! vsyscall, shared mappings, guard and PROT_NONE reservations unless populated).

use std::fs;
use std::io;

use crate::runset::PageRunSet;
use crate::PageRun;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub inode: u64,
    /// The pathname column: a file, `[heap]`, `[stack]`, `[vdso]`, ... or empty.
    pub path: String,
}

/// What kind of memory an area is, as far as migration cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaKind {
    /// Private anonymous memory, including `[heap]` and `[stack]`.
    Anon,
    /// A private mapping of a file: only pages written since (now anonymous) are data.
    FilePrivate,
    /// A shared mapping (file, shmem, memfd, SysV): not copied by the process path.
    Shared,
    /// `[vdso]`, `[vvar]`, `[vvar_vclock]`, `[vsyscall]`, `[uprobes]`: provided by the kernel.
    Kernel,
    /// No access at all (guard pages, address-space reservations): copied only if populated.
    NoAccess,
}

impl Vma {
    /// Parses one maps line.
    pub fn parse(line: &str) -> Option<Vma> {
        let mut it = line.splitn(6, ' ');
        let range = it.next()?;
        let perms = it.next()?.as_bytes();
        let offset = u64::from_str_radix(it.next()?, 16).ok()?;
        let _dev = it.next()?;
        let inode = it.next()?.parse().ok()?;
        let path = it.next().unwrap_or("").trim_start().to_string();
        let (s, e) = range.split_once('-')?;
        let (start, end) = (u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?);
        if perms.len() != 4 || start >= end {
            return None;
        }
        Some(Vma {
            start,
            end,
            read: perms[0] == b'r',
            write: perms[1] == b'w',
            exec: perms[2] == b'x',
            shared: perms[3] == b's',
            offset,
            inode,
            path,
        })
    }

    /// Classifies the area.
    pub fn kind(&self) -> VmaKind {
        let special = ["[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]"];
        if special.contains(&self.path.as_str()) {
            VmaKind::Kernel
        } else if self.shared {
            VmaKind::Shared
        } else if !self.read && !self.write && !self.exec {
            VmaKind::NoAccess
        } else if self.inode != 0 || (self.path.starts_with('/') && !self.path.starts_with("/memfd:")) {
            VmaKind::FilePrivate
        } else {
            VmaKind::Anon
        }
    }

    /// Whether migration tracks and copies (the data pages of) this area. `NoAccess` areas are
    /// tracked too: only their populated pages ever become data.
    pub fn is_migrated(&self) -> bool {
        matches!(self.kind(), VmaKind::Anon | VmaKind::FilePrivate | VmaKind::NoAccess)
    }

    /// The area as a run of pages.
    pub fn run(&self, page_size: u64) -> PageRun {
        PageRun::new(self.start, (self.end - self.start) / page_size)
    }
}

/// The memory map of a process at one moment.
#[derive(Clone, Debug, Default)]
pub struct MemoryLayout {
    pub vmas: Vec<Vma>,
}

impl MemoryLayout {
    /// Reads `/proc/PID/maps`.
    pub fn read(pid: i32) -> io::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
        Ok(Self::parse(&text))
    }

    /// Parses the text of a maps file (unparsable lines are skipped).
    pub fn parse(text: &str) -> Self {
        Self { vmas: text.lines().filter_map(Vma::parse).collect() }
    }

    /// The areas migration copies.
    pub fn migrated(&self) -> impl Iterator<Item = &Vma> {
        self.vmas.iter().filter(|v| v.is_migrated())
    }

    /// The address ranges of the migrated areas.
    pub fn migrated_set(&self, page_size: u64) -> PageRunSet {
        PageRunSet::from_runs(page_size, self.migrated().map(|v| v.run(page_size)))
    }

    /// The area containing `addr`.
    pub fn vma_at(&self, addr: u64) -> Option<&Vma> {
        let i = self.vmas.partition_point(|v| v.start <= addr).checked_sub(1)?;
        (self.vmas[i].end > addr).then(|| &self.vmas[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fe:01 1234    /usr/bin/cat
55d0c8a02000-55d0c8a07000 r-xp 00002000 fe:01 1234    /usr/bin/cat
55d0c9c51000-55d0c9c72000 rw-p 00000000 00:00 0       [heap]
7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0 
7f1e2c021000-7f1e30000000 ---p 00000000 00:00 0 
7f1e30000000-7f1e30100000 rw-s 00000000 00:01 99      /dev/zero (deleted)
7f1e30200000-7f1e30201000 rw-s 00000000 00:01 100     /memfd:buf (deleted)
7ffd1c7e4000-7ffd1c805000 rw-p 00000000 00:00 0       [stack]
7ffd1c8f0000-7ffd1c8f4000 r--p 00000000 00:00 0       [vvar]
7ffd1c8f4000-7ffd1c8f6000 r--p 00000000 00:00 0       [vvar_vclock]
7ffd1c8f6000-7ffd1c8f8000 r-xp 00000000 00:00 0       [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
";

    #[test]
    fn classifies_like_a_migration_should() {
        let l = MemoryLayout::parse(MAPS);
        assert_eq!(l.vmas.len(), 12);
        let kinds: Vec<_> = l.vmas.iter().map(|v| v.kind()).collect();
        use VmaKind::*;
        assert_eq!(
            kinds,
            vec![FilePrivate, FilePrivate, Anon, Anon, NoAccess, Shared, Shared, Anon, Kernel, Kernel, Kernel, Kernel]
        );
        assert_eq!(l.vmas[3].path, "");
        assert_eq!(l.vmas[1].offset, 0x2000);
        assert_eq!(l.migrated().count(), 6);
        assert_eq!(l.vma_at(0x55d0c9c51000 + 5).map(|v| v.path.as_str()), Some("[heap]"));
        assert!(l.vma_at(0x1000).is_none());
    }

    #[test]
    fn reads_our_own_maps() {
        let l = MemoryLayout::read(std::process::id() as i32).unwrap();
        assert!(l.vmas.iter().any(|v| v.path == "[stack]" && v.is_migrated()));
        assert!(l.vmas.iter().any(|v| v.path == "[vdso]" && !v.is_migrated()));
        assert!(l.vmas.windows(2).all(|w| w[0].end <= w[1].start));
    }
}
