//! # lse-runtime
//!
//! Everything that uses a trained LSE segmentation model, and everything the trainer
//! and the deployment side must agree on, without libtorch:
//!
//! - [`labels`]: the Cityscapes label table and the 19/16/13-class subsets;
//! - [`imageio`]: decoding, bicubic/nearest resizing, preprocessing constants,
//!   colouring, atomic PNG writes;
//! - [`contract`]: the ONNX model contract and its metadata;
//! - [`engine`]: ONNX Runtime sessions with execution-provider choice
//!   (TensorRT, CUDA, CPU, with fallback);
//! - [`predict`]: the evaluation protocol's prediction (predict at the training
//!   size, upsample class probabilities to the image's size, arg-max);
//! - [`palette`]: colour tables, colour maps and overlays of label maps (the CLI,
//!   the run report; public for the server);
//! - [`metrics`]: the confusion matrix and (m)IoU of the Cityscapes protocol;
//! - [`evaluate`]: the protocol over two folder trees (`lse eval`) and
//!   [`evaluate::Evaluation`], the record every evaluation is written as;
//! - [`datasets`]: the Cityscapes, GTA5 and SYNTHIA layouts as data, and their readers;
//! - [`provenance`]: what a shipped model says about its datasets (summaries, never
//!   paths) and the scan for local paths;
//! - [`synth`]: the built-in synthetic source/target domains;
//! - [`labelling`]: batch labelling of folder trees;
//! - [`trt`]: TensorRT engine and timing caches, shape profiles, the shared build.
//!
//! The `lse` binary (`src/bin/lse/`) is a thin CLI over these modules.

pub mod choice;
pub mod contract;
pub mod datasets;
pub mod engine;
pub mod evaluate;
pub mod imageio;
pub mod labelling;
pub mod labels;
pub mod metrics;
pub mod palette;
pub mod predict;
pub mod provenance;
pub mod synth;
pub mod trt;

/// The version of this project, recorded in every model and run it writes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
