//! What a model is published from: a finished run directory or a model folder, read
//! and checked before anything is written.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lse_runtime::evaluate::Evaluation;

use super::json_text::{dedent, member_value};
use super::{PublishFrom, PublishOptions};
use crate::run::{RunRecord, RunStatus};

/// run.json as read: its text (rewritten in place, so key order and numbers stay)
/// and the run record it holds.
pub(super) struct RecordFile {
    pub(super) text: String,
    /// `None` for a model folder's run.json that is not a run record (it is still
    /// published, scrubbed).
    pub(super) record: Option<RunRecord>,
}

/// Where a model is published from.
pub(super) struct Inputs {
    /// The folder (run directory or model folder).
    pub(super) base: PathBuf,
    pub(super) checkpoint: PathBuf,
    pub(super) record: Option<RecordFile>,
    pub(super) config: Option<String>,
    /// The evaluation's JSON text.
    pub(super) eval: Option<String>,
}

impl Inputs {
    /// The run record, when there is one.
    pub(super) fn run_record(&self) -> Option<&RunRecord> {
        self.record.as_ref().and_then(|r| r.record.as_ref())
    }
}

pub(super) fn read_inputs(o: &PublishOptions) -> anyhow::Result<Inputs> {
    let (base, checkpoint, need_record) = match &o.from {
        PublishFrom::RunDir(run) => (run.clone(), run_checkpoint(run)?, true),
        PublishFrom::ModelFolder(dir) => (dir.clone(), model_checkpoint(dir)?, false),
    };
    let record = read_record(&base.join("run.json"), need_record)?;
    let config_path = base.join("config.toml");
    let config = if config_path.is_file() {
        Some(
            std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
        )
    } else {
        None
    };
    let eval = match &o.eval {
        Some(p) => Some(read_evaluation(p)?),
        None if base.join("eval.json").is_file() => Some(read_evaluation(&base.join("eval.json"))?),
        None => record.as_ref().and_then(recorded_evaluation),
    };
    Ok(Inputs {
        base,
        checkpoint,
        record,
        config,
        eval,
    })
}

/// The text of a run record's final evaluation, as it stands in run.json.
fn recorded_evaluation(file: &RecordFile) -> Option<String> {
    file.record.as_ref()?.evaluation.as_ref()?;
    member_value(&file.text, "evaluation").map(dedent)
}

/// An evaluation file's text, checked to hold an [`Evaluation`].
fn read_evaluation(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str::<Evaluation>(&text).with_context(|| {
        format!(
            "{} is not an evaluation (`lse eval --json` or `lse-train eval --json` output)",
            path.display()
        )
    })?;
    Ok(text)
}

/// A finished run directory's model.safetensors, or why it has none.
fn run_checkpoint(run: &Path) -> anyhow::Result<PathBuf> {
    let ckpt = run.join("model.safetensors");
    if run.join("run.json").is_file() && ckpt.is_file() {
        return Ok(ckpt);
    }
    if run.join("checkpoint.safetensors").is_file() {
        anyhow::bail!(
            "{} has no model.safetensors but a checkpoint.safetensors: it looks like a \
             model folder; republish it with --from-model {}",
            run.display(),
            run.display()
        );
    }
    if !run.join("run.json").is_file() {
        anyhow::bail!(
            "{} is not a run directory (run.json expected)",
            run.display()
        );
    }
    anyhow::bail!(
        "{} has no model.safetensors: the run has not finished (continue it with \
         `lse-train train|adapt --resume {}`)",
        run.display(),
        run.display()
    )
}

/// A model folder's checkpoint.safetensors.
fn model_checkpoint(dir: &Path) -> anyhow::Result<PathBuf> {
    let ckpt = dir.join("checkpoint.safetensors");
    if !ckpt.is_file() {
        anyhow::bail!(
            "{} is not a model folder (checkpoint.safetensors expected)",
            dir.display()
        );
    }
    Ok(ckpt)
}

/// run.json: required, and a run record, for a run directory; optional for a model
/// folder, where one that is not a run record is published as it is (scrubbed).
fn read_record(path: &Path, need_record: bool) -> anyhow::Result<Option<RecordFile>> {
    if !need_record && !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let parsed = serde_json::from_value::<RunRecord>(doc.clone());
    if need_record {
        // A run record must be one: fail early on a foreign run.json.
        let record = parsed.with_context(|| format!("{} is not a run record", path.display()))?;
        if record.status != RunStatus::Finished {
            tracing::warn!(
                status = %record.status,
                "the run's status is not `finished`; publishing its model.safetensors anyway"
            );
        }
        return Ok(Some(RecordFile {
            text,
            record: Some(record),
        }));
    }
    if !doc.is_object() {
        anyhow::bail!("{} is not a JSON object", path.display());
    }
    let record = parsed
        .map_err(|e| {
            tracing::warn!(
                "{} is not a run record ({e}); it is published scrubbed, and the datasets \
                 are read from the checkpoint's metadata",
                path.display()
            )
        })
        .ok();
    Ok(Some(RecordFile { text, record }))
}
