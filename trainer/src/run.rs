//! The run directory: resolved configuration, run record, metrics, checkpoints, plot.
//!
//! ```text
//! RUN_DIR/
//!   config.toml              the resolved configuration
//!   run.json                 the run record (RunRecord): command, datasets, versions,
//!                            device, sessions, per-phase wall times, per-round stats
//!   metrics.jsonl            one JSON object per logged iteration / evaluation
//!   checkpoints/last.safetensors   the resumable state (network, Adam moments, loop
//!                            position in the metadata key `lse.state`), replaced
//!                            atomically every `checkpoint_every` iterations, at the
//!                            end of each phase and round
//!   checkpoints/round-NN.safetensors   the network after round NN (adapt)
//!   cache/round-NN.safetensors         the generated examples of the round in progress
//!   model.safetensors        the final network, with source/target/method/settings/
//!                            evaluation/train_size in its metadata (for `export`)
//!   curves.png               loss (top) and mIoU (bottom) curves
//!   report.html              the run report (lse-train report): curves, per-round
//!                            table, pseudo-label pictures, per-class IoU
//!   samples/round-NN/        pictures of a few confident images per round
//! ```
//!
//! Every checkpoint is one of our safetensors checkpoints, so `lse-train export` and
//! `lse-train eval` accept all of them.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lse_runtime::evaluate::Evaluation;
use lse_runtime::provenance::DatasetSummary;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::checkpoint::{self, CheckpointMeta};
use crate::config::Config;
use crate::diagnostics::RoundDiagnostics;
use crate::lse::Window;
use crate::metrics_log::MetricsPoint;

/// Seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What a run does: `lse-train train` (source-only) or `lse-train adapt` (LSE); in
/// `run.json` as `"train"` / `"adapt"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunCommand {
    Train,
    Adapt,
}

impl RunCommand {
    /// The subcommand's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunCommand::Train => "train",
            RunCommand::Adapt => "adapt",
        }
    }

    /// The method recorded in `run.json` and in the model's metadata.
    pub fn method(self) -> &'static str {
        match self {
            RunCommand::Train => "source-only",
            RunCommand::Adapt => "lse",
        }
    }
}

impl std::fmt::Display for RunCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a run stands; in `run.json` as `"running"` / `"finished"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Finished,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
        })
    }
}

/// A phase of a run whose wall time is recorded (`phase_seconds` of the run, `seconds`
/// of a round). The variants are declared in alphabetical order so that the maps keyed
/// by them keep the order `run.json` always had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Diagnostics,
    Eval,
    Generate,
    Rank,
    Thresholds,
    Train,
}

impl Phase {
    /// The phases of a round in the order they run.
    pub const ROUND: [Phase; 6] = [
        Phase::Rank,
        Phase::Thresholds,
        Phase::Generate,
        Phase::Diagnostics,
        Phase::Train,
        Phase::Eval,
    ];

    /// The phases of a round's preparation ([`Phase::ROUND`] before training).
    pub const PREPARATION: [Phase; 4] = [
        Phase::Rank,
        Phase::Thresholds,
        Phase::Generate,
        Phase::Diagnostics,
    ];
}

/// Statistics of one adaptation round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundStats {
    /// 1-based round number.
    pub round: usize,
    /// Share p of the target set.
    pub p: f64,
    /// Target images ranked.
    pub target_images: usize,
    /// |S|: confident images (union over classes).
    pub confident: usize,
    /// Images kept per class.
    pub kept_per_class: Vec<usize>,
    /// tau_c per class (null: the class has no boundary image).
    pub thresholds: Vec<Option<f64>>,
    /// Generated examples (|S| * K).
    pub examples: usize,
    /// Share of pseudo-label pixels set to ignore over all examples.
    pub ignored_share: f64,
    /// Training iterations of the round.
    pub iterations: u64,
    /// Iterations done so far (equal to `iterations` when the round is complete).
    pub iterations_done: u64,
    /// Sums of the losses over the iterations done.
    pub source_loss_sum: f64,
    pub target_loss_sum: f64,
    /// Mean losses over the round.
    pub source_loss: Option<f64>,
    pub target_loss: Option<f64>,
    /// Target val mIoU after the round (when val labels exist).
    pub miou: Option<f64>,
    /// Wall seconds per phase (rank, thresholds, generate, diagnostics, train, eval).
    pub seconds: BTreeMap<Phase, f64>,
    /// Classes whose threshold is NaN (a degenerate group in the boundary image, kept
    /// whole under `degenerate_groups = "keep"`; NaN is written as null above).
    #[serde(default)]
    pub degenerate_thresholds: Vec<usize>,
    /// Pseudo-label diagnostics, when the target split has labels and they are on.
    #[serde(default)]
    pub diagnostics: Option<RoundDiagnostics>,
    /// Confident images pictured for the report (files under `samples/round-NN/`).
    #[serde(default)]
    pub samples: Vec<RoundSample>,
}

/// A confident image pictured in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSample {
    /// Index in the target split, and the frame's name.
    pub image: usize,
    pub key: String,
    /// The image's windows.
    pub windows: Vec<Window>,
    /// A ground-truth picture exists.
    pub truth: bool,
}

/// Where the loop stands; stored in every resumable checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Training iterations done in this run (learning-rate schedule, source order).
    pub iteration: u64,
    /// Adaptation: the current 0-based round.
    pub round: usize,
    /// Adaptation: the current round's examples are generated and cached.
    pub examples_ready: bool,
    /// Adaptation: the current round's statistics so far.
    pub current: Option<RoundStats>,
    /// Sums of the source-only losses since the last logged window.
    pub finished: bool,
    /// Adam's step count and loss-scaling state.
    pub adam_step: i64,
    pub loss_scale: Option<f64>,
    pub good_steps: u64,
}

/// One process's part of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub started: f64,
    pub ended: Option<f64>,
    pub device: String,
    pub threads: i32,
    pub start_iteration: u64,
}

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// `train` (source-only) or `adapt` (LSE).
    pub command: RunCommand,
    /// `source-only` or `lse`.
    pub method: String,
    pub init: PathBuf,
    pub source: String,
    pub target: Option<String>,
    pub versions: BTreeMap<String, String>,
    pub started: f64,
    pub ended: Option<f64>,
    pub status: RunStatus,
    pub sessions: Vec<Session>,
    /// Total wall seconds per phase over all sessions.
    pub phase_seconds: BTreeMap<Phase, f64>,
    pub rounds: Vec<RoundStats>,
    /// The final evaluation, when val labels exist.
    pub evaluation: Option<Evaluation>,
    /// Adaptation: the evaluation of the starting model, before round 1.
    #[serde(default)]
    pub initial_evaluation: Option<Evaluation>,
    /// Evaluations during the run: `(iteration, mIoU)`.
    pub miou_curve: Vec<(u64, f64)>,
    /// What curves.png shows.
    pub plot_legend: String,
    /// The model's `[width, height]` input size (the target size).
    pub train_size: [u32; 2],
    /// Network width and classes of the model.
    pub width: f64,
    pub classes: i64,
    pub init_scheme: String,
    /// A published model's record only: who published it, under which name, and its
    /// datasets' summaries (`lse-train publish`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Published>,
}

/// What `lse-train publish` adds to the run record of the model folder it writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// The model's name.
    pub name: String,
    /// `lse-train publish VERSION`.
    pub by: String,
    pub datasets: DatasetPair,
}

/// A run's source and target datasets, as summaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetPair {
    pub source: Option<DatasetSummary>,
    pub target: Option<DatasetSummary>,
}

/// The versions recorded in runs.
pub fn versions() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("lse".into(), lse_runtime::VERSION.into());
    v.insert("tch".into(), "0.24.0".into());
    v.insert("libtorch".into(), "2.11.0".into());
    v.insert(
        "cuda_available".into(),
        tch::Cuda::is_available().to_string(),
    );
    v
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn record_path(&self) -> PathBuf {
        self.root.join("run.json")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn last_path(&self) -> PathBuf {
        self.root.join("checkpoints").join("last.safetensors")
    }
    pub fn round_path(&self, round: usize) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(format!("round-{round:02}.safetensors"))
    }
    pub fn cache_path(&self, round: usize) -> PathBuf {
        self.root
            .join("cache")
            .join(format!("round-{round:02}.safetensors"))
    }
    pub fn model_path(&self) -> PathBuf {
        self.root.join("model.safetensors")
    }
    pub fn plot_path(&self) -> PathBuf {
        self.root.join("curves.png")
    }
    pub fn report_path(&self) -> PathBuf {
        self.root.join("report.html")
    }
    pub fn samples_dir(&self, round: usize) -> PathBuf {
        self.root.join("samples").join(format!("round-{round:02}"))
    }

    /// Creates a fresh run directory; refuses one that already holds a run.
    pub fn create(root: &Path) -> anyhow::Result<Self> {
        let d = Self::new(root);
        d.refuse_existing()?;
        for sub in ["checkpoints", "cache"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        Ok(d)
    }

    /// An error when the folder already holds a run.
    pub fn refuse_existing(&self) -> anyhow::Result<()> {
        if self.record_path().exists() {
            anyhow::bail!(
                "{} already holds a run (run.json); continue it with --resume {} or choose another --out",
                self.root.display(),
                self.root.display()
            );
        }
        Ok(())
    }

    /// An existing run directory, read-only (no folder is created).
    pub fn open_existing(root: &Path) -> anyhow::Result<Self> {
        let d = Self::new(root);
        if !d.record_path().is_file() {
            anyhow::bail!("{} is not a run directory (no run.json)", root.display());
        }
        Ok(d)
    }

    /// Opens an existing run directory for `--resume`.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let d = Self::new(root);
        if !d.record_path().is_file() || !d.config_path().is_file() {
            anyhow::bail!(
                "{} is not a run directory (run.json and config.toml expected)",
                root.display()
            );
        }
        for sub in ["checkpoints", "cache"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(d)
    }

    pub fn write_config(&self, c: &Config) -> anyhow::Result<()> {
        write_atomic(&self.config_path(), c.to_toml().as_bytes())
    }

    pub fn read_config(&self) -> anyhow::Result<Config> {
        let mut c = Config::from_file(&self.config_path())?;
        c.validate()?;
        // The TOML form omits unset options; nothing else to restore.
        c.width = c.width.filter(|w| *w > 0.0);
        Ok(c)
    }

    pub fn write_record(&self, r: &RunRecord) -> anyhow::Result<()> {
        write_atomic(&self.record_path(), &serde_json::to_vec_pretty(r)?)
    }

    pub fn read_record(&self) -> anyhow::Result<RunRecord> {
        let bytes = std::fs::read(self.record_path())
            .with_context(|| format!("reading {}", self.record_path().display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", self.record_path().display()))
    }

    /// Appends one line to metrics.jsonl.
    pub fn log(&self, line: &impl Serialize) -> anyhow::Result<()> {
        let line = serde_json::to_string(line)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.metrics_path())
            .with_context(|| format!("opening {}", self.metrics_path().display()))?;
        writeln!(f, "{line}")?;
        Ok(())
    }

    /// Keeps only the metrics lines up to `iteration` (lines written after the last
    /// checkpoint of an interrupted session would otherwise appear twice).
    pub fn truncate_metrics(&self, iteration: u64) -> anyhow::Result<()> {
        let Ok(text) = std::fs::read_to_string(self.metrics_path()) else {
            return Ok(());
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<MetricsPoint>(l)
                    .is_ok_and(|point| point.iteration <= iteration)
            })
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        write_atomic(&self.metrics_path(), out.as_bytes())
    }

    /// Reads metrics.jsonl (lines that do not parse are skipped).
    pub fn read_metrics(&self) -> Vec<MetricsPoint> {
        std::fs::read_to_string(self.metrics_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Writes a file atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    lse_runtime::imageio::write_atomic(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Saves a resumable checkpoint: the network's variables, extra named tensors (the
/// optimiser state) and the loop state as metadata `lse.state`.
pub fn save_state(
    path: &Path,
    vs: &tch::nn::VarStore,
    meta: &CheckpointMeta,
    extra: Vec<(String, Tensor)>,
    state: &LoopState,
) -> anyhow::Result<()> {
    let mut meta = meta.clone();
    meta.extra
        .insert("state".into(), serde_json::to_string(state)?);
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.extend(extra);
    checkpoint::save(path, &meta, &named)?;
    Ok(())
}

/// Reads a resumable checkpoint: its tensors by name and its loop state.
pub fn load_state(path: &Path) -> anyhow::Result<(HashMap<String, Tensor>, LoopState)> {
    let (md, tensors) = checkpoint::read_safetensors(path)?;
    let state = md
        .get("lse.state")
        .ok_or_else(|| anyhow::anyhow!("{} has no loop state (lse.state)", path.display()))?;
    let state: LoopState =
        serde_json::from_str(state).with_context(|| format!("{}: lse.state", path.display()))?;
    Ok((tensors.into_iter().collect(), state))
}

/// What `curves.png` shows (the picture also carries its own titles and legends).
pub const PLOT_LEGEND: &str = "curves.png: top panel = training losses per logged iteration \
(blue: source cross-entropy, red: target loss on the generated examples); bottom panel = \
target val mIoU in percent after each evaluation (green); x axis: iteration.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_json_names_are_unchanged() {
        let names = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for (c, n) in [(RunCommand::Train, "train"), (RunCommand::Adapt, "adapt")] {
            assert_eq!(names(serde_json::to_value(c).unwrap()), n);
            assert_eq!(c.to_string(), n);
        }
        for (s, n) in [
            (RunStatus::Running, "running"),
            (RunStatus::Finished, "finished"),
        ] {
            assert_eq!(names(serde_json::to_value(s).unwrap()), n);
            assert_eq!(s.to_string(), n);
        }
        let seconds: BTreeMap<Phase, f64> = Phase::ROUND.iter().map(|&p| (p, 1.0)).collect();
        assert_eq!(
            serde_json::to_string(&seconds).unwrap(),
            r#"{"diagnostics":1.0,"eval":1.0,"generate":1.0,"rank":1.0,"thresholds":1.0,"train":1.0}"#
        );
    }

    /// A run record as read, the document it was read from and the document it is
    /// written as again (through the text, as the file is written: f32 fields print
    /// as f32).
    fn read_and_write(text: &str) -> (RunRecord, serde_json::Value, serde_json::Value) {
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        let record: RunRecord = serde_json::from_value(doc.clone()).unwrap();
        let written = serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        (record, doc, written)
    }

    /// Every member of `doc`, at every depth, is in `written` with the same value
    /// (`written` may have more).
    fn assert_kept(doc: &serde_json::Value, written: &serde_json::Value, at: &str) {
        use serde_json::Value;
        match (doc, written) {
            (Value::Object(d), Value::Object(w)) => {
                for (k, v) in d {
                    let w = w.get(k).unwrap_or_else(|| panic!("{at}.{k} was dropped"));
                    assert_kept(v, w, &format!("{at}.{k}"));
                }
            }
            (Value::Array(d), Value::Array(w)) => {
                assert_eq!(d.len(), w.len(), "{at}");
                for (i, (d, w)) in d.iter().zip(w).enumerate() {
                    assert_kept(d, w, &format!("{at}[{i}]"));
                }
            }
            _ => assert_eq!(doc, written, "{at}"),
        }
    }

    #[test]
    fn run_records_written_before_read_back_unchanged() {
        // `lse-train train` and `adapt` on tiny synthetic data (the adaptation's
        // record with one round and its diagnostics), written before the record's
        // evaluations were typed: every field, its type and its nulls come back.
        let (train, doc, written) =
            read_and_write(include_str!("../tests/fixtures/run-train.json"));
        assert_eq!(written, doc);
        assert_eq!(train.command, RunCommand::Train);
        assert_eq!(train.status, RunStatus::Finished);
        let ev = train.evaluation.unwrap();
        assert_eq!(ev.split.as_deref(), Some("val"));
        assert_eq!(ev.class_ious().len(), 19);
        let (adapt, doc, written) =
            read_and_write(include_str!("../tests/fixtures/run-adapt.json"));
        assert_eq!(written, doc);
        assert_eq!(adapt.command, RunCommand::Adapt);
        assert!(adapt.initial_evaluation.unwrap().miou.is_some());
        assert_eq!(adapt.rounds.len(), 1);
        // Published models' records, with what publish added, from older versions
        // (fields added since are written as well).
        for text in [
            include_str!("../../models/default/run.json"),
            include_str!("../../models/source-synth/run.json"),
        ] {
            let (record, doc, written) = read_and_write(text);
            assert_kept(&doc, &written, "");
            let published = record.published.unwrap();
            assert!(published.datasets.source.unwrap().images.is_some());
        }
    }

    #[test]
    fn evaluations_written_before_read_back_unchanged() {
        // `lse-train eval --json --classes 16`: the 13-class mIoU, checkpoint, size.
        let text = include_str!("../tests/fixtures/lse-train-eval-16.json");
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        let ev: Evaluation = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(serde_json::to_value(&ev).unwrap(), doc);
        assert!(ev.miou13.flatten().is_some() && ev.size.is_some());
        // Published models' eval.json: one of each shape.
        for text in [
            include_str!("../../models/default/eval.json"),
            include_str!("../../models/source-synth/eval.json"),
        ] {
            let doc: serde_json::Value = serde_json::from_str(text).unwrap();
            let ev: Evaluation = serde_json::from_value(doc.clone()).unwrap();
            assert_eq!(serde_json::to_value(&ev).unwrap(), doc);
        }
    }

    #[test]
    fn metrics_are_truncated_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        for i in 1..=5 {
            run.log(&serde_json::json!({"iteration": i})).unwrap();
        }
        run.truncate_metrics(3).unwrap();
        assert_eq!(run.read_metrics().len(), 3);
    }
}
