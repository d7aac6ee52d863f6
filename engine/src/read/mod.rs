//! Reading pages out of a live process: [`page_reader::PageReader`].

pub mod page_reader;

pub use page_reader::{PageReader, ReadReport};
