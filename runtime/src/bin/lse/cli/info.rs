//! `lse info`: a model's contract and metadata.

use std::path::PathBuf;

use lse_runtime::engine::{Engine, EngineOptions, Provider};
use lse_runtime::provenance::DatasetSummary;

/// Arguments of `lse info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (default: models/default/model.onnx).
    pub model: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, the project's .venv, the system).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let path = super::model_or_default(a.model)?;
    let engine = Engine::load(
        &path,
        &EngineOptions {
            provider: Provider::Cpu,
            ort_lib: a.ort_lib,
            ..Default::default()
        },
    )?;
    let m = engine.meta();
    if a.json {
        return super::print_json(&serde_json::json!({
            "model": path,
            "input": {"name": lse_runtime::contract::INPUT, "type": "float32", "shape": ["N", 3, "H", "W"], "channels": "RGB", "range": [0, 255]},
            "outputs": [
                {"name": lse_runtime::contract::OUTPUT_TRAIN_IDS, "type": "uint8", "shape": ["N", "H", "W"]},
                {"name": lse_runtime::contract::OUTPUT_SCORES, "type": "float32", "shape": ["N", m.num_classes(), "H", "W"]},
            ],
            "datasets": {
                "source": DatasetSummary::describe(&m.source),
                "target": DatasetSummary::describe(&m.target),
            },
            "metadata": m,
        }));
    }
    println!("model          {}", path.display());
    println!(
        "architecture   {} (width {}), {} classes",
        m.architecture,
        m.width,
        m.num_classes()
    );
    println!(
        "input          {}: float32 N x 3 x H x W, RGB 0..255 (BGR + mean {:?} inside the graph)",
        lse_runtime::contract::INPUT,
        m.mean_bgr
    );
    println!(
        "outputs        {}: uint8 N x H x W; {}: float32 N x {} x H x W (logits)",
        lse_runtime::contract::OUTPUT_TRAIN_IDS,
        lse_runtime::contract::OUTPUT_SCORES,
        m.num_classes()
    );
    println!("training size  {}x{}", m.train_size[0], m.train_size[1]);
    println!("source         {}", dataset_line(&m.source));
    println!("target         {}", dataset_line(&m.target));
    println!("method         {}", m.method);
    println!("written by     lse {}", m.producer_version);
    if let Some(e) = &m.evaluation {
        println!("evaluation     {e}");
    }
    if !m.settings.is_null() {
        println!("settings       {}", m.settings);
    }
    println!("classes");
    for (t, name) in m.class_names.iter().enumerate() {
        let c = m.colors[t];
        println!(
            "  {t:>3}  {name:<14} label id {:>3}  colour #{:02x}{:02x}{:02x}",
            m.label_ids[t], c[0], c[1], c[2]
        );
    }
    Ok(())
}

/// A domain as `lse info` shows it: the dataset's kind and folder name (with the
/// number of images and the list hash when the model records them); an old
/// `kind:/path` spec is shown by kind and folder name, never by its path.
fn dataset_line(text: &str) -> String {
    match DatasetSummary::describe(text) {
        Some(s) => {
            let mut line = format!("{} dataset \"{}\"", s.kind, s.name);
            if let Some(split) = &s.split {
                line += &format!(", split {split}");
            }
            if let Some(n) = s.images {
                line += &format!(", {n} images");
            }
            if let Some(h) = &s.list {
                line += &format!(", image list {h}");
            }
            line
        }
        None => text.to_string(),
    }
}
