//! `lse-train eval`: the evaluation protocol of docs/method.md on a labelled Cityscapes
//! split (predict at the model's input size, upsample the probabilities bilinearly to
//! the label's full resolution, arg-max, one confusion matrix), through the same mIoU
//! code as `lse eval` (`lse_runtime::metrics`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use lse_runtime::datasets::{Dataset, DatasetSpec, Role};
use lse_runtime::evaluate::Evaluation;
use lse_runtime::labels::ClassSubset;

use lse_trainer::config::Config;
use lse_trainer::train::{Model, evaluate, subset_for};

/// Arguments of `lse-train eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub on: CheckpointOnSplit,
    /// Classes to average over: 19, 16 or 13 (default: 16 for a SYNTHIA-trained
    /// checkpoint, else 19).
    #[arg(long)]
    pub classes: Option<usize>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A checkpoint and the labelled Cityscapes-layout split it runs on (`eval`,
/// `premise`).
#[derive(Debug, clap::Args)]
pub struct CheckpointOnSplit {
    /// The checkpoint (.safetensors written by lse-train).
    pub checkpoint: PathBuf,
    #[arg(long, help = format!("The target: {}", Role::Target.specs()))]
    pub target: DatasetSpec,
    /// The split (choose settings on a tuning split, report on val).
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Prediction size WxH (default: the checkpoint's train_size, else 1024x512).
    #[arg(long, value_parser = super::parse_size)]
    pub size: Option<[u32; 2]>,
    /// Only the first N images (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
}

impl CheckpointOnSplit {
    /// The model on `device`, its prediction size and the split, checked.
    pub fn open(&self, device: tch::Device) -> anyhow::Result<(Model, [u32; 2], Dataset)> {
        if self.target.kind.layout().role != Role::Target {
            let expected = Role::Target.specs();
            anyhow::bail!("the target must be {expected} (got {})", self.target);
        }
        let model = Model::load(&self.checkpoint, device, None)?;
        let size = match self.size {
            Some(s) => s,
            None => checkpoint_size(&model)?,
        };
        let ds = Dataset::open_spec(&self.target, &self.split, None)
            .with_context(|| format!("opening {} (split {})", self.target, self.split))?;
        Ok((model, size, ds))
    }

    /// How many images a run over the split covers.
    pub fn images(&self, ds: &Dataset) -> usize {
        if self.limit == 0 {
            ds.len()
        } else {
            self.limit.min(ds.len())
        }
    }
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
    let (model, size, ds) = a.on.open(device)?;
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
    let n = a.on.images(&ds);
    let mean = Config::default().mean_bgr;
    let cm = evaluate(&model, Arc::new(ds), size, mean, a.on.limit, a.json)?;
    if a.json {
        let evaluation = Evaluation {
            checkpoint: Some(a.on.checkpoint.clone()),
            size: Some(size),
            ..Evaluation::of_split(&cm, subset, &a.on.split, n)
        };
        println!("{}", serde_json::to_string_pretty(&evaluation)?);
    } else {
        print!("{}", cm.report(subset).table());
        if subset == ClassSubset::Synthia16
            && let Some(m) = cm.miou(ClassSubset::Synthia13)
        {
            println!("mIoU (13 cls)    {:6.2}", m * 100.0);
        }
        println!(
            "{n} images of {} split {}, predicted at {}x{}",
            a.on.target, a.on.split, size[0], size[1]
        );
    }
    Ok(())
}
