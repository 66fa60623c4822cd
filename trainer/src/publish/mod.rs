//! Publishing (`lse-train publish`): a finished run directory → a self-contained model
//! folder (`model.onnx`, `checkpoint.safetensors`, `run.json`, `config.toml`,
//! `eval.json`) that says what the model was trained on, never where it lay on a disk.
//!
//! Every `kind:/path` dataset spec of the run (run record, checkpoint metadata, hence
//! the ONNX metadata) becomes a [`DatasetSummary`](lse_runtime::provenance::DatasetSummary)
//! (kind, folder name, split, number of images, image-list hash), recomputed by opening
//! the dataset when it is still there, else kind and folder name only. Every other
//! absolute path (the `--init` checkpoint, `lse eval`'s `pred`/`gt` folders, imported
//! weights) becomes a relative name: the part under a dataset root
//! (`target/gtFine/val`), the part under the run directory (`pred`), else its last two
//! components (`source-only/model.safetensors`). The full local paths stay in the run
//! directory.
//!
//! run.json and eval.json are rewritten inside their string literals only, so key
//! order and numbers stay as the run wrote them; run.json gains a `published` member
//! ([`Published`]). The files are written into a staging folder inside the output
//! folder, checked (the ONNX export's parity check, and a scan for absolute paths in
//! every file written), and only then renamed into place, one atomic rename each; a
//! failure leaves the output folder as it was.

mod datasets;
mod inputs;
mod json_text;
mod scrub;
mod stage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lse_runtime::datasets::DatasetSpec;
use lse_runtime::evaluate::Evaluation;
use serde::Serialize;

use crate::checkpoint;
use crate::export::CheckReport;
use crate::run::{DatasetPair, Published, RunRecord};
use inputs::Inputs;
use scrub::Scrubber;

/// The folder a model is published from.
#[derive(Debug, Clone)]
pub enum PublishFrom {
    /// A finished run directory (run.json, config.toml, model.safetensors; eval.json
    /// if `lse eval --json` was written there).
    RunDir(PathBuf),
    /// A model folder (checkpoint.safetensors, and run.json, config.toml, eval.json
    /// when present), e.g. one published before `publish` existed; it may be the
    /// output folder itself.
    ModelFolder(PathBuf),
}

/// What to publish, where.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub from: PublishFrom,
    /// The model folder to write (created if missing; the five files are replaced,
    /// other files are left alone).
    pub out: PathBuf,
    /// The model's name, recorded in run.json (default: the output folder's name).
    pub name: Option<String>,
    /// Where the run's source dataset lies now, if it moved; its images are counted
    /// and hashed there, its recorded folder name is kept.
    pub source: Option<DatasetSpec>,
    /// Where the run's target dataset lies now, if it moved.
    pub target: Option<DatasetSpec>,
    /// The evaluation to ship as eval.json (an [`Evaluation`] file); default: eval.json
    /// of the folder published from, else the run's own final evaluation.
    pub eval: Option<PathBuf>,
    /// Absolute part of the accepted |logit difference| in the export's parity check.
    pub tolerance: f32,
    /// Path of libonnxruntime.so.
    pub ort_lib: Option<PathBuf>,
}

/// What was published (`lse-train publish --json`).
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// The datasets' summaries.
    pub datasets: DatasetPair,
    /// The files written into the model folder.
    pub files: Vec<String>,
    pub name: String,
    pub out: PathBuf,
    /// The export's parity check.
    pub parity: Option<CheckReport>,
    /// The datasets' summaries as text (`gta5 "source" (300 images, list 1a2b3c4d)`).
    pub source: Option<String>,
    pub target: Option<String>,
}

/// Publishes a model folder (see the module documentation).
pub fn publish(o: &PublishOptions) -> anyhow::Result<PublishReport> {
    let inputs = inputs::read_inputs(o)?;
    if matches!(o.from, PublishFrom::RunDir(_)) && same_dir(&inputs.base, &o.out) {
        anyhow::bail!(
            "--out must be a model folder, not the run directory {}",
            inputs.base.display()
        );
    }
    let mut meta = checkpoint::read_meta(&inputs.checkpoint)?;
    let (_, tensors) = checkpoint::read_safetensors(&inputs.checkpoint)?;
    let (datasets, scrub) = datasets::summarise_datasets(o, &inputs, &meta);
    // The checkpoint's metadata (and so the ONNX metadata).
    meta.extra.remove("state");
    meta.extra = meta
        .extra
        .iter()
        .map(|(k, v)| (k.clone(), scrub.meta_value(v)))
        .collect();
    let name = model_name(o, &inputs.base);
    let published = Published {
        by: format!("lse-train publish {}", lse_runtime::VERSION),
        datasets: datasets.clone(),
        name: name.clone(),
    };
    let files = published_files(&inputs, &scrub, &published)?;
    let export = stage::stage_and_move(o, &meta, tensors, &files)?;
    let mut names: Vec<String> = vec!["checkpoint.safetensors".into(), "model.onnx".into()];
    names.extend(files.keys().map(|f| f.to_string()));
    Ok(PublishReport {
        source: datasets.source.as_ref().map(ToString::to_string),
        target: datasets.target.as_ref().map(ToString::to_string),
        datasets,
        files: names,
        name,
        out: o.out.clone(),
        parity: export.parity,
    })
}

/// The model's name: the one given, else the output folder's name.
fn model_name(o: &PublishOptions, base: &Path) -> String {
    o.name.clone().unwrap_or_else(|| {
        o.out
            .file_name()
            .or_else(|| base.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    })
}

/// The text files to publish (run.json, and config.toml and eval.json when there
/// are any), scrubbed; the JSON ones checked to still parse.
fn published_files(
    inputs: &Inputs,
    scrub: &Scrubber,
    published: &Published,
) -> anyhow::Result<BTreeMap<&'static str, Vec<u8>>> {
    let record_text = match &inputs.record {
        Some(file) => json_text::set_member(&scrub.json_text(&file.text), "published", published)?,
        None => json_text::set_member("{}", "published", published)?,
    };
    let mut files: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    files.insert("run.json", record_text.into_bytes());
    if let Some(t) = &inputs.config {
        files.insert("config.toml", scrub.toml_text(t)?.into_bytes());
    }
    if let Some(e) = &inputs.eval {
        files.insert("eval.json", scrub.json_text(e).into_bytes());
    }
    check_rewritten(inputs, &files)?;
    Ok(files)
}

/// Scrubbing rewrites string values only: a run record is still one, an evaluation
/// still one, and any other JSON still valid.
fn check_rewritten(inputs: &Inputs, files: &BTreeMap<&str, Vec<u8>>) -> anyhow::Result<()> {
    for (&file, bytes) in files {
        match file {
            "run.json" if inputs.run_record().is_some() => {
                serde_json::from_slice::<RunRecord>(bytes).map(drop)
            }
            "run.json" => serde_json::from_slice::<serde_json::Value>(bytes).map(drop),
            "eval.json" => serde_json::from_slice::<Evaluation>(bytes).map(drop),
            _ => Ok(()),
        }
        .with_context(|| format!("the rewritten {file} no longer holds what it held"))?;
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
