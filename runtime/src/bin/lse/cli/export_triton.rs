//! `lse export-triton`: a model as one entry of a Triton Inference Server model
//! repository: `REPO/NAME/1/model.onnx` and `REPO/NAME/config.pbtxt` for Triton's
//! ONNX Runtime backend (dynamic batching, dynamic image sizes, the TensorRT
//! accelerator with its precision and engine cache, instance groups).
//!
//! Triton runs the network only: clients send the `image` tensor (float32 N x 3 x H x
//! W, RGB 0..255, the model contract's input) and get `train_ids` and `scores` at that
//! size; the resizing and upsampling of `lse segment` stay on the client.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use lse_runtime::choice::Choice;
use lse_runtime::contract::{self, Precision};
use lse_runtime::engine::{Engine, EngineOptions, Provider};

/// Arguments of `lse export-triton`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (an ONNX file exported by lse-train; default: models/default/model.onnx).
    pub model: Option<PathBuf>,
    /// The model repository to write into (created if missing).
    #[arg(long)]
    pub repo: PathBuf,
    /// The model's name in the repository (default: the model's folder name).
    #[arg(long)]
    pub name: Option<String>,
    /// Largest batch Triton may form (max_batch_size).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: u32,
    /// TensorRT precision (precision_mode of the TensorRT accelerator).
    #[arg(long, value_parser = lse_cli::choice(Precision::ALL, Precision::help), default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Model instances per GPU (instance_group count).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub instances: u32,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, the project's .venv, the system).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

/// Everything config.pbtxt says.
#[derive(Debug, Clone)]
pub struct TritonConfig {
    pub name: String,
    pub classes: usize,
    pub max_batch: u32,
    pub precision: Precision,
    pub instances: u32,
}

/// A repository name: letters, digits, `-`, `_`, `.`, not starting with `.`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    anyhow::ensure!(
        ok,
        "model name `{name}` is not usable as a Triton model folder: use letters, digits, `-`, `_` and `.`"
    );
    Ok(())
}

/// The default name: the model's folder (`models/NAME/model.onnx`), else the file stem.
fn default_name(model: &Path) -> String {
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned());
    let folder = std::fs::canonicalize(model).ok().and_then(|p| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    });
    match (stem.as_deref(), folder) {
        (Some("model"), Some(f)) => f,
        (Some(s), _) => s.to_string(),
        (None, f) => f.unwrap_or_else(|| "lse".into()),
    }
}

/// The text of config.pbtxt (protobuf text format of Triton's ModelConfig).
pub fn config_pbtxt(c: &TritonConfig) -> String {
    let precision = match c.precision {
        Precision::Fp32 => "FP32",
        Precision::Fp16 => "FP16",
        Precision::Int8 => "INT8",
    };
    let mut s = String::new();
    let _ = writeln!(s, "name: \"{}\"", c.name);
    s.push_str("backend: \"onnxruntime\"\n");
    let _ = writeln!(s, "max_batch_size: {}", c.max_batch);
    let _ = writeln!(
        s,
        "input [\n  {{\n    name: \"{}\"\n    data_type: TYPE_FP32\n    dims: [ 3, -1, -1 ]\n  }}\n]",
        contract::INPUT
    );
    let _ = writeln!(
        s,
        "output [\n  {{\n    name: \"{}\"\n    data_type: TYPE_UINT8\n    dims: [ -1, -1 ]\n  }},\n  {{\n    name: \"{}\"\n    data_type: TYPE_FP32\n    dims: [ {}, -1, -1 ]\n  }}\n]",
        contract::OUTPUT_TRAIN_IDS,
        contract::OUTPUT_SCORES,
        c.classes
    );
    let preferred: Vec<String> = [1u32, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        .iter()
        .filter(|&&b| b > 1 && b <= c.max_batch)
        .map(u32::to_string)
        .collect();
    s.push_str("dynamic_batching {\n");
    if !preferred.is_empty() {
        let _ = writeln!(s, "  preferred_batch_size: [ {} ]", preferred.join(", "));
    }
    s.push_str("  max_queue_delay_microseconds: 5000\n}\n");
    let _ = writeln!(
        s,
        "instance_group [\n  {{\n    count: {}\n    kind: KIND_GPU\n  }}\n]",
        c.instances
    );
    let _ = writeln!(
        s,
        "optimization {{\n  execution_accelerators {{\n    gpu_execution_accelerator: [\n      {{\n        name: \"tensorrt\"\n        parameters {{ key: \"precision_mode\" value: \"{precision}\" }}\n        parameters {{ key: \"max_workspace_size_bytes\" value: \"1073741824\" }}\n        parameters {{ key: \"trt_engine_cache_enable\" value: \"1\" }}\n        parameters {{ key: \"trt_engine_cache_path\" value: \"/tmp/triton-trt-cache/{}\" }}\n      }}\n    ]\n  }}\n}}",
        c.name
    );
    s
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    lse_runtime::imageio::write_atomic(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let model = super::model_or_default(a.model)?;
    // Loading checks the model contract and reads the class count.
    let engine = Engine::load(
        &model,
        &EngineOptions {
            provider: Provider::Cpu,
            ort_lib: a.ort_lib,
            ..Default::default()
        },
    )?;
    let name = a.name.unwrap_or_else(|| default_name(&model));
    check_name(&name)?;
    let cfg = TritonConfig {
        name: name.clone(),
        classes: engine.meta().num_classes(),
        max_batch: a.max_batch,
        precision: a.precision,
        instances: a.instances,
    };
    let dir = a.repo.join(&name);
    let version = dir.join("1");
    std::fs::create_dir_all(&version)
        .with_context(|| format!("cannot create {}", version.display()))?;
    let onnx = std::fs::read(&model).with_context(|| format!("cannot read {}", model.display()))?;
    write_atomic(&version.join("model.onnx"), &onnx)?;
    write_atomic(&dir.join("config.pbtxt"), config_pbtxt(&cfg).as_bytes())?;
    println!("wrote {}", dir.display());
    println!(
        "start Triton on it: tritonserver --model-repository={}  (in the Triton container, with the repository mounted)",
        a.repo.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("gta5-lse_1.0").is_ok());
        for bad in ["", ".hidden", "a/b", "a b"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn config_has_batching_precision_and_instances() {
        let c = config_pbtxt(&TritonConfig {
            name: "m".into(),
            classes: 19,
            max_batch: 8,
            precision: Precision::Fp16,
            instances: 2,
        });
        assert!(c.contains("max_batch_size: 8\n"), "{c}");
        assert!(c.contains("preferred_batch_size: [ 2, 4, 8 ]"), "{c}");
        assert!(c.contains("value: \"FP16\""), "{c}");
        assert!(c.contains("count: 2\n"), "{c}");
        assert!(c.contains("dims: [ 19, -1, -1 ]"), "{c}");
    }
}
