//! One complete adaptation round, as `lse-train adapt` wires it, against an
//! independent PyTorch computation (`tests/py/round_reference.py`): two rounds on a
//! tiny network and a few tiny target images, with every intermediate result dumped
//! (`--dump-rounds`), then recomputed in Python from the starting weights and the
//! images alone: ranking, thresholds, confident set, the windows' pseudo-labels and
//! masks, the iteration count, the parameters after the round's first optimiser step,
//! and round 2's ranking from the weights saved at the end of round 1.
//!
//! Needs `lse` built beside `lse-train` (`cargo build -p lse-runtime --bins`) and the
//! project's `.venv` (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use lse_test_support::{beside, init_tiny, ok, python, synth};

fn lse_train() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lse-train"))
}

fn target_images(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flat_map(|city| std::fs::read_dir(city.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path().display().to_string())
        .filter(|p| p.ends_with("_leftImg8bit.png"))
        .collect();
    v.sort();
    v
}

#[test]
fn one_round_matches_an_independent_computation() {
    let lse = beside(&lse_train(), "lse");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let p = |rel: &str| root.join(rel).display().to_string();
    synth(&lse, &p("data"), 24, 0, "64x32", 5);
    let init = p("init.safetensors");
    init_tiny(&lse_train(), &init, 3);
    // A briefly trained source model predicts several classes in most images, so
    // several classes keep an image at p = 1 (floor(N_c / 19) >= 1).
    let src = p("src");
    ok(
        &lse_train(),
        &[
            "train",
            "--init",
            &init,
            "--source",
            &format!("gta5:{}", p("data/source")),
            "--out",
            &src,
            "--iterations",
            "40",
            "--lr",
            "1e-3",
            "--batch-size",
            "4",
            "--set",
            "source_size=64x32",
            "--set",
            "target_size=64x32",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--quiet",
        ],
    );
    let init = p("src/model.safetensors");
    let (batch, patches, epochs) = (2, 2, 1);
    let (b, k, e) = (batch.to_string(), patches.to_string(), epochs.to_string());
    let run_dir = p("adapt");
    ok(
        &lse_train(),
        &[
            "adapt",
            "--init",
            &init,
            "--source",
            &format!("gta5:{}", p("data/source")),
            "--target",
            &format!("cityscapes:{}", p("data/target")),
            "--out",
            &run_dir,
            "--set",
            "source_size=64x32",
            "--set",
            "target_size=64x32",
            "--set",
            "evaluate=false",
            "--set",
            "diagnostics=false",
            "--set",
            "report_samples=0",
            "--p-schedule",
            "1.0,1.0",
            "--patches",
            &k,
            "--epochs-per-round",
            &e,
            "--batch-size",
            &b,
            "--lr",
            "1e-3",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--quiet",
            "--dump-rounds",
            &p("dump"),
        ],
    );
    let cfg = serde_json::json!({
        "dump": p("dump"),
        "init": init,
        "round1": p("adapt/checkpoints/round-01.safetensors"),
        "target_images": target_images(&root.join("data/target/leftImg8bit/train")),
        "classes": 19, "width": 0.125,
        "p": [1.0, 1.0], "patches": patches, "epochs_per_round": epochs, "batch_size": batch,
        "mean_bgr": [104.00698793, 116.66876762, 122.67891434],
        "adam_betas": [0.9, 0.99], "adam_eps": 1e-8,
        "focal": true, "focal_beta": 0.1, "focal_gamma": 3.0,
    });
    let cfg_path = root.join("round.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let py = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/round_reference.py");
    let out = Command::new(py)
        .arg(script)
        .arg(&cfg_path)
        .output()
        .expect("run the venv python (scripts/setup.sh)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "the round differs from the independent computation:\n{report}"
    );
    assert!(report.contains("0 failed"), "{report}");
}
