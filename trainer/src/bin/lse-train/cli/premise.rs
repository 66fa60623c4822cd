//! `lse-train premise`: measures the paper's premise for a model on a target split
//! (entropy and accuracy on full images vs up-scaled windows, confident errors); the
//! instrument of the regime search in docs/synthetic-domains.md. It never trains.

use std::path::Path;

use anyhow::Context;
use lse_runtime::datasets::{Dataset, DatasetSpec, Role};

use super::eval::CheckpointOnSplit;
use lse_trainer::config::Config;
use lse_trainer::premise::{self, PremiseReport, PremiseSettings};

/// Arguments of `lse-train premise`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub on: CheckpointOnSplit,
    #[arg(long, help = format!(
        "A source dataset ({}) for the source entropy reference",
        Role::Source.specs()
    ))]
    pub source: Option<DatasetSpec>,
    /// Window scales, comma-separated (LSE's window_scale; 1.0 is the whole image).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.75")]
    pub scales: Vec<f64>,
    /// Windows per image and scale.
    #[arg(long, default_value_t = 4)]
    pub patches: usize,
    /// Seed of the window positions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `lse-train premise --json` prints: the report and what it measured.
#[derive(Debug, serde::Serialize)]
struct PremiseOutput<'a> {
    #[serde(flatten)]
    report: &'a PremiseReport,
    checkpoint: &'a Path,
    /// The target as given (`cityscapes:DIR`).
    target: String,
    split: &'a str,
    /// The prediction size `[width, height]`.
    size: [u32; 2],
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(s) = a.scales.iter().find(|s| !(**s > 0.0 && **s <= 1.0)) {
        anyhow::bail!("--scales: {s} is not in (0, 1]");
    }
    if a.patches == 0 {
        anyhow::bail!("--patches must be at least 1");
    }
    let device = a.device.resolve()?;
    let (model, size, target) = a.on.open(device)?;
    let source = a
        .source
        .as_ref()
        .map(|s| Dataset::open_spec(s, "train", None).with_context(|| format!("opening {s}")))
        .transpose()?;
    let settings = PremiseSettings {
        size,
        scales: a.scales.clone(),
        patches: a.patches,
        seed: a.seed,
        mean_bgr: Config::default().mean_bgr,
    };
    let n = a.on.images(&target);
    let bar = lse_trainer::train::bar(n as u64, "premise", "images", a.json);
    let report = premise::measure(
        &model,
        &target,
        source.as_ref(),
        &settings,
        a.on.limit,
        || bar.inc(1),
    )?;
    bar.finish_and_clear();
    if a.json {
        let output = PremiseOutput {
            report: &report,
            checkpoint: &a.on.checkpoint,
            target: a.on.target.to_string(),
            split: &a.on.split,
            size,
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1} %", v * 100.0))
}

/// The report as a plain-text table.
fn table(r: &PremiseReport) -> String {
    let mut s = format!(
        "{} images; H/ln C: full target {:.4}, source {}\n",
        r.images,
        r.target_entropy,
        r.source_entropy.map_or("–".into(), |v| format!("{v:.4}"))
    );
    s += &format!(
        "accuracy on full images {}; confident errors (p > {}) {} of all errors\n",
        pct(r.target_accuracy),
        premise::CONFIDENT,
        pct(r.confident_error_share)
    );
    for c in &r.confident_confusions {
        s += &format!(
            "  {} -> {}: {} of errors\n",
            c.truth,
            c.predicted,
            pct(Some(c.share_of_errors))
        );
    }
    s += "scale  H windows  ratio  agree w/ pseudo  window acc  pseudo acc\n";
    for w in &r.scales {
        s += &format!(
            "{:<5}  {:9.4}  {:5.3}  {:>15}  {:>10}  {:>10}\n",
            w.scale,
            w.window_entropy,
            w.entropy_ratio,
            pct(Some(w.agreement_with_pseudo_labels)),
            pct(w.window_accuracy),
            pct(w.pseudo_label_accuracy)
        );
    }
    s
}
