//! `lse-train publish` on a tiny finished run (synthetic data, a few iterations): the
//! model folder holds every file, no absolute path anywhere (ONNX metadata and
//! checkpoint header included), datasets named by kind, folder, image count and list
//! hash, and `lse info` shows them so; republishing the folder in place changes
//! nothing; moved datasets fall back to kind and name, or are found with `--source`;
//! bad inputs give one clear message.
//!
//! Needs `lse` built beside `lse-train` (`cargo build -p lse-runtime --bins`).

use std::path::{Path, PathBuf};

use lse_runtime::datasets::DatasetSpec;
use lse_runtime::provenance::DatasetSummary;
use lse_test_support::machine_paths::{files_under, machine_paths_in};
use lse_test_support::{beside, fails_with, init_tiny, json, ok, run, synth};
use lse_trainer::checkpoint;

fn lse_train() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lse-train"))
}

fn lse() -> PathBuf {
    beside(&lse_train(), "lse")
}

fn assert_clean(dir: &Path) {
    let found: Vec<String> = files_under(dir)
        .iter()
        .flat_map(|f| machine_paths_in(f))
        .collect();
    assert!(
        found.is_empty(),
        "absolute paths in {}:\n{}",
        dir.display(),
        found.join("\n")
    );
}

/// `lse info`'s line for `role` (source or target).
fn info_line(model: &Path, role: &str) -> String {
    let text = ok(&lse(), &["info", &model.display().to_string()]);
    text.lines()
        .find(|l| l.starts_with(&format!("{role} ")))
        .unwrap_or_else(|| panic!("no {role} line in:\n{text}"))[role.len()..]
        .trim()
        .to_string()
}

#[test]
fn publish_writes_a_clean_self_contained_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let p = |rel: &str| root.join(rel).display().to_string();
    synth(&lse(), &p("data"), 6, 3, "64x32", 2);
    init_tiny(&lse_train(), &p("init.safetensors"), 0);
    let source = format!("gta5:{}", p("data/source"));
    let target = format!("cityscapes:{}", p("data/target"));
    ok(
        &lse_train(),
        &[
            "train",
            "--init",
            &p("init.safetensors"),
            "--source",
            &source,
            "--target",
            &target,
            "--out",
            &p("run"),
            "--iterations",
            "2",
            "--set",
            "source_size=64x32",
            "--set",
            "target_size=64x32",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--quiet",
        ],
    );
    // The run's own files carry its local paths; an `lse eval --json` beside them too.
    ok(
        &lse_train(),
        &[
            "export",
            &p("run/model.safetensors"),
            "--out",
            &p("run/model.onnx"),
        ],
    );
    ok(
        &lse(),
        &[
            "label",
            &p("run/model.onnx"),
            &p("data/target/leftImg8bit/val"),
            "--out",
            &p("run/pred"),
            "--provider",
            "cpu",
        ],
    );
    let eval = ok(
        &lse(),
        &[
            "eval",
            "--pred",
            &p("run/pred"),
            "--gt",
            &p("data/target/gtFine/val"),
            "--json",
        ],
    );
    std::fs::write(root.join("run/eval.json"), &eval).unwrap();
    let rec = json(&root.join("run/run.json"));
    assert!(rec["source"].as_str().unwrap().contains(&p("data")));

    // Publish.
    let models = root.join("models");
    let out = models.join("tiny");
    let report: serde_json::Value = serde_json::from_str(&ok(
        &lse_train(),
        &[
            "publish",
            &p("run"),
            "--out",
            &out.display().to_string(),
            "--json",
        ],
    ))
    .unwrap();
    for f in [
        "model.onnx",
        "checkpoint.safetensors",
        "run.json",
        "config.toml",
        "eval.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing; report {report}");
    }
    assert!(
        files_under(&out)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".tmp")),
        "staging files left behind"
    );
    assert_clean(&models);

    // The datasets by kind, name, image count and list hash, as opened here.
    let src_spec: DatasetSpec = source.parse().unwrap();
    let tgt_spec: DatasetSpec = target.parse().unwrap();
    let src = DatasetSummary::open(&src_spec, "train").unwrap();
    let tgt = DatasetSummary::open(&tgt_spec, "val").unwrap();
    assert_eq!(src.images, Some(6));
    assert_eq!(tgt.images, Some(3));
    assert_eq!(report["source"], src.to_string());
    assert_eq!(report["target"], tgt.to_string());
    let pubrec = json(&out.join("run.json"));
    assert_eq!(pubrec["source"], src.to_string());
    assert_eq!(pubrec["target"], tgt.to_string());
    // The --init checkpoint outside the run: its last two components.
    assert_eq!(
        pubrec["init"],
        format!(
            "{}/init.safetensors",
            root.file_name().unwrap().to_str().unwrap()
        )
    );
    assert_eq!(pubrec["published"]["name"], "tiny");
    assert_eq!(
        pubrec["published"]["datasets"]["source"],
        serde_json::to_value(&src).unwrap()
    );
    // Still a run record.
    serde_json::from_value::<lse_trainer::run::RunRecord>(pubrec.clone()).unwrap();
    let ev = json(&out.join("eval.json"));
    assert_eq!(ev["gt"], "target/gtFine/val");
    assert_eq!(ev["pred"], "pred");
    assert_eq!(ev["miou"], json(&root.join("run/eval.json"))["miou"]);
    let meta = checkpoint::read_meta(&out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(meta.extra["source"], src.to_string());
    assert_eq!(meta.extra["target"], tgt.to_string());
    // Same weights as the run's model.
    let sorted = |p: &Path| {
        let (_, mut t) = checkpoint::read_safetensors(p).unwrap();
        t.sort_by(|x, y| x.0.cmp(&y.0));
        t
    };
    let a = sorted(&root.join("run/model.safetensors"));
    let b = sorted(&out.join("checkpoint.safetensors"));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(
            checkpoint::tensor_bytes(ta),
            checkpoint::tensor_bytes(tb),
            "{na}"
        );
    }

    // `lse info` names the datasets by kind and folder.
    let model = out.join("model.onnx");
    let hash = |s: &DatasetSummary| s.list.clone().unwrap()[..8].to_string();
    assert_eq!(
        info_line(&model, "source"),
        format!(
            "gta5 dataset \"source\", 6 images, image list {}",
            hash(&src)
        )
    );
    assert_eq!(
        info_line(&model, "target"),
        format!(
            "cityscapes dataset \"target\", split val, 3 images, image list {}",
            hash(&tgt)
        )
    );
    let info: serde_json::Value = serde_json::from_str(&ok(
        &lse(),
        &["info", &model.display().to_string(), "--json"],
    ))
    .unwrap();
    assert_eq!(info["datasets"]["source"]["kind"], "gta5");
    assert_eq!(info["datasets"]["source"]["name"], "source");
    assert_eq!(info["datasets"]["target"]["images"], 3);

    // Republishing the folder in place keeps what it says.
    let before_rec = std::fs::read_to_string(out.join("run.json")).unwrap();
    let before_info = info_line(&model, "source");
    let o = out.display().to_string();
    ok(
        &lse_train(),
        &["publish", "--from-model", &o, "--out", &o, "--name", "tiny"],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("run.json")).unwrap(),
        before_rec
    );
    assert_eq!(info_line(&model, "source"), before_info);
    assert_clean(&models);

    // The datasets moved: kind and name only, or counted where --source/--target say.
    std::fs::rename(root.join("data"), root.join("moved")).unwrap();
    let moved = models.join("moved");
    let m = moved.display().to_string();
    let out2 = run(&lse_train(), &["publish", &p("run"), "--out", &m]);
    assert!(out2.status.success(), "{out2:?}");
    assert!(
        String::from_utf8_lossy(&out2.stderr).contains("cannot be opened"),
        "no warning: {out2:?}"
    );
    assert_eq!(json(&moved.join("run.json"))["source"], "gta5 \"source\"");
    let new_source = format!("gta5:{}", p("moved/source"));
    let new_target = format!("cityscapes:{}", p("moved/target"));
    ok(
        &lse_train(),
        &[
            "publish",
            &p("run"),
            "--out",
            &m,
            "--source",
            &new_source,
            "--target",
            &new_target,
        ],
    );
    let rec2 = json(&moved.join("run.json"));
    assert_eq!(rec2["source"], src.to_string());
    assert_eq!(rec2["target"], tgt.to_string());
    assert_clean(&models);

    // One clear message each.
    fails_with(
        &lse_train(),
        &["publish", &p("moved"), "--out", &m],
        "not a run directory",
    );
    fails_with(&lse_train(), &["publish", &o, "--out", &m], "--from-model");
    fails_with(
        &lse_train(),
        &["publish", &p("run"), "--out", &p("run")],
        "not the run directory",
    );
    std::fs::remove_file(root.join("run/model.safetensors")).unwrap();
    fails_with(
        &lse_train(),
        &["publish", &p("run"), "--out", &m],
        "has not finished",
    );
}
