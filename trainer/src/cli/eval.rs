//! `lse-train eval`: the evaluation protocol of docs/method.md on a labelled Cityscapes
//! split (predict at the model's input size, upsample the probabilities bilinearly to
//! the label's full resolution, arg-max, one confusion matrix), through the same mIoU
//! code as `lse eval` (`lse_runtime::metrics`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use lse_runtime::datasets::{Dataset, DatasetKind, DatasetSpec};
use lse_runtime::labels::ClassSubset;

use crate::config::Config;
use crate::train::{Model, evaluate, evaluation_json, subset_for};

/// Arguments of `lse-train eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint (.safetensors written by lse-train).
    pub checkpoint: PathBuf,
    /// The labelled target: cityscapes:DIR.
    #[arg(long)]
    pub target: DatasetSpec,
    /// The split to evaluate.
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Prediction size WxH (default: the checkpoint's train_size, else 1024x512).
    #[arg(long, value_parser = super::parse_size)]
    pub size: Option<[u32; 2]>,
    /// Classes to average over: 19, 16 or 13 (default: 16 for a SYNTHIA-trained
    /// checkpoint, else 19).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Evaluate only the first N images (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The size a checkpoint was trained at (`train_size`), else 1024x512.
pub fn checkpoint_size(model: &Model) -> anyhow::Result<[u32; 2]> {
    match model.meta.extra.get("train_size") {
        Some(s) => serde_json::from_str(s).with_context(|| format!("checkpoint train_size `{s}`")),
        None => Ok([1024, 512]),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let device = a.device.resolve()?;
    if a.target.kind != DatasetKind::Cityscapes {
        anyhow::bail!(
            "the evaluation target must be cityscapes:DIR (got {})",
            a.target
        );
    }
    let model = Model::load(&a.checkpoint, device, None)?;
    let size = match a.size {
        Some(s) => s,
        None => checkpoint_size(&model)?,
    };
    let subset = match a.classes {
        Some(n) => ClassSubset::from_count(n)
            .ok_or_else(|| anyhow::anyhow!("--classes {n}: expected 19, 16 or 13"))?,
        None => model
            .meta
            .extra
            .get("source")
            .and_then(|s| s.parse::<DatasetSpec>().ok())
            .map_or(ClassSubset::All19, |s| subset_for(s.kind)),
    };
    let ds = Dataset::open_spec(&a.target, &a.split, None)
        .with_context(|| format!("opening {} (split {})", a.target, a.split))?;
    let n = if a.limit == 0 {
        ds.len()
    } else {
        a.limit.min(ds.len())
    };
    let mean = Config::default().mean_bgr;
    let cm = evaluate(&model, Arc::new(ds), size, mean, a.limit, a.json)?;
    if a.json {
        let mut v = evaluation_json(&cm, subset, &a.split, n);
        v["checkpoint"] = serde_json::json!(a.checkpoint);
        v["size"] = serde_json::json!(size);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", cm.report(subset).table());
        if subset == ClassSubset::Synthia16
            && let Some(m) = cm.miou(ClassSubset::Synthia13)
        {
            println!("mIoU (13 cls)    {:6.2}", m * 100.0);
        }
        println!(
            "{n} images of {} split {}, predicted at {}x{}",
            a.target, a.split, size[0], size[1]
        );
    }
    Ok(())
}
