//! The trainer's integration tests, as one test program: one link (with libtorch)
//! instead of one per file. Each module is one group of tests (`cargo test -p
//! lse-trainer --test it spine::` runs one group).

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
