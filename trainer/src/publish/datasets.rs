//! The run's datasets as summaries: every recorded `kind:/path` spec (run record,
//! checkpoint metadata) becomes a [`DatasetSummary`], recomputed by opening the
//! dataset when it is still there (or where `--source`/`--target` say it lies now),
//! else kind and folder name only; the scrubber learns each spec and root.

use lse_runtime::datasets::DatasetSpec;
use lse_runtime::provenance::DatasetSummary;

use super::PublishOptions;
use super::inputs::Inputs;
use super::scrub::Scrubber;
use crate::checkpoint::CheckpointMeta;
use crate::config::Config;
use crate::run::{DatasetPair, RunCommand};

/// The command that produced the checkpoint: as recorded, else guessed from the
/// checkpoint's method.
fn run_command(inputs: &Inputs, meta: &CheckpointMeta) -> RunCommand {
    match inputs.run_record() {
        Some(r) => r.command,
        None if meta.extra.get("method").map(String::as_str) == Some("lse") => RunCommand::Adapt,
        None => RunCommand::Train,
    }
}

/// The target's split the run used: adaptation reads the target split, a
/// source-only run only evaluates on the val split.
fn target_split(inputs: &Inputs, command: RunCommand) -> String {
    let config = inputs.config.as_deref().and_then(|t| {
        Config::from_toml(t, "config.toml")
            .map_err(|e| tracing::warn!("config.toml: {e}; splits train/val assumed"))
            .ok()
    });
    let cfg = config.unwrap_or_default();
    match command {
        RunCommand::Adapt => cfg.target_split,
        RunCommand::Train => cfg.val_split,
    }
}

/// The source and target summaries, and the scrubber that replaces their specs and
/// every other absolute path of the run.
pub(super) fn summarise_datasets(
    o: &PublishOptions,
    inputs: &Inputs,
    meta: &CheckpointMeta,
) -> (DatasetPair, Scrubber) {
    let record = inputs.run_record();
    // The datasets: as recorded in the run (else in the checkpoint's metadata).
    let recorded_source = record
        .map(|r| r.source.clone())
        .or_else(|| meta.extra.get("source").cloned());
    let recorded_target = record
        .and_then(|r| r.target.clone())
        .or_else(|| meta.extra.get("target").cloned());
    // A model published before keeps its summaries' structured form in run.json.
    let prior = record
        .and_then(|r| r.published.as_ref())
        .map(|p| p.datasets.clone())
        .unwrap_or_default();
    let split = target_split(inputs, run_command(inputs, meta));
    let mut scrub = Scrubber::for_base(&inputs.base);
    let source = recorded_source.and_then(|s| {
        let now = o.source.as_ref();
        summarise("source", &s, now, "train", prior.source, &mut scrub)
    });
    let target = recorded_target.and_then(|s| {
        let now = o.target.as_ref();
        summarise("target", &s, now, &split, prior.target, &mut scrub)
    });
    // Specs recorded in the checkpoint that differ from the record's (same datasets).
    for (key, summary) in [("source", &source), ("target", &target)] {
        if let (Some(v), Some(s)) = (meta.extra.get(key), summary)
            && !scrub.specs.iter().any(|(k, _)| k == v)
            && v.parse::<DatasetSpec>().is_ok()
        {
            scrub.specs.push((v.clone(), s.to_string()));
        }
    }
    scrub.longest_first();
    (DatasetPair { source, target }, scrub)
}

/// The summary of one recorded dataset, and its scrubbing entries.
fn summarise(
    what: &str,
    recorded: &str,
    now: Option<&DatasetSpec>,
    split: &str,
    prior: Option<DatasetSummary>,
    scrub: &mut Scrubber,
) -> Option<DatasetSummary> {
    // A spec as recorded by the run, or the summary of a model published before
    // (kept as it is unless told where the dataset lies now).
    let (fallback, recorded_root) = match recorded.parse::<DatasetSpec>() {
        Ok(spec) => (DatasetSummary::from_spec(&spec), Some(spec.root)),
        Err(_) => {
            let known = recorded.parse::<DatasetSummary>().ok()?;
            if now.is_none() {
                // The structured form kept in run.json has the full list hash.
                return Some(prior.filter(|p| p.to_string() == recorded).unwrap_or(known));
            }
            let short = DatasetSummary {
                split: None,
                images: None,
                list: None,
                ..known
            };
            (short, None)
        }
    };
    let location = match (now, &recorded_root) {
        (Some(n), _) => {
            if n.kind != fallback.kind {
                tracing::warn!(
                    "--{what} is a {} dataset but the run recorded a {} one",
                    n.kind,
                    fallback.kind
                );
            }
            Some(n.clone())
        }
        (None, Some(root)) => Some(DatasetSpec {
            kind: fallback.kind,
            root: root.clone(),
        }),
        (None, None) => None,
    };
    let opened = location
        .as_ref()
        .map(|l| DatasetSummary::open(l, split))
        .transpose();
    let summary = match opened {
        Ok(Some(mut s)) => {
            s.name = fallback.name.clone();
            s
        }
        Ok(None) => fallback.clone(),
        Err(e) => {
            tracing::warn!(
                "the {what} {} cannot be opened ({e}); the model records its kind and folder \
                 name only (give --{what} KIND:DIR where it lies now)",
                fallback
            );
            fallback.clone()
        }
    };
    scrub
        .specs
        .push((recorded.to_string(), summary.to_string()));
    for root in [recorded_root.as_ref(), now.map(|n| &n.root)]
        .into_iter()
        .flatten()
    {
        scrub.roots.push((root.clone(), fallback.name.clone()));
        if let Ok(c) = root.canonicalize() {
            scrub.roots.push((c, fallback.name.clone()));
        }
    }
    Some(summary)
}
