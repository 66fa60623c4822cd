//! The runtime's integration tests, as one test program: one link instead of one per
//! file. Each module is one group of tests (`cargo test -p lse-runtime --test it
//! label_cli::` runs one group).

mod common;

mod datasets;
mod eval_cli;
mod export_triton;
mod label_cli;
mod label_confidence;
mod labels_table;
mod models_clean;
mod synth_cli;
mod upsample;
