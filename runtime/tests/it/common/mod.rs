//! What the runtime's integration tests add to `lse-test-support`: the `lse` binary
//! of this crate, the venv's Python as a command, and the scripts under tests/py.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub use lse_test_support::{
    check_fails as fails, check_ok as ok, gray_png, rgb_png, stdout_json as json, tiny_model,
    tree_bytes,
};

/// The `lse` binary built for these tests.
pub fn lse() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lse"))
}

/// The project's Python with numpy, pillow and onnxruntime (scripts/setup.sh).
pub fn python() -> Command {
    Command::new(lse_test_support::python())
}

/// A script under runtime/tests/py.
pub fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}
