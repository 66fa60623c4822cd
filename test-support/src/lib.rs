//! Helpers shared by the workspace's integration tests: running the binaries, the
//! project's Python, JSON files, the scan of model files for machine paths
//! ([`machine_paths`]), the committed tiny model. Used only as a dev-dependency.
//!
//! A test finds its own binaries with `env!("CARGO_BIN_EXE_<name>")` (only the test's
//! crate sees it) and the others beside them with [`beside`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod machine_paths;

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
        "{} is missing: build it first with `cargo build -p {} --bins`",
        p.display(),
        package_of(name)
    );
    p
}

/// The workspace package that builds the binary `name`.
fn package_of(name: &str) -> &'static str {
    match name {
        "lse" => "lse-runtime",
        "lse-train" => "lse-trainer",
        "lse-serve" => "lse-server",
        other => panic!("`{other}` is not a binary of this workspace (lse, lse-train, lse-serve)"),
    }
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
    let out = check_ok(Command::new(bin).args(args).env("RUST_LOG", "warn"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must succeed and returns its output; a failure panics with
/// the command and both streams.
pub fn check_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail and returns its standard error.
pub fn check_fails(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed\nstdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A command's standard output parsed as JSON.
pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The committed tiny model of the tests, `test-support/models/tiny/model.onnx`: an
/// untrained width-1/128 FCN8s (19 classes) at a 64x32 training size, written by
/// `scripts/make-test-model.sh`; a trainer test checks that the exporter still writes it.
pub fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/model.onnx")
}

/// Writes an 8-bit grey PNG (creating its folder).
pub fn gray_png(path: &Path, w: u32, h: u32, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_raw(w, h, data.to_vec())
        .expect("size matches")
        .save(path)
        .unwrap();
}

/// Writes an 8-bit RGB PNG filled with one colour (creating its folder).
pub fn rgb_png(path: &Path, w: u32, h: u32, color: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(color))
        .save(path)
        .unwrap();
}

/// Every file under `dir` with its bytes, by relative path.
pub fn tree_bytes(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The panic message of `beside` for a binary `name` that is not there.
    fn missing_hint(name: &str) -> String {
        let nowhere = workspace_root().join("test-support/no-such-folder/lse");
        let err = std::panic::catch_unwind(|| beside(&nowhere, name)).unwrap_err();
        err.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn missing_binary_hint_names_its_package() {
        for (name, package) in [
            ("lse", "lse-runtime"),
            ("lse-train", "lse-trainer"),
            ("lse-serve", "lse-server"),
        ] {
            let hint = missing_hint(name);
            assert!(
                hint.contains(&format!("cargo build -p {package} --bins")),
                "{name}: {hint}"
            );
        }
    }
}
