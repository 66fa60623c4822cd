//! Shipped models say what they were trained on, never where it lay: no file under
//! `models/` or `test-support/models/` (ONNX metadata and safetensors headers
//! included) holds an absolute path of a machine, and `lse info` names the default
//! model's datasets by kind and folder.

use std::path::Path;
use std::process::Command;

use lse_test_support::machine_paths::{files_under, machine_paths_in};

fn models_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))
}

/// The models the tests label with (`scripts/make-test-model.sh`).
fn test_models_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../test-support/models"
    ))
}

#[test]
fn no_file_under_models_holds_a_machine_path() {
    let files: Vec<_> = [models_dir(), test_models_dir()]
        .into_iter()
        .flat_map(files_under)
        .collect();
    for shipped in ["models/default/model.onnx", "models/tiny/model.onnx"] {
        assert!(
            files.iter().any(|f| f.ends_with(shipped)),
            "{shipped} missing: {files:?}"
        );
    }
    let found: Vec<String> = files.iter().flat_map(|f| machine_paths_in(f)).collect();
    assert!(
        found.is_empty(),
        "absolute paths of a machine in models/ (republish with \
         `lse-train publish --from-model models/NAME --out models/NAME`; the tiny test \
         model with `scripts/make-test-model.sh`):\n{}",
        found.join("\n")
    );
}

#[test]
fn lse_info_names_the_default_models_datasets_by_kind_and_folder() {
    let model = models_dir().join("default/model.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_lse"))
        .arg("info")
        .arg(&model)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run lse info");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lse info failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for role in ["source", "target"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{role} ")))
            .unwrap_or_else(|| panic!("no `{role}` line in:\n{stdout}"));
        let value = line[role.len()..].trim();
        assert!(
            [
                "gta5 dataset \"",
                "synthia dataset \"",
                "cityscapes dataset \""
            ]
            .iter()
            .any(|k| value.starts_with(k)),
            "{role}: `{value}` does not name a dataset by kind and folder"
        );
        assert!(!value.contains('/'), "{role}: `{value}` holds a path");
    }
}
