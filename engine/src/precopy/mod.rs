//! Pre-copy live migration: rounds of track, read, send until the convergence policy says the
//! last round fits the downtime budget; then freeze, send the rest, commit, and release the
//! source only as the caller decides after the destination confirmed a durable copy.
//!
//! * [`policy`]: [`PreCopyPolicy`], the convergence decision.
//! * [`migrate`]: [`migrate::migrate`], the round loop, and [`migrate::CommittedMigration`].
//! * [`verify`]: byte-for-byte comparison of an image directory with a (frozen) process.

pub mod migrate;
pub mod policy;
pub mod verify;

pub use migrate::{migrate, CommittedMigration, MigrateError, MigrationConfig, MigrationReport, RoundRecord};
pub use policy::{PreCopyPolicy, StopReason, Verdict};
