//! `lse label`: round trip with `lse eval`, resume, corrupt inputs, shards.
//!
//! The model is the committed tiny untrained FCN8s (`lse_test_support::tiny_model`,
//! training size 64x32), so these tests need no `lse-train`.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{fails, json, lse, ok, py_script, python, tiny_model, tree_bytes};

const VAL: usize = 6;

/// The tiny model and a synthetic target val set (128x64), made once per test program.
fn fixtures() -> &'static (PathBuf, PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        // Rebuilt on every run (`lse synth` may have changed), in target/tmp so that
        // nothing accumulates in the system's temporary folder.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("label_cli");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let syn = dir.join("syn");
        ok(lse()
            .args([
                "synth",
                "--train",
                "0",
                "--val",
                &VAL.to_string(),
                "--size",
                "128x64",
                "--seed",
                "5",
                "--out",
            ])
            .arg(&syn));
        (
            tiny_model(),
            syn.join("target/leftImg8bit/val"),
            syn.join("target/gtFine/val"),
        )
    })
}

fn label(input: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let (model, _, _) = fixtures();
    json(&ok(lse()
        .arg("label")
        .arg(model)
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(["--json", "--provider", "cpu", "--threads", "1"])
        .args(extra)))
}

/// The evaluable files of a results tree (no hidden temporary files).
fn results(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    tree_bytes(dir)
        .into_iter()
        .filter(|(p, _)| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

#[test]
fn label_then_eval_round_trip() {
    let (_, input, gt) = fixtures();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("pred");
    let s = label(input, &out, &["--batch", "4", "--color", "--overlay"]);
    assert_eq!(
        (s["found"].as_u64(), s["labelled"].as_u64()),
        (Some(VAL as u64), Some(VAL as u64))
    );
    assert_eq!(s["failed"].as_array().unwrap().len(), 0);
    let files = results(&out);
    assert_eq!(files.len(), VAL);
    // Mirrored relative paths, the input's file names, label ids at the image's size.
    let train_to_label = lse_runtime::labels::train_to_label_lut();
    for rel in files.keys() {
        assert!(input.join(rel).is_file(), "{rel:?} mirrors an input");
        let g = image::open(out.join(rel)).unwrap();
        assert_eq!(g.color(), image::ColorType::L8);
        assert_eq!((g.width(), g.height()), (128, 64));
        let valid: Vec<u8> = (0..19).map(|t| train_to_label[t]).collect();
        assert!(g.to_luma8().iter().all(|v| valid.contains(v)));
    }
    // Visualisations in their own trees, RGB.
    for tree in ["pred_color", "pred_overlay"] {
        let vis = results(&d.path().join(tree));
        assert_eq!(
            vis.keys().collect::<Vec<_>>(),
            files.keys().collect::<Vec<_>>()
        );
        let first = d.path().join(tree).join(vis.keys().next().unwrap());
        assert_eq!(image::open(first).unwrap().color(), image::ColorType::Rgb8);
    }
    // --ids train writes the same prediction as train ids.
    let out_t = d.path().join("pred_train");
    label(input, &out_t, &["--ids", "train"]);
    for (rel, bytes) in &files {
        let lab = image::load_from_memory(bytes).unwrap().to_luma8();
        let tr = image::open(out_t.join(rel)).unwrap().to_luma8();
        assert!(
            lab.iter()
                .zip(tr.iter())
                .all(|(l, t)| *l == train_to_label[*t as usize])
        );
    }
    // lse eval on the results agrees with the independent numpy evaluation.
    let ev = json(&ok(lse()
        .args(["eval", "--json", "--pred"])
        .arg(&out)
        .arg("--gt")
        .arg(gt)));
    assert_eq!(ev["images"], VAL);
    assert_eq!(ev["pixels"], (VAL * 128 * 64) as u64);
    let reference = json(&ok(python()
        .arg(py_script("eval_ref.py"))
        .arg(gt)
        .arg(&out)));
    let (a, b) = (
        ev["miou"].as_f64().unwrap(),
        reference["19"]["miou"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-9, "lse eval {a} vs numpy {b}");
    // Ground truth evaluated against itself is perfect.
    let ev = json(&ok(lse()
        .args(["eval", "--json", "--pred"])
        .arg(gt)
        .arg("--gt")
        .arg(gt)));
    assert_eq!(ev["miou"].as_f64(), Some(1.0));
}

#[test]
fn resume_after_interruption_gives_the_same_result() {
    let (_, input, _) = fixtures();
    let d = tempfile::tempdir().unwrap();
    let full = d.path().join("full");
    label(input, &full, &[]);
    let expected = results(&full);

    // Simulate an interrupted run: some outputs missing, one truncated by a
    // non-atomic writer, a temporary file left behind.
    let out = d.path().join("resumed");
    label(input, &out, &["--batch", "2"]);
    let names: Vec<PathBuf> = expected.keys().cloned().collect();
    for rel in &names[..3] {
        std::fs::remove_file(out.join(rel)).unwrap();
    }
    let cut = out.join(&names[3]);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(cut.with_file_name(".leftover.png.123.tmp"), b"partial").unwrap();
    let s = label(input, &out, &["--batch", "2"]);
    assert_eq!(s["labelled"], 4, "{s}");
    assert_eq!(s["skipped"], 2, "{s}");
    assert!(
        results(&out) == expected,
        "the resumed tree equals an uninterrupted run"
    );
    // Nothing left to do; --overwrite relabels everything to the same bytes.
    assert_eq!(label(input, &out, &[])["skipped"], VAL);
    assert_eq!(label(input, &out, &["--overwrite"])["labelled"], VAL);
    assert!(results(&out) == expected);
}

#[test]
fn corrupt_image_is_reported_and_the_rest_labelled() {
    let (model, input, _) = fixtures();
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("in");
    for (rel, bytes) in tree_bytes(input) {
        std::fs::create_dir_all(tree.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(tree.join(&rel), bytes).unwrap();
    }
    let bad = tree.join("zz/zz_000000_000019_leftImg8bit.png");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not an image").unwrap();
    let out = d.path().join("pred");
    let err = fails(
        lse()
            .arg("label")
            .arg(model)
            .arg(&tree)
            .arg("--out")
            .arg(&out)
            .args(["--provider", "cpu", "--threads", "1"]),
    );
    assert!(err.contains("zz_000000_000019_leftImg8bit.png"), "{err}");
    assert!(err.contains("1 of 7 images failed"), "{err}");
    assert_eq!(results(&out).len(), VAL, "the other images are labelled");
}

#[test]
fn shards_add_up_to_the_whole() {
    let (_, input, _) = fixtures();
    let d = tempfile::tempdir().unwrap();
    let full = results(&{
        let p = d.path().join("full");
        label(input, &p, &[]);
        p
    });
    let mut union = std::collections::BTreeMap::new();
    let mut total = 0;
    for k in 1..=4 {
        let p = d.path().join(format!("shard{k}"));
        let s = label(input, &p, &["--shard", &format!("{k}/4")]);
        total += s["selected"].as_u64().unwrap();
        for (rel, bytes) in results(&p) {
            assert!(
                union.insert(rel.clone(), bytes).is_none(),
                "{rel:?} in two shards"
            );
        }
    }
    assert_eq!(total, VAL as u64);
    assert!(union == full, "the shards together are the whole tree");
}

#[test]
fn usage_errors_are_clear() {
    let (model, input, _) = fixtures();
    let d = tempfile::tempdir().unwrap();
    let err = fails(
        lse()
            .arg("label")
            .arg(d.path().join("nope.onnx"))
            .arg(input)
            .arg("--out")
            .arg(d.path().join("o")),
    );
    assert!(err.contains("nope.onnx"), "{err}");
    let err = fails(
        lse()
            .arg("label")
            .arg(model)
            .arg(d.path().join("missing"))
            .arg("--out")
            .arg(d.path().join("o")),
    );
    assert!(err.contains("missing"), "{err}");
    let err = fails(
        lse()
            .arg("label")
            .arg(model)
            .arg(input)
            .arg("--out")
            .arg(d.path().join("o"))
            .args(["--shard", "5/4"]),
    );
    assert!(err.contains("5/4"), "{err}");
    std::fs::create_dir_all(d.path().join("empty")).unwrap();
    let err = fails(
        lse()
            .arg("label")
            .arg(model)
            .arg(d.path().join("empty"))
            .arg("--out")
            .arg(d.path().join("o")),
    );
    assert!(err.contains("no images"), "{err}");
}
