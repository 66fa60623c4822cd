//! Helpers shared by the workspace's integration tests: running the binaries, the
//! project's Python, JSON files. Used only as a dev-dependency.
//!
//! A test finds its own binaries with `env!("CARGO_BIN_EXE_<name>")` (only the test's
//! crate sees it) and the others beside them with [`beside`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives in the workspace")
        .to_path_buf()
}

/// The project's Python (`.venv`, made by scripts/setup.sh) with PyTorch, numpy and
/// onnxruntime: the independent reference of the tests.
pub fn python() -> PathBuf {
    let p = workspace_root().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} not found: run scripts/setup.sh to create the venv with torch",
        p.display()
    );
    p
}

/// The binary `name` in the folder of the binary `exe` (`lse` beside `lse-train`).
pub fn beside(exe: &Path, name: &str) -> PathBuf {
    let p = exe.with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build -p lse-runtime --bins`",
        p.display()
    );
    p
}

/// Runs `bin` with `args` (logging at `warn`).
pub fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

/// Runs `bin` with `args`, which must succeed; returns its standard output.
pub fn ok(bin: &Path, args: &[&str]) -> String {
    let out = run(bin, args);
    assert!(
        out.status.success(),
        "{} {:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        bin.display(),
        args,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail with one `error:` message containing `needle`.
pub fn fails_with(bin: &Path, args: &[&str], needle: &str) {
    let out = run(bin, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected a message containing `{needle}`, got:\n{stderr}"
    );
    let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
    assert_eq!(errors, 1, "{args:?}: one message expected, got:\n{stderr}");
}

/// A JSON file.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `lse synth`: `train` source and target-train images and `val` target-val images of
/// `size` (`WxH`) under `out`.
pub fn synth(lse: &Path, out: &str, train: usize, val: usize, size: &str, seed: u64) {
    let (train, val, seed) = (train.to_string(), val.to_string(), seed.to_string());
    ok(
        lse,
        &[
            "synth", "--out", out, "--train", &train, "--val", &val, "--size", size, "--seed",
            &seed,
        ],
    );
}

/// `lse-train init`: a tiny network (width 0.125, 19 classes) at `out`.
pub fn init_tiny(lse_train: &Path, out: &str, seed: u64) {
    let seed = seed.to_string();
    ok(
        lse_train,
        &[
            "init",
            "--width",
            "0.125",
            "--classes",
            "19",
            "--seed",
            &seed,
            "--out",
            out,
        ],
    );
}
