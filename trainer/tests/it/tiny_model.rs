//! The committed tiny model of the tests (`test-support/models/tiny/model.onnx`) is
//! what this build's `lse-train init` and `export` write from the command of
//! `scripts/make-test-model.sh`: the script runs again with this build's `lse-train`
//! and the two files must be the same.

use std::path::{Path, PathBuf};
use std::process::Command;

use lse_test_support::{check_ok, tiny_model, workspace_root};
use onnx_protobuf::{Message, ModelProto};

const REGENERATE: &str =
    "run scripts/make-test-model.sh and commit test-support/models/tiny/model.onnx";

/// Runs scripts/make-test-model.sh with this build's `lse-train` into `dir`.
fn regenerate(dir: &Path) -> PathBuf {
    check_ok(
        Command::new("bash")
            .arg(workspace_root().join("scripts/make-test-model.sh"))
            .arg(dir)
            .env("LSE_TRAIN", env!("CARGO_BIN_EXE_lse-train")),
    );
    dir.join("model.onnx")
}

/// A model without its weights' bytes, and the weights by name as float32 values.
fn split_weights(bytes: &[u8]) -> (ModelProto, Vec<(String, Vec<f32>)>) {
    let mut m = ModelProto::parse_from_bytes(bytes).expect("an ONNX model");
    let weights = m
        .graph
        .mut_or_insert_default()
        .initializer
        .iter_mut()
        .map(|t| {
            let raw = std::mem::take(&mut t.raw_data);
            let values = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (t.name.clone(), values)
        })
        .collect();
    (m, weights)
}

/// The largest difference between two weights, relative to the largest magnitude of
/// the committed one.
fn relative_difference(fresh: &[f32], committed: &[f32]) -> f32 {
    let scale = committed
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = fresh
        .iter()
        .zip(committed)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

#[test]
fn committed_tiny_model_is_what_the_exporter_makes() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = std::fs::read(regenerate(dir.path())).unwrap();
    let committed = std::fs::read(tiny_model())
        .unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", tiny_model().display()));
    if fresh == committed {
        return;
    }
    // libtorch draws its normal numbers with other rounding on a CPU without AVX2 (up
    // to 5e-7 of a weight's scale): the graph and the metadata must still be the same
    // and every weight equal up to such rounding (another seed or width differs by
    // the whole scale).
    let (fresh_model, fresh_weights) = split_weights(&fresh);
    let (committed_model, committed_weights) = split_weights(&committed);
    assert!(
        fresh_model == committed_model,
        "the committed tiny model's graph or metadata is not what this exporter writes: {REGENERATE}"
    );
    for ((name, a), (_, b)) in fresh_weights.iter().zip(&committed_weights) {
        let d = relative_difference(a, b);
        assert!(
            a.len() == b.len() && d < 1e-5,
            "{name} of the committed tiny model differs from this build's by {d:e} of its scale: {REGENERATE}"
        );
    }
}
