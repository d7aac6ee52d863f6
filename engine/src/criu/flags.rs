//! `PE_*` pagemap entry flags, shared by pagemap images and the page-server protocol (`ADD_F`).

use std::fmt;

/// The `PE_*` bits of a pagemap entry (and of the high 16 bits of a page-server `ADD_F` command).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct PageFlags(pub u32);

impl PageFlags {
    /// The data is in the parent image.
    pub const PARENT: PageFlags = PageFlags(1);
    /// The pages may be restored lazily (userfaultfd).
    pub const LAZY: PageFlags = PageFlags(2);
    /// The data is in this image's pages file.
    pub const PRESENT: PageFlags = PageFlags(4);
    /// Every bit CRIU defines.
    pub const KNOWN: PageFlags = PageFlags(7);

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// Whether all bits of `other` are set.
    pub const fn contains(self, other: PageFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether data for these pages is stored in this image (`PE_PRESENT`).
    pub const fn is_present(self) -> bool {
        self.contains(Self::PRESENT)
    }
    /// Whether the pages live in the parent image (`PE_PARENT`).
    pub const fn is_parent(self) -> bool {
        self.contains(Self::PARENT)
    }
    /// Whether the pages are lazy (`PE_LAZY`).
    pub const fn is_lazy(self) -> bool {
        self.contains(Self::LAZY)
    }
    /// Bits outside [`PageFlags::KNOWN`].
    pub const fn unknown_bits(self) -> u32 {
        self.0 & !Self::KNOWN.0
    }
}

impl std::ops::BitOr for PageFlags {
    type Output = PageFlags;
    fn bitor(self, rhs: Self) -> Self {
        PageFlags(self.0 | rhs.0)
    }
}

/// Renders flags the way `crit show` does: `PE_LAZY | PE_PRESENT` (in CRIU's bit order).
impl fmt::Display for PageFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        for (bit, name) in [(Self::PARENT, "PE_PARENT"), (Self::LAZY, "PE_LAZY"), (Self::PRESENT, "PE_PRESENT")] {
            if self.contains(bit) {
                names.push(name.to_string());
            }
        }
        if self.unknown_bits() != 0 {
            names.push(format!("{:#x}", self.unknown_bits()));
        }
        if names.is_empty() {
            return f.write_str("0");
        }
        f.write_str(&names.join(" | "))
    }
}

impl fmt::Debug for PageFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageFlags({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_crit() {
        assert_eq!((PageFlags::LAZY | PageFlags::PRESENT).to_string(), "PE_LAZY | PE_PRESENT");
        assert_eq!(PageFlags::PARENT.to_string(), "PE_PARENT");
        assert_eq!(PageFlags(0).to_string(), "0");
        assert_eq!(PageFlags(0x14).to_string(), "PE_PRESENT | 0x10");
    }
}
