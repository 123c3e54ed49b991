//! End-to-end tests of the server over real TLS and the real SQLite store.

// Test helpers (not only #[test] fns) may panic: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod api;
mod common;
mod controls;
mod devices;
mod limits;
mod media;
mod slow;
mod tls;
mod ws;
