//! The GPU check on this (CPU) machine: `scripts/gpu-bundle.sh` packs the test build's
//! binaries into a bundle that holds exactly its listed contents, and that bundle's
//! `scripts/gpu-run.sh` with `LSE_GPU_RUN_DRY=1` runs every step that needs no GPU
//! (at small sizes) and reports every step that needs one as skipped.
//!
//! Needs `lse` beside `lse-train` and the examples built (`cargo test` builds them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use lse_test_support::{beside, check_ok, json, python, workspace_root};

fn lse_train() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lse-train"))
}

/// The files a bundle holds besides its MANIFEST.
const CONTENTS: &[&str] = &[
    "BUILD",
    "bin/bench_generate",
    "bin/bench_train",
    "bin/lse",
    "bin/lse-train",
    "scripts/bench_generate.py",
    "scripts/bench_infer_torch.py",
    "scripts/bench_train.py",
    "scripts/gpu-run.sh",
    "scripts/gpu_results.py",
    "trainer/tests/py/fcn8s_reference.py",
];

/// The steps of a run, in order, and whether each needs a GPU.
const STEPS: &[(&str, bool)] = &[
    ("probe", false),
    ("prepare", false),
    ("smoke", true),
    ("eval", true),
    ("train-bench", true),
    ("torch-infer", true),
    ("generate-bench", true),
    ("export", false),
    ("lse-bench-cpu", false),
    ("ort-gpu", true),
];

/// Packs the debug build into `dir` and checks the MANIFEST against the files.
fn pack(dir: &Path) {
    let bins = lse_train().parent().unwrap().to_path_buf();
    beside(&lse_train(), "lse");
    for ex in ["bench_train", "bench_generate"] {
        assert!(
            bins.join("examples").join(ex).is_file(),
            "{ex} missing: build it with `cargo build -p lse-trainer --examples`"
        );
    }
    let out = check_ok(
        Command::new("bash")
            .arg(workspace_root().join("scripts/gpu-bundle.sh"))
            .args(["--no-build", "--from"])
            .arg(&bins)
            .arg("--out")
            .arg(dir),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("carry: [\"{}\"]", dir.display())),
        "{stdout}"
    );
    let manifest = std::fs::read_to_string(dir.join("MANIFEST")).unwrap();
    let mut listed = BTreeSet::new();
    for line in manifest.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "MANIFEST line {line:?}: path bytes sha256");
        let bytes = std::fs::metadata(dir.join(f[0])).unwrap().len();
        assert_eq!(f[1].parse::<u64>().unwrap(), bytes, "{}", f[0]);
        assert_eq!(f[2].len(), 64, "{line}");
        listed.insert(f[0].to_string());
    }
    let expected: BTreeSet<String> = CONTENTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, expected);
    let on_disk: BTreeSet<String> = walk(dir, dir)
        .into_iter()
        .filter(|p| p != "MANIFEST")
        .collect();
    assert_eq!(on_disk, expected, "files in the bundle");
    // The scripts in the bundle are the repository's.
    for f in CONTENTS
        .iter()
        .filter(|f| f.ends_with(".py") || f.ends_with(".sh"))
    {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(workspace_root().join(f)).unwrap(),
            "{f}"
        );
    }
}

/// Every file under `dir`, relative to `base`.
fn walk(dir: &Path, base: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p, base));
        } else {
            v.push(p.strip_prefix(base).unwrap().display().to_string());
        }
    }
    v
}

#[test]
fn bundle_contents_and_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("gpu");
    pack(&bundle);

    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let run = Command::new("bash")
        .arg(bundle.join("scripts/gpu-run.sh"))
        .env("OUT", &out_dir)
        .env("LSE_GPU_RUN_DRY", "1")
        .env("LSE_GPU_PYTHON", python())
        .env("LSE_GPU_RUN_BENCH_WIDTH", "0.125")
        .env("LSE_GPU_RUN_BENCH_SIZE", "128x64")
        .env("LSE_GPU_RUN_TRAIN_SIZE", "64x32")
        .env("LSE_GPU_RUN_THREADS", "2")
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(out_dir.join("gpu-run.log")).unwrap_or_default();
    assert!(
        run.status.success(),
        "dry run failed:\n{}\n--- gpu-run.log\n{log}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Three files come back, well within the eight a device call returns.
    let files: BTreeSet<String> = walk(&out_dir, &out_dir).into_iter().collect();
    let want: BTreeSet<String> = ["gpu-results.json", "gpu-results.md", "gpu-run.log"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(files, want);

    let doc = json(&out_dir.join("gpu-results.json"));
    assert_eq!(doc["dry_run"], true);
    let steps = doc["steps"].as_array().unwrap();
    let names: Vec<(&str, bool)> = steps
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap(),
                s["needs_gpu"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, STEPS);
    for s in steps {
        let (name, status) = (s["step"].as_str().unwrap(), s["status"].as_str().unwrap());
        if s["needs_gpu"].as_bool().unwrap() {
            assert_eq!(status, "skipped", "{name}");
            assert!(s["note"].as_str().unwrap().contains("needs"), "{name}: {s}");
        } else {
            assert_eq!(status, "ok", "{name}: {s}\n{log}");
        }
    }
    let results = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .map(|s| s["results"].clone())
            .unwrap()
    };
    let probe = results("probe");
    assert_eq!(probe["ldd_not_found"], 0.0, "{log}");
    assert_eq!(probe["dry"], 1.0);
    assert!(probe["torch"].as_str().unwrap().starts_with("2.11.0"));
    // The CPU row: its milliseconds per image and images per second agree.
    let bench = results("lse-bench-cpu");
    let ms = bench["cpu_fp32_b1_ms_per_image"].as_f64().unwrap();
    let ips = bench["cpu_fp32_b1_images_per_s"].as_f64().unwrap();
    assert!(ms > 0.0 && (ms * ips / 1e3 - 1.0).abs() < 0.01, "{bench}");
    // lse synth: 20 source and 20 target-train images with labels, 4 val with labels.
    assert_eq!(results("prepare")["images"], 88.0);

    let md = std::fs::read_to_string(out_dir.join("gpu-results.md")).unwrap();
    assert!(md.contains("**dry run**"), "{md}");
    for (name, gpu) in STEPS {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{md}"));
        assert_eq!(row.contains("skipped"), *gpu, "{row}");
    }
}
