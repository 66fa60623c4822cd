//! The trainer's integration tests, as one test program: one link (with libtorch)
//! instead of one per file. Each module is one group of tests (`cargo test -p
//! lse-trainer --test it spine::` runs one group).
//!
//! The groups share one process, so libtorch's generator is shared too: every test
//! that draws from it (a `Scratch` initialisation, random inputs) does so inside
//! `lse_trainer::seeding::with_seed`, even where the numbers do not matter to it, so
//! that it never draws between another test's seed and that test's draws.

mod agreement;
mod amp;
mod e2e;
mod fp16_export;
mod gpu_check;
mod int8_export;
mod lse_numerics;
mod pth;
mod publish;
mod round;
mod spine;
mod tiny_model;
