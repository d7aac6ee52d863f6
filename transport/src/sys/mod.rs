//! The transport's few unsafe calls, each behind a safe function.

pub mod watched_fd;
