//! `lse-train export`: checkpoint → `model.onnx`, then an ONNX Runtime parity check.

use std::path::PathBuf;

use lse_runtime::choice::Choice;
use lse_runtime::contract::Precision;
use lse_trainer::export::{ExportOptions, export_checked_as};

/// Arguments of `lse-train export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint (.safetensors written by lse-train).
    pub checkpoint: PathBuf,
    /// Output ONNX file.
    #[arg(long)]
    pub out: PathBuf,
    /// Training input size recorded in the model (the size `lse` resizes images to);
    /// default: the checkpoint's, else 1024x512.
    #[arg(long, value_parser = super::parse_size)]
    pub train_size: Option<[u32; 2]>,
    /// Weights and compute of the exported network: fp16 keeps the float32 input and
    /// scores and the uint8 train ids, and is checked by its arg-max agreement with the
    /// float32 network (at least 99.5 %) instead of the logit tolerance.
    #[arg(long, value_parser = lse_cli::choice(Precision::ALL, Precision::help), default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Skip the ONNX Runtime parity check (not recommended).
    #[arg(long)]
    pub no_check: bool,
    /// Parity check: accepted |logit difference| relative to the largest |logit|
    /// (max |diff| <= rtol * max |logit| + atol).
    #[arg(long, default_value_t = lse_trainer::onnx::Tolerance::default().rtol)]
    pub rtol: f64,
    /// Parity check: absolute part of the accepted |logit difference|.
    #[arg(long, alias = "tolerance", default_value_t = lse_trainer::onnx::Tolerance::default().atol)]
    pub atol: f64,
    #[command(flatten)]
    pub ort: super::OrtArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let report = export_checked_as(
        &a.checkpoint,
        &a.out,
        &ExportOptions {
            train_size: a.train_size,
            check: !a.no_check,
            tolerance: lse_trainer::onnx::Tolerance {
                rtol: a.rtol,
                atol: a.atol,
            },
            ort_lib: a.ort.ort_lib.clone(),
        },
        a.precision,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("wrote {}", a.out.display());
    }
    Ok(())
}
