//! `lse-train export`: checkpoint → `model.onnx`, then an ONNX Runtime parity check
//! (for int8: calibration on target images first, then an agreement check on held-out
//! ones).

use std::path::PathBuf;

use lse_runtime::choice::Choice;
use lse_runtime::contract::Precision;
use lse_runtime::datasets::{DatasetKind, DatasetSpec};
use lse_trainer::export::{ExportOptions, export_checked_as};
use lse_trainer::quantize::{CalibrationMethod, Int8Options, export_int8_checked};

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
    /// float32 network (at least 99.5 %) instead of the logit tolerance; int8 (QDQ)
    /// needs --calibrate and is checked on held-out images of that dataset (at least
    /// 95 % arg-max agreement).
    #[arg(long, value_parser = lse_cli::choice(Precision::ALL, Precision::help), default_value_t = Precision::Fp32)]
    pub precision: Precision,
    #[arg(long, help = format!(
        "int8: the dataset whose images calibrate the activation ranges, normally the \
         target domain the model will see ({})",
        DatasetKind::ALL.iter().map(|k| format!("{k}:DIR")).collect::<Vec<_>>().join(", ")
    ))]
    pub calibrate: Option<DatasetSpec>,
    /// int8: the split of --calibrate (Cityscapes layout).
    #[arg(long, default_value = "train")]
    pub calibrate_split: String,
    /// int8: how many images calibrate (a fixed pseudo-random choice of the split).
    #[arg(long, default_value_t = 200)]
    pub calibrate_images: usize,
    /// int8: how many other images of the split the agreement check compares on.
    #[arg(long, default_value_t = 50)]
    pub check_images: usize,
    /// int8: how activation ranges are taken from the calibration images.
    #[arg(long, value_parser = lse_cli::choice(CalibrationMethod::ALL, CalibrationMethod::help), default_value_t = CalibrationMethod::Percentile)]
    pub calibration: CalibrationMethod,
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
    let o = ExportOptions {
        train_size: a.train_size,
        check: !a.no_check,
        tolerance: lse_trainer::onnx::Tolerance {
            rtol: a.rtol,
            atol: a.atol,
        },
        ort_lib: a.ort.ort_lib.clone(),
    };
    let report = match (a.precision, &a.calibrate) {
        (Precision::Int8, Some(dataset)) => {
            let q = Int8Options {
                dataset: dataset.clone(),
                split: a.calibrate_split.clone(),
                images: a.calibrate_images,
                check_images: a.check_images,
                method: a.calibration,
            };
            serde_json::to_value(export_int8_checked(&a.checkpoint, &a.out, &o, &q)?)?
        }
        (Precision::Int8, None) => anyhow::bail!(
            "--precision int8 needs --calibrate DATASET (target images, e.g. cityscapes:/data/cityscapes)"
        ),
        (p, Some(_)) => anyhow::bail!("--calibrate is for --precision int8 (not {p})"),
        (p, None) => serde_json::to_value(export_checked_as(&a.checkpoint, &a.out, &o, p)?)?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("wrote {}", a.out.display());
    }
    Ok(())
}
