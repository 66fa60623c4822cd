//! The server's integration tests, as one test program: one link instead of one per
//! file, and one tiny model for all of them (`common::model`). Each module is one group
//! of tests (`cargo test -p lse-server --test it http::` runs one group).

mod common;

mod abuse;
mod browser;
mod hardening;
mod http;
mod models;
mod v2;
