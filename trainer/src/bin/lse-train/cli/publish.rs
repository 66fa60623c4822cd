//! `lse-train publish`: a finished run directory → a self-contained model folder that
//! says what the model was trained on, never where it lay on a disk
//! ([`lse_trainer::publish`]).

use std::path::PathBuf;

use lse_runtime::datasets::DatasetSpec;
use lse_trainer::publish::{PublishFrom, PublishOptions, PublishReport, publish};

const AFTER_HELP: &str = "\
Examples:
  # a finished run -> models/gta5-lse (eval.json: RUN_DIR/eval.json if `lse eval --json` wrote one there)
  lse-train publish runs/lse --out models/gta5-lse
  # the datasets moved since the run: say where they are now (their recorded names are kept)
  lse-train publish runs/lse --out models/gta5-lse --source gta5:/mnt/GTA5 --target cityscapes:/mnt/cityscapes
  # clean a model folder published before this command existed, in place
  lse-train publish --from-model models/default --out models/default

Writes model.onnx (exported with the ONNX Runtime parity check), checkpoint.safetensors,
run.json, config.toml and eval.json (when the run has an evaluation). Dataset paths become
summaries such as `gta5 \"source\" (300 images, list 1a2b3c4d)`; other absolute paths become
relative names. The command fails, leaving --out untouched, if any written file would still
hold an absolute path.";

/// Arguments of `lse-train publish`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The finished run directory (run.json, config.toml, model.safetensors; eval.json
    /// if `lse eval --json` was written there).
    #[arg(value_name = "RUN_DIR", required_unless_present = "from_model")]
    pub run_dir: Option<PathBuf>,
    /// Republish a model folder (checkpoint.safetensors, and run.json, config.toml,
    /// eval.json when present) instead of a run directory, e.g. one published before
    /// this command existed; it may be the --out folder itself.
    #[arg(long, value_name = "MODEL_DIR", conflicts_with = "run_dir")]
    pub from_model: Option<PathBuf>,
    /// The model folder to write, e.g. models/NAME (created if missing; the five files
    /// are replaced, other files are left alone).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The model's name, recorded in run.json (default: the --out folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the run's source dataset lies now, if it moved (KIND:DIR); its images are
    /// counted and hashed there, its recorded folder name is kept.
    #[arg(long, value_name = "KIND:DIR")]
    pub source: Option<DatasetSpec>,
    /// Where the run's target dataset lies now, if it moved (cityscapes:DIR).
    #[arg(long, value_name = "KIND:DIR")]
    pub target: Option<DatasetSpec>,
    /// The evaluation to ship as eval.json (`lse eval --json` or `lse-train eval
    /// --json` output); default: eval.json of the run directory (or model folder),
    /// else the run's own final evaluation from run.json.
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// Absolute part of the accepted |logit difference| in the export's parity check
    /// (max |diff| <= rtol * max |logit| + atol, rtol as `lse-train export`'s default).
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    #[command(flatten)]
    pub ort: super::OrtArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let from = match (a.run_dir, a.from_model) {
        (Some(run), None) => PublishFrom::RunDir(run),
        (None, Some(dir)) => PublishFrom::ModelFolder(dir),
        _ => anyhow::bail!("give either RUN_DIR or --from-model MODEL_DIR"),
    };
    let report = publish(&PublishOptions {
        from,
        out: a.out,
        name: a.name,
        source: a.source,
        target: a.target,
        eval: a.eval,
        tolerance: a.tolerance,
        ort_lib: a.ort.ort_lib,
    })?;
    if a.json {
        // Through a JSON value, as `lse-train export --json`: the parity check's f32
        // numbers print as the f64 values they have always been printed as.
        return lse_cli::print_json(&serde_json::to_value(&report)?);
    }
    print_summary(&report);
    Ok(())
}

fn print_summary(r: &PublishReport) {
    println!("published {} ({})", r.out.display(), r.files.join(", "));
    if let Some(s) = &r.source {
        println!("  source  {s}");
    }
    if let Some(t) = &r.target {
        println!("  target  {t}");
    }
}
