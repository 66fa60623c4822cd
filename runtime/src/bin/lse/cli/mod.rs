//! The `lse` subcommands: each module holds one command's arguments (clap) and its
//! `run` function; `main.rs` only dispatches.

pub mod accel;
pub mod bench;
pub mod eval;
pub mod export_triton;
pub mod info;
pub mod label;
pub mod segment;
pub mod synth;

pub use lse_cli::{parse_size, print_json};

/// The model to use: the one named, else the default model `models/default/model.onnx`
/// found beside the executable's ancestors or the current directory's.
pub fn model_or_default(model: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    if let Some(m) = model {
        return Ok(m);
    }
    lse_runtime::engine::default_model().ok_or_else(|| {
        anyhow::anyhow!(
            "no model named and no default model found (models/default/model.onnx); \
             run scripts/demo.sh to create it, or name a model"
        )
    })
}
