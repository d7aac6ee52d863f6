//! A live process as the engine sees it: its memory map ([`maps`]), which pages of it hold data
//! ([`residency`]), and freezing it for the final round ([`freeze`]).

pub mod freeze;
pub mod maps;
pub mod residency;
pub mod seize;
pub mod target;

pub use freeze::{FreezeMethod, Frozen};
pub use maps::{MemoryLayout, Vma, VmaKind};
pub use target::{Target, TargetError};
