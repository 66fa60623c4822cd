//! End to end through the real binaries on a tiny synthetic set: `lse synth`,
//! `lse-train init`, `train` (source-only), `adapt` (two short LSE rounds), an
//! interrupted adaptation resumed to the same final weights as an uninterrupted one,
//! `export`, `lse label`, `lse eval`, `lse-train eval`; and one clear message for each
//! kind of bad input.
//!
//! Needs `lse` built beside `lse-train` (`cargo build -p lse-runtime --bins`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lse_test_support::{beside, fails_with, init_tiny, json, ok, run, synth};
use lse_trainer::checkpoint;

fn lse_train() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lse-train"))
}

fn lse() -> PathBuf {
    beside(&lse_train(), "lse")
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn p(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
}

/// Synthetic domains (20 source and target-train images so that
/// floor(N_c * p / C) >= 1 with p = 1, 4 val images) and an initial checkpoint.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let d = root.join("data").display().to_string();
        synth(&lse(), &d, 20, 4, "96x48", 1);
        let init = root.join("init.safetensors").display().to_string();
        init_tiny(&lse_train(), &init, 0);
        Fixture { _dir: dir, root }
    })
}

/// Settings shared by every run of the test: tiny sizes, a from-scratch lr.
const COMMON: &[&str] = &[
    "--set",
    "source_size=96x48",
    "--set",
    "target_size=96x48",
    "--set",
    "log_every=1",
    "--lr",
    "1e-4",
    "--batch-size",
    "2",
    "--device",
    "cpu",
    "--threads",
    "2",
    "--quiet",
];

fn args<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(COMMON).chain(tail).copied().collect()
}

fn finite(v: &serde_json::Value) -> bool {
    v.as_f64().is_some_and(f64::is_finite)
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let (_, t) = checkpoint::read_safetensors(path).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = t
        .iter()
        .map(|(n, t)| (n.clone(), checkpoint::tensor_bytes(t)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn adapt_args<'a>(f: &'a Fixture, init: &'a str, out: &'a str) -> Vec<String> {
    let mut a: Vec<String> = args(
        &["adapt", "--init", init],
        &[
            "--p-schedule",
            "1.0,1.0",
            "--patches",
            "2",
            "--set",
            "max_round_iterations=3",
            "--set",
            "checkpoint_every=2",
            "--out",
            out,
        ],
    )
    .into_iter()
    .map(String::from)
    .collect();
    a.extend([
        "--source".into(),
        format!("gta5:{}", f.p("data/source")),
        "--target".into(),
        format!("cityscapes:{}", f.p("data/target")),
    ]);
    a
}

#[test]
fn train_adapt_resume_export_label_eval() {
    let f = fixture();
    let source = format!("gta5:{}", f.p("data/source"));
    let target = format!("cityscapes:{}", f.p("data/target"));
    let init = f.p("init.safetensors");

    // Source-only training.
    let src_run = f.root.join("src-run");
    let src_out = src_run.display().to_string();
    ok(
        &lse_train(),
        &args(
            &[
                "train", "--init", &init, "--source", &source, "--target", &target,
            ],
            &[
                "--iterations",
                "6",
                "--set",
                "checkpoint_every=4",
                "--out",
                &src_out,
            ],
        ),
    );
    for f in [
        "config.toml",
        "run.json",
        "metrics.jsonl",
        "model.safetensors",
        "curves.png",
        "checkpoints/last.safetensors",
    ] {
        assert!(src_run.join(f).is_file(), "{f} missing");
    }
    let rec = json(&src_run.join("run.json"));
    assert_eq!(rec["status"], "finished");
    assert_eq!(rec["method"], "source-only");
    let metrics = std::fs::read_to_string(src_run.join("metrics.jsonl")).unwrap();
    let losses: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["phase"] == "source")
        .collect();
    assert_eq!(losses.len(), 6, "one line per iteration");
    assert!(losses.iter().all(|v| finite(&v["source_loss"])));
    let src_miou = rec["evaluation"]["miou"].as_f64().expect("val mIoU");
    assert!((0.0..=1.0).contains(&src_miou));
    let meta = checkpoint::read_meta(&src_run.join("model.safetensors")).unwrap();
    assert_eq!(meta.extra["method"], "source-only");
    assert_eq!(meta.extra["train_size"], "[96,48]");
    assert!(meta.extra.contains_key("settings") && meta.extra.contains_key("evaluation"));

    // Adaptation, uninterrupted.
    let src_model = src_run.join("model.safetensors").display().to_string();
    let a_dir = f.root.join("adapt-a");
    let a_out = a_dir.display().to_string();
    let a_args = adapt_args(f, &src_model, &a_out);
    ok(
        &lse_train(),
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let rec = json(&a_dir.join("run.json"));
    assert_eq!(rec["method"], "lse");
    let rounds = rec["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        let s = r["confident"].as_u64().unwrap();
        assert!((1..=20).contains(&s));
        assert_eq!(r["examples"].as_u64().unwrap(), s * 2, "|S| * K examples");
        // epochs_per_round (2) passes over |S| * K examples at batch 2, capped at 3.
        assert_eq!(
            r["iterations"].as_u64().unwrap(),
            3.min((s * 2 * 2).div_ceil(2))
        );
        assert_eq!(r["iterations_done"], r["iterations"]);
        assert_eq!(r["thresholds"].as_array().unwrap().len(), 19);
        for t in r["thresholds"].as_array().unwrap() {
            assert!(
                t.is_null() || t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)),
                "{t}"
            );
        }
        assert!(
            r["ignored_share"]
                .as_f64()
                .is_some_and(|v| (0.0..=1.0).contains(&v))
        );
        assert!(finite(&r["source_loss"]) && finite(&r["target_loss"]));
        assert!(r["miou"].as_f64().is_some_and(|m| (0.0..=1.0).contains(&m)));
        // The synthetic target-train split has labels: the diagnostics are measured.
        let d = &r["diagnostics"];
        for k in [
            "kept_share",
            "kept_precision",
            "confident_accuracy",
            "others_accuracy",
        ] {
            assert!(
                d[k].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)),
                "diagnostic {k}: {}",
                d[k]
            );
        }
        for k in ["target_full", "target_windows", "source"] {
            assert!(
                d["premise"][k]
                    .as_f64()
                    .is_some_and(|v| (0.0..=1.0).contains(&v)),
                "premise {k}"
            );
        }
        assert_eq!(d["per_class"].as_array().unwrap().len(), 19);
        // What was trained on: every pixel of every example is counted once.
        let w = &d["window"];
        let size = rec["train_size"].as_array().unwrap();
        let pixels_per_example = size[0].as_u64().unwrap() * size[1].as_u64().unwrap();
        let examples_pixels = w["examples_pixels"].as_u64().unwrap();
        assert_eq!(examples_pixels, s * 2 * pixels_per_example);
        let ignored = w["ignored_share"].as_f64().unwrap();
        let trained = w["trained_pixels"].as_u64().unwrap();
        assert_eq!(
            trained,
            examples_pixels - (ignored * examples_pixels as f64).round() as u64
        );
        assert!(
            w["precision"]
                .as_f64()
                .is_some_and(|v| (0.0..=1.0).contains(&v))
        );
        assert_eq!(w["per_class"].as_array().unwrap().len(), 19);
        let cov = &w["coverage"];
        let cells = cov["width"].as_u64().unwrap() * cov["height"].as_u64().unwrap();
        assert_eq!(cov["density"].as_array().unwrap().len() as u64, cells);
        // The generate phase's time no longer has the diagnostics of other phases
        // taken out of it.
        assert!(r["seconds"]["generate"].as_f64().is_some_and(|t| t >= 0.0));
        assert!(
            !r["samples"].as_array().unwrap().is_empty(),
            "pictured samples"
        );
    }
    assert!(rec["initial_evaluation"]["miou"].as_f64().is_some());
    let report = std::fs::read_to_string(a_dir.join("report.html")).unwrap();
    for part in [
        "<svg",
        "id=\"rounds\"",
        "id=\"per-class\"",
        "id=\"windows\"",
        "data:image/png;base64,",
    ] {
        assert!(report.contains(part), "report lacks {part}");
    }
    for p in [
        "checkpoints/round-01.safetensors",
        "checkpoints/round-02.safetensors",
        "model.safetensors",
        "curves.png",
        "coverage.png",
    ] {
        assert!(a_dir.join(p).is_file(), "{p} missing");
    }
    assert!(
        !a_dir.join("cache/round-01.safetensors").exists(),
        "caches are removed"
    );
    let meta = checkpoint::read_meta(&a_dir.join("model.safetensors")).unwrap();
    assert_eq!(meta.extra["method"], "lse");
    assert_eq!(meta.extra["target"], target);

    // Adaptation killed in round 2 (after a checkpoint at iteration 4), then resumed.
    let b_dir = f.root.join("adapt-b");
    let b_out = b_dir.display().to_string();
    let mut b_args = adapt_args(f, &src_model, &b_out);
    b_args.extend(["--stop-after-iterations".into(), "5".into()]);
    let out = run(
        &lse_train(),
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        b_dir.join("cache/round-02.safetensors").is_file(),
        "killed mid-round 2"
    );
    assert!(!b_dir.join("model.safetensors").exists());
    ok(
        &lse_train(),
        &[
            "adapt",
            "--resume",
            &b_out,
            "--device",
            "cpu",
            "--threads",
            "2",
            "--quiet",
        ],
    );
    let (ta, tb) = (
        tensors(&a_dir.join("model.safetensors")),
        tensors(&b_dir.join("model.safetensors")),
    );
    assert_eq!(ta.len(), tb.len());
    for ((na, a), (nb, b)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(
            a == b,
            "tensor {na} differs between the resumed and the uninterrupted run"
        );
    }
    let rb = json(&b_dir.join("run.json"));
    assert_eq!(rb["sessions"].as_array().unwrap().len(), 2);
    for (ra, rb) in rec["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .zip(rb["rounds"].as_array().unwrap())
    {
        for k in [
            "confident",
            "examples",
            "thresholds",
            "ignored_share",
            "source_loss",
            "target_loss",
            "miou",
        ] {
            assert_eq!(ra[k], rb[k], "round stat {k} differs after resume");
        }
    }
    // The diagnostics and pictures never influence training: without them the
    // weights are bit-identical.
    let c_dir = f.root.join("adapt-c");
    let c_out = c_dir.display().to_string();
    let mut c_args = adapt_args(f, &src_model, &c_out);
    c_args.extend(["--set", "diagnostics=false", "--set", "report_samples=0"].map(String::from));
    ok(
        &lse_train(),
        &c_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        tensors(&c_dir.join("model.safetensors")) == ta,
        "weights differ with the diagnostics off"
    );
    let rc = json(&c_dir.join("run.json"));
    assert!(rc["rounds"][0]["diagnostics"].is_null());

    // A finished run is not resumed again.
    fails_with(
        &lse_train(),
        &["adapt", "--resume", &b_out, "--device", "cpu"],
        "already finished",
    );

    // lse-train eval agrees with the run's own evaluation.
    let a_model = a_dir.join("model.safetensors").display().to_string();
    let ev: serde_json::Value = serde_json::from_str(&ok(
        &lse_train(),
        &[
            "eval", &a_model, "--target", &target, "--json", "--device", "cpu",
        ],
    ))
    .unwrap();
    assert_eq!(ev["miou"], rec["evaluation"]["miou"]);

    // Export, label the val set, evaluate the labels with `lse eval`.
    let onnx = f.root.join("model.onnx").display().to_string();
    ok(&lse_train(), &["export", &a_model, "--out", &onnx]);
    let labels = f.root.join("labels").display().to_string();
    let val_images = f.p("data/target/leftImg8bit/val");
    ok(
        &lse(),
        &[
            "label",
            &onnx,
            &val_images,
            "--out",
            &labels,
            "--provider",
            "cpu",
        ],
    );
    let gt = f.p("data/target/gtFine/val");
    let lev: serde_json::Value = serde_json::from_str(&ok(
        &lse(),
        &["eval", "--pred", &labels, "--gt", &gt, "--json"],
    ))
    .unwrap();
    let m = lev["miou"].as_f64().expect("lse eval mIoU");
    assert!((0.0..=1.0).contains(&m));
    // One protocol (bilinear, aligned corners) for both: the same model gives the
    // same number, up to a near-tie pixel flipped by float rounding (ONNX Runtime vs
    // libtorch).
    let own = ev["miou"].as_f64().unwrap();
    assert!(
        (m - own).abs() < 5e-4,
        "lse label + lse eval {m} vs lse-train eval {own}"
    );
}

#[test]
fn bad_inputs_give_one_clear_message_each() {
    let f = fixture();
    let source = format!("gta5:{}", f.p("data/source"));
    let target = format!("cityscapes:{}", f.p("data/target"));
    let init = f.p("init.safetensors");
    let out = |n: &str| f.root.join(n).display().to_string();

    // Different class sets: a 12-class network against the 19 Cityscapes classes.
    let init12 = out("init12.safetensors");
    ok(
        &lse_train(),
        &[
            "init",
            "--width",
            "0.125",
            "--classes",
            "12",
            "--out",
            &init12,
        ],
    );
    let o = out("bad-classes");
    fails_with(
        &lse_train(),
        &args(
            &["train", "--init", &init12, "--source", &source, "--out", &o],
            &["--iterations", "1"],
        ),
        "class sets differ",
    );

    // An empty target.
    let empty = f.root.join("empty");
    std::fs::create_dir_all(empty.join("leftImg8bit/train")).unwrap();
    let empty_spec = format!("cityscapes:{}", empty.display());
    let o = out("bad-empty");
    fails_with(
        &lse_train(),
        &args(
            &[
                "adapt",
                "--init",
                &init,
                "--source",
                &source,
                "--target",
                &empty_spec,
                "--out",
                &o,
            ],
            &[],
        ),
        "has no images",
    );
    assert!(
        !Path::new(&o).exists(),
        "a failed run leaves no run directory"
    );

    // A checkpoint of another width than the configuration's.
    let o = out("bad-width");
    fails_with(
        &lse_train(),
        &args(
            &["train", "--init", &init, "--source", &source, "--out", &o],
            &["--set", "width=0.25", "--iterations", "1"],
        ),
        "width-0.125 network",
    );

    // A config file with an unknown key, and an out-of-range value.
    let bad = f.root.join("bad.toml");
    std::fs::write(&bad, "lr_weigths = 1e-4\n").unwrap();
    let o = out("bad-key");
    let bad_s = bad.display().to_string();
    fails_with(
        &lse_train(),
        &args(
            &[
                "train", "--init", &init, "--source", &source, "--config", &bad_s, "--out", &o,
            ],
            &[],
        ),
        "unknown field `lr_weigths`",
    );
    let o = out("bad-range");
    fails_with(
        &lse_train(),
        &args(
            &[
                "adapt", "--init", &init, "--source", &source, "--target", &target, "--out", &o,
            ],
            &["--window-scale", "1.5"],
        ),
        "window_scale",
    );
    // CUDA asked for where there is none (skipped on CUDA machines).
    if !tch::Cuda::is_available() {
        let o = out("bad-cuda");
        fails_with(
            &lse_train(),
            &[
                "train", "--init", &init, "--source", &source, "--out", &o, "--device", "cuda",
            ],
            "no CUDA device",
        );
    }
}
