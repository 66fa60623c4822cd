//! `lse-train export --precision fp16`: float16 weights and layers behind a float32
//! input, float32 scores and arg-max, uint8 train ids; the contract records the
//! precision; ONNX Runtime's CPU provider runs the file; the export's check refuses a
//! model whose arg-max agrees with the float32 network on less than 99.5 % of pixels.
//!
//! On an x86 CPU, ONNX Runtime has no float16 kernels for Conv, ConvTranspose, MaxPool,
//! Relu, Add or Mul: it casts the float16 weights to float32 when the session is
//! created and computes in float32. These tests therefore check the graph, the weight
//! rounding and the casts; float16 arithmetic itself runs on a GPU (the `ort-gpu` step
//! of `scripts/gpu-run.sh`, on a machine with `onnxruntime-gpu`).

use std::path::{Path, PathBuf};

use crate::agreement::arg_max_agreement;
use lse_runtime::contract::{self, Precision};
use lse_trainer::checkpoint::{self, CheckpointMeta};
use lse_trainer::export::{ExportOptions, export_checked_as};
use lse_trainer::fcn8s::{Fcn8s, Fcn8sConfig, InitScheme};
use onnx_protobuf::{Message, ModelProto, tensor_proto::DataType};
use tch::{Device, Tensor, nn};

const CONFIG: Fcn8sConfig = Fcn8sConfig {
    width: 0.125,
    classes: 19,
};

/// A fresh small network, seeded, its score layers changed by `edit`, saved as a
/// checkpoint in `dir`.
fn checkpoint(dir: &Path, edit: impl Fn(&str, &mut Tensor)) -> PathBuf {
    let vs = nn::VarStore::new(Device::Cpu);
    // Seed and initialisation as one step: the tests of this file run in parallel.
    lse_trainer::seeding::with_seed(7, || Fcn8s::new(&vs.root(), CONFIG, InitScheme::Scratch));
    for (name, var) in vs.variables() {
        if name.starts_with("score_") {
            let mut v = var.shallow_clone();
            tch::no_grad(|| edit(&name, &mut v));
        }
    }
    let path = dir.join("net.safetensors");
    let meta = CheckpointMeta::new(CONFIG, InitScheme::Scratch);
    checkpoint::save_network(&path, &vs, &meta).unwrap();
    path
}

/// The seeded network as initialised.
fn unchanged(_: &str, _: &mut Tensor) {}

/// A network that float16 cannot represent: every score weight and bias is 0 except
/// class 1's bias of `score_fr`, 1e-9. In float32 class 1 wins at every pixel (its
/// score is 1e-9 times the bilinear kernels' positive sums, every other score 0); in
/// float16 1e-9 rounds to 0 (the smallest subnormal is 6e-8), every score is 0 and the
/// arg-max takes the first class. Agreement is 0 %, whatever the input.
fn underflowing(name: &str, v: &mut Tensor) {
    let _ = v.zero_();
    if name == "score_fr.bias" {
        let _ = v.get(1).fill_(1e-9);
    }
}

fn options() -> ExportOptions {
    ExportOptions {
        train_size: Some([64, 32]),
        check: true,
        tolerance: Default::default(),
        ort_lib: None,
    }
}

fn elem_type(v: &onnx_protobuf::ValueInfoProto) -> i32 {
    match &v.type_.value {
        Some(onnx_protobuf::type_proto::Value::TensorType(t)) => t.elem_type,
        other => panic!("{} is not a tensor: {other:?}", v.name),
    }
}

/// Every weight is float16; the input, `scores` and the mean are float32; the three
/// casts sit where the precision changes; the arg-max reads the float32 scores.
fn assert_fp16_graph(path: &Path) {
    let m = ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap();
    let g = m.graph.as_ref().unwrap();
    for t in &g.initializer {
        let want = if t.name.ends_with(".weight") || t.name.ends_with(".bias") {
            DataType::FLOAT16
        } else if t.name == "preprocess.mean_bgr" {
            DataType::FLOAT
        } else if t.name.ends_with(".scale") {
            DataType::FLOAT16
        } else {
            DataType::INT64
        };
        assert_eq!(t.data_type, want as i32, "initializer {}", t.name);
    }
    assert_eq!(elem_type(&g.input[0]), DataType::FLOAT as i32);
    let outs: Vec<(String, i32)> = g
        .output
        .iter()
        .map(|o| (o.name.clone(), elem_type(o)))
        .collect();
    assert_eq!(
        outs,
        vec![
            (
                contract::OUTPUT_TRAIN_IDS.to_string(),
                DataType::UINT8 as i32
            ),
            (contract::OUTPUT_SCORES.to_string(), DataType::FLOAT as i32),
        ]
    );
    let casts: Vec<i64> = g
        .node
        .iter()
        .filter(|n| n.op_type == "Cast")
        .map(|n| n.attribute[0].i)
        .collect();
    let want = [DataType::FLOAT16, DataType::FLOAT, DataType::UINT8].map(|d| d as i64);
    assert_eq!(casts, want);
    let argmax = g.node.iter().find(|n| n.op_type == "ArgMax").unwrap();
    assert_eq!(argmax.input, vec![contract::OUTPUT_SCORES.to_string()]);
    let producer = g
        .node
        .iter()
        .find(|n| n.output.contains(&contract::OUTPUT_SCORES.to_string()))
        .unwrap();
    assert_eq!(producer.op_type, "Cast");
    assert_eq!(producer.attribute[0].i, DataType::FLOAT as i64);
}

/// The `onnx` package's full check, from the project's .venv (scripts/setup.sh).
fn onnx_checker(path: &Path) {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let out = std::process::Command::new(&py)
        .args([
            "-c",
            "import onnx, sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", py.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fp16_export_keeps_the_contract_and_agrees_with_the_fp32_network() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), unchanged);
    let (m16, m32) = (dir.path().join("m16.onnx"), dir.path().join("m32.onnx"));
    let report = export_checked_as(&ckpt, &m16, &options(), Precision::Fp16).unwrap();
    let report = serde_json::to_value(report).unwrap();
    assert_eq!(report["precision"], "fp16");
    let parity = &report["parity"];
    assert_eq!(parity["min_agreement"], 99.5);
    assert!(
        parity["argmax_agreement"].as_f64().unwrap() >= 99.5,
        "{parity}"
    );
    assert_eq!(parity["provider"], "cpu");
    assert_fp16_graph(&m16);
    onnx_checker(&m16);
    export_checked_as(&ckpt, &m32, &options(), Precision::Fp32).unwrap();
    // Half the weight bytes of the float32 file.
    let (s16, s32) = (
        std::fs::metadata(&m16).unwrap().len(),
        std::fs::metadata(&m32).unwrap().len(),
    );
    assert!(s16 * 10 < s32 * 6, "{s16} vs {s32} bytes");
    // The runtime reads the metadata (precision included) from the bytes, before any
    // session exists, as ONNX Runtime does (the TensorRT cache key needs it).
    let props = lse_runtime::trt::metadata_props(&std::fs::read(&m16).unwrap()).unwrap();
    let meta = contract::ModelMeta::from_props(&props).unwrap();
    assert_eq!(meta.precision, Precision::Fp16);
    assert_eq!(meta.train_size, [64, 32]);
    let agree = arg_max_agreement(&m32, &m16, Precision::Fp16, [64, 32], 3);
    assert!(
        agree >= 99.5,
        "arg-max agreement on synthetic images {agree:.3} %"
    );
}

#[test]
fn fp16_export_under_the_agreement_is_refused_and_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), underflowing);
    let out = dir.path().join("m16.onnx");
    let err = export_checked_as(&ckpt, &out, &options(), Precision::Fp16).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("agreement check failed"), "{msg}");
    assert!(msg.contains("at least 99.50 % is required"), "{msg}");
    assert!(msg.contains("m16.onnx.failed"), "{msg}");
    // Far from the threshold: the float16 arg-max is class 0 everywhere, the float32
    // one class 1.
    assert!(msg.contains("on 0.00 % of the pixels"), "{msg}");
    assert!(!out.exists());
    assert!(dir.path().join("m16.onnx.failed").is_file());
    // The same network in float32 passes its parity check.
    let out32 = dir.path().join("m32.onnx");
    export_checked_as(&ckpt, &out32, &options(), Precision::Fp32).unwrap();
}
