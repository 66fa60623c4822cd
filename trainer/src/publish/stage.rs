//! Writing a model folder atomically: every file is written into a staging folder
//! inside the output folder, checked (the export's check, and a scan for absolute
//! paths in every file written), and only then renamed into place, one rename each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lse_runtime::provenance::find_absolute_paths;

use super::PublishOptions;
use crate::checkpoint::{self, CheckpointMeta};
use crate::export::{ExportOptions, ExportReport};

/// Removes the staging folder unless the publication went through.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes checkpoint, model and text files into a staging folder inside the output
/// folder, checks them, then renames each into place. Returns the export's report.
pub(super) fn stage_and_move(
    o: &PublishOptions,
    meta: &CheckpointMeta,
    tensors: Vec<(String, tch::Tensor)>,
    files: &BTreeMap<&'static str, Vec<u8>>,
) -> anyhow::Result<ExportReport> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let staging = Staging(o.out.join(format!(".publish-{}.tmp", std::process::id())));
    let _ = std::fs::remove_dir_all(&staging.0);
    std::fs::create_dir_all(&staging.0)
        .with_context(|| format!("creating {}", staging.0.display()))?;
    let stage = |f: &str| staging.0.join(f);
    checkpoint::save(&stage("checkpoint.safetensors"), meta, &tensors)?;
    drop(tensors);
    let export = crate::export::export_checked(
        &stage("checkpoint.safetensors"),
        &stage("model.onnx"),
        &ExportOptions {
            train_size: None,
            check: true,
            tolerance: crate::onnx::Tolerance {
                atol: o.tolerance.into(),
                ..Default::default()
            },
            ort_lib: o.ort_lib.clone(),
        },
    )
    .context("exporting the model")?;
    for (f, bytes) in files {
        crate::run::write_atomic(&stage(f), bytes)?;
    }
    refuse_absolute_paths(files, &stage("checkpoint.safetensors"), &o.out)?;
    for f in ["checkpoint.safetensors", "model.onnx"]
        .into_iter()
        .chain(files.keys().copied())
    {
        std::fs::rename(stage(f), o.out.join(f))
            .with_context(|| format!("moving {f} into {}", o.out.display()))?;
    }
    if !files.contains_key("eval.json") {
        // A stale evaluation of another model must not stay beside this one.
        let _ = std::fs::remove_file(o.out.join("eval.json"));
    }
    Ok(export)
}

/// Absolute paths left in a text, with the file they are in.
fn leftovers(file: &str, text: &str, found: &mut Vec<String>) {
    for p in find_absolute_paths(text) {
        found.push(format!("{file}: {p}"));
    }
}

/// Fails if an absolute path remains in the text files, the staged checkpoint's
/// metadata or the model's metadata (written from the same checkpoint metadata).
fn refuse_absolute_paths(
    files: &BTreeMap<&'static str, Vec<u8>>,
    staged_checkpoint: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for (f, bytes) in files {
        leftovers(f, &String::from_utf8_lossy(bytes), &mut found);
    }
    let written = checkpoint::read_meta(staged_checkpoint)?;
    for (k, v) in &written.extra {
        leftovers(&format!("checkpoint.safetensors lse.{k}"), v, &mut found);
    }
    for (k, v) in crate::export::model_meta(&written, None)?.to_props() {
        leftovers(&format!("model.onnx {k}"), &v, &mut found);
    }
    if !found.is_empty() {
        anyhow::bail!(
            "absolute paths would remain in the published model ({}); nothing was written to {}",
            found.join("; "),
            out.display()
        );
    }
    Ok(())
}
