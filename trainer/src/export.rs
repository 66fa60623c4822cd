//! Checkpoint → `model.onnx` with the ONNX Runtime check (`lse-train export` and
//! `lse-train publish`): float32 exports are compared logit by logit with libtorch,
//! float16 ones by arg-max agreement; a model that fails is moved aside.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lse_runtime::contract::{ModelMeta, Precision};
use lse_runtime::engine::{EngineOptions, Provider};
use serde::Serialize;
use tch::{Tensor, nn};

use crate::checkpoint;
use crate::fcn8s::Fcn8s;
use crate::onnx::{Parity, Tolerance};

/// Builds the model metadata of a checkpoint: its recorded run (source, target,
/// method, settings, evaluation) and the label table.
pub fn model_meta(
    meta: &checkpoint::CheckpointMeta,
    train_size: Option<[u32; 2]>,
) -> anyhow::Result<ModelMeta> {
    let size = match train_size {
        Some(s) => s,
        None => match meta.extra.get("train_size") {
            Some(s) => {
                serde_json::from_str(s).with_context(|| format!("checkpoint train_size `{s}`"))?
            }
            None => [1024, 512],
        },
    };
    let mut m = ModelMeta::cityscapes(meta.config.width, size);
    if meta.config.classes as usize != m.num_classes() {
        anyhow::bail!(
            "the checkpoint has {} classes; the model contract's label table has {}",
            meta.config.classes,
            m.num_classes()
        );
    }
    let get = |k: &str| meta.extra.get(k).cloned();
    if let Some(v) = get("source") {
        m.source = v;
    }
    if let Some(v) = get("target") {
        m.target = v;
    }
    if let Some(v) = get("method") {
        m.method = v;
    }
    let json = |k: &str| get(k).and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok());
    let mut settings = json("settings").unwrap_or(serde_json::json!({}));
    if let Some(obj) = settings.as_object_mut() {
        obj.insert("init".into(), serde_json::to_value(meta.init)?);
    }
    m.settings = settings;
    m.evaluation = json("evaluation");
    Ok(m)
}

/// How [`export_checked`] exports and checks a checkpoint.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Training input size recorded in the model (default: the checkpoint's, else
    /// 1024x512).
    pub train_size: Option<[u32; 2]>,
    /// Run the ONNX Runtime parity check.
    pub check: bool,
    /// Accepted |logit difference| in the parity check (relative and absolute).
    pub tolerance: crate::onnx::Tolerance,
    /// Path of libonnxruntime.so.
    pub ort_lib: Option<PathBuf>,
}

/// What an export wrote and how it was checked (`lse-train export --json`).
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub model: PathBuf,
    pub checkpoint: PathBuf,
    /// The model's input size `[width, height]`.
    pub train_size: [u32; 2],
    pub precision: Precision,
    /// The check in ONNX Runtime against libtorch, unless it was turned off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parity: Option<CheckReport>,
}

/// The parity (float32) or agreement (float16) check of an export, with its bound.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    #[serde(flatten)]
    pub parity: Parity,
    /// float32: the tolerance, and the |logit difference| it allowed here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Tolerance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_diff: Option<f64>,
    /// float16: the least arg-max agreement accepted, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_agreement: Option<f64>,
}

/// Exports `checkpoint` to `out` (atomically) and, unless told not to, runs the
/// file in ONNX Runtime against libtorch; a model that fails the check is moved to
/// `<out>.failed` and the error says so. Returns the report (model, checkpoint,
/// train size, parity) that `lse-train export --json` prints.
pub fn export_checked(
    checkpoint: &Path,
    out: &Path,
    o: &ExportOptions,
) -> anyhow::Result<ExportReport> {
    export_checked_as(checkpoint, out, o, Precision::Fp32)
}

/// [`export_checked`] in the given precision. A float16 export is checked by its
/// arg-max agreement with the float32 network (at least
/// [`crate::onnx::MIN_AGREEMENT`] percent) and refused like a failed parity check.
pub fn export_checked_as(
    checkpoint: &Path,
    out: &Path,
    o: &ExportOptions,
    precision: Precision,
) -> anyhow::Result<ExportReport> {
    if precision == Precision::Int8 {
        anyhow::bail!(
            "an int8 export needs calibration images: lse-train export --precision int8 \
             --calibrate DATASET (crate::quantize::export_int8_checked)"
        );
    }
    let (meta, vs, net) = load_checkpoint(checkpoint)?;
    let mut model_meta = model_meta(&meta, o.train_size)?;
    model_meta.precision = precision;
    crate::onnx::export(&net, &vs, &model_meta, out)?;
    let parity = if o.check {
        Some(check_export(&net, out, o, precision)?)
    } else {
        None
    };
    Ok(ExportReport {
        model: out.to_path_buf(),
        checkpoint: checkpoint.to_path_buf(),
        train_size: model_meta.train_size,
        precision,
        parity,
    })
}

/// The check's input: a small probe of odd size and batch 2 (it exercises dynamic N,
/// H, W and the crops), pixels uniform in 0..255 from a fixed-seed ChaCha8 stream. It
/// draws nothing from libtorch's global generator, so the check gives the same answer
/// whatever else runs in the process, and a caller's random stream is left alone.
pub fn parity_probe() -> Tensor {
    use rand::{Rng, SeedableRng};
    const SHAPE: [i64; 4] = [2, 3, 37, 53];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1234);
    let n = SHAPE.iter().product::<i64>() as usize;
    let pixels: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 255.0).collect();
    Tensor::from_slice(&pixels).reshape(SHAPE)
}

/// The checkpoint's metadata and network on the CPU.
pub fn load_checkpoint(
    checkpoint: &Path,
) -> anyhow::Result<(checkpoint::CheckpointMeta, nn::VarStore, Fcn8s)> {
    let meta = checkpoint::read_meta(checkpoint)?;
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = Fcn8s::new(&vs.root(), meta.config, meta.init);
    checkpoint::load_network(&mut vs, checkpoint, meta.config)?;
    Ok((meta, vs, net))
}

/// Moves an export that failed its check to `<out>.failed`, so no unchecked model is
/// left behind, and says so in the error.
pub fn refuse(out: &Path, e: impl Into<anyhow::Error>) -> anyhow::Error {
    let bad = out.with_extension("onnx.failed");
    let _ = std::fs::rename(out, &bad);
    e.into()
        .context(format!("the export was moved to {}", bad.display()))
}

/// Runs the export's check; a model that fails it is moved to `<out>.failed`.
fn check_export(
    net: &Fcn8s,
    out: &Path,
    o: &ExportOptions,
    precision: Precision,
) -> anyhow::Result<CheckReport> {
    let probe = parity_probe();
    let opts = EngineOptions {
        provider: Provider::Cpu,
        ort_lib: o.ort_lib.clone(),
        ..Default::default()
    };
    let checked = match precision {
        Precision::Fp32 => crate::onnx::check_parity(net, out, &probe, &opts, o.tolerance),
        Precision::Fp16 => {
            let min = crate::onnx::MIN_AGREEMENT;
            crate::onnx::check_agreement(net, out, &probe, &opts, precision, min)
        }
        // Checked on held-out calibration images by crate::quantize::check.
        Precision::Int8 => Err(crate::onnx::ExportError::MissingCalibration("input".into())),
    };
    match checked {
        Ok(p) => {
            if precision == Precision::Fp32 {
                let allowed = o.tolerance.allowed(p.max_abs_logit);
                tracing::info!(
                    max_abs_diff = p.max_abs_diff,
                    max_abs_logit = p.max_abs_logit,
                    allowed,
                    argmax_agreement = format!("{:.2} %", p.argmax_agreement),
                    argmax_disagreements = p.argmax_disagreements,
                    "parity check passed (ONNX Runtime vs libtorch)"
                );
                Ok(CheckReport {
                    parity: p,
                    tolerance: Some(o.tolerance),
                    allowed_diff: Some(allowed),
                    min_agreement: None,
                })
            } else {
                tracing::info!(
                    argmax_agreement = format!("{:.2} %", p.argmax_agreement),
                    min = format!("{:.1} %", crate::onnx::MIN_AGREEMENT),
                    max_abs_diff = p.max_abs_diff,
                    max_abs_logit = p.max_abs_logit,
                    "agreement check passed ({precision} model in ONNX Runtime vs the float32 network in libtorch)"
                );
                Ok(CheckReport {
                    parity: p,
                    tolerance: None,
                    allowed_diff: None,
                    min_agreement: Some(crate::onnx::MIN_AGREEMENT),
                })
            }
        }
        Err(e) => Err(refuse(out, e)),
    }
}
