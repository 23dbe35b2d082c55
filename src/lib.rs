//! keygate's modules as a library, so that the binary in `main.rs` and the
//! fuzz targets in `fuzz/` share one module tree.
//!
//! The modules that `main.rs` or a fuzz target uses are public, and the
//! rest stay private. They are no stable API, because keygate ships as a
//! binary only.

// The public modules exist for the binary and the fuzz targets, not as an
// API, so API-shape lints such as `len` without `is_empty` do not apply.
#![allow(clippy::len_without_is_empty)]

mod admin;
mod auth;
pub mod commands;
pub mod config;
pub mod daemon;
mod forward;
pub mod http;
mod keyfile;
pub mod keys;
mod metrics;
mod notify;
mod pool;
mod proxy;
mod ratelimit;
mod reload;
mod server;
mod shutdown;
mod signals;
pub mod text;
mod upstream;
