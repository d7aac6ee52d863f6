//! CRIU's protobuf records (`images/pagemap.proto`), declared with `prost` derive.
//!
//! CRIU's `required` fields are declared `optional` here so that the reader can tell a missing
//! field from a zero and refuse it, as protobuf-c does; the writer always sets them.

/// `pagemap_head`: the first record of a pagemap image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PagemapHeadPb {
    /// `required uint32 pages_id = 1`: selects `pages-<pages_id>.img`.
    #[prost(uint32, optional, tag = "1")]
    pub pages_id: Option<u32>,
}

/// `pagemap_entry`: one run of pages.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PagemapEntryPb {
    /// `required uint64 vaddr = 1`.
    #[prost(uint64, optional, tag = "1")]
    pub vaddr: Option<u64>,
    /// `required uint32 nr_pages = 2` (named `compat_nr_pages` since CRIU 4.2, which writes 0).
    #[prost(uint32, optional, tag = "2")]
    pub compat_nr_pages: Option<u32>,
    /// `optional bool in_parent = 3`: legacy spelling of `PE_PARENT`.
    #[prost(bool, optional, tag = "3")]
    pub in_parent: Option<bool>,
    /// `optional uint32 flags = 4`: `PE_*` bits; missing means `PE_PRESENT`.
    #[prost(uint32, optional, tag = "4")]
    pub flags: Option<u32>,
    /// `optional uint64 nr_pages = 5` (CRIU >= 4.2); preferred over field 2 when present.
    #[prost(uint64, optional, tag = "5")]
    pub nr_pages: Option<u64>,
}
