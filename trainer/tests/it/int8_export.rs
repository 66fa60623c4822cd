//! `lse-train export --precision int8 --calibrate DATASET`: a QDQ model (int8 weights
//! per output channel, uint8 activations per tensor calibrated on target images) that
//! keeps the contract, passes the ONNX checker and shape inference, runs in ONNX
//! Runtime with integer convolutions, agrees with the float32 network, is the same
//! file for the same images, carries its calibration without local paths, and is
//! refused and moved aside when quantisation breaks it.
//!
//! The network is the committed 1/8-width model (`models/default`, trained at
//! 256x128): a freshly initialised network has near-tied logits almost everywhere,
//! which no 8-bit model follows, while a trained one is what users quantise.

use std::path::{Path, PathBuf};

use crate::agreement::arg_max_agreement;
use lse_runtime::contract::{self, Precision};
use lse_runtime::datasets::DatasetSpec;
use lse_trainer::checkpoint;
use lse_trainer::export::{ExportOptions, export_checked_as};
use lse_trainer::quantize::{CalibrationMethod, Int8Options, MIN_AGREEMENT, export_int8_checked};
use onnx_protobuf::{Message, ModelProto, tensor_proto::DataType};

fn default_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default/checkpoint.safetensors")
}

/// Synthetic domains at the model's size (256x128): 14 target-train images.
fn synth(dir: &Path) -> PathBuf {
    let settings = lse_runtime::synth::SynthSettings {
        size: [256, 128],
        train: 14,
        val: 1,
        seed: 3,
        ..Default::default()
    };
    lse_runtime::synth::write_domains(&settings, dir, &|| {}).unwrap();
    dir.join("target")
}

fn options(check: bool) -> ExportOptions {
    ExportOptions {
        train_size: None,
        check,
        tolerance: Default::default(),
        ort_lib: None,
    }
}

fn int8(target: &Path, method: CalibrationMethod) -> Int8Options {
    Int8Options {
        dataset: DatasetSpec {
            kind: lse_runtime::datasets::DatasetKind::Cityscapes,
            root: target.to_path_buf(),
        },
        split: "train".into(),
        images: 8,
        check_images: 6,
        method,
    }
}

fn load(path: &Path) -> ModelProto {
    ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap()
}

/// Every Conv reads a DequantizeLinear'd activation, int8 weights per output channel
/// and int32 biases, and its (ReLU'd) output goes through QuantizeLinear; the
/// upsampling reads float32 weights; input and outputs keep the contract's types.
fn assert_qdq_graph(m: &ModelProto) {
    let g = m.graph.as_ref().unwrap();
    let init = |name: &str| g.initializer.iter().find(|t| t.name == name);
    let producer = |out: &str| g.node.iter().find(|n| n.output.iter().any(|o| o == out));
    let consumers = |out: &str| -> Vec<_> {
        g.node
            .iter()
            .filter(|n| n.input.iter().any(|i| i == out))
            .collect()
    };
    let convs: Vec<_> = g.node.iter().filter(|n| n.op_type == "Conv").collect();
    assert_eq!(convs.len(), 18);
    for c in &convs {
        let x = producer(&c.input[0]).unwrap();
        assert_eq!(x.op_type, "DequantizeLinear", "{} reads {}", c.name, x.name);
        for (k, elem, axis) in [(1, DataType::INT8, true), (2, DataType::INT32, true)] {
            let dq = producer(&c.input[k]).unwrap();
            assert_eq!(dq.op_type, "DequantizeLinear", "{}", c.name);
            let q = init(&dq.input[0]).unwrap();
            assert_eq!(q.data_type, elem as i32, "{}", q.name);
            let scales = init(&dq.input[1]).unwrap();
            let channels = q.dims[0];
            assert_eq!(
                scales.dims,
                vec![channels],
                "{}: one scale per channel",
                q.name
            );
            assert_eq!(
                dq.attribute.iter().any(|a| a.name == "axis" && a.i == 0),
                axis
            );
        }
        let mut next = consumers(&c.output[0]);
        if next[0].op_type == "Relu" {
            next = consumers(&next[0].output[0]);
        }
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].op_type, "QuantizeLinear", "after {}", c.name);
        let zp = init(&next[0].input[2]).unwrap();
        assert_eq!(zp.data_type, DataType::UINT8 as i32);
    }
    for up in g.node.iter().filter(|n| n.op_type == "ConvTranspose") {
        assert_eq!(
            init(&up.input[1]).unwrap().data_type,
            DataType::FLOAT as i32
        );
    }
    let elem = |v: &onnx_protobuf::ValueInfoProto| match &v.type_.value {
        Some(onnx_protobuf::type_proto::Value::TensorType(t)) => t.elem_type,
        _ => panic!("{} is not a tensor", v.name),
    };
    assert_eq!(elem(&g.input[0]), DataType::FLOAT as i32);
    assert_eq!(g.output[0].name, contract::OUTPUT_TRAIN_IDS);
    assert_eq!(elem(&g.output[0]), DataType::UINT8 as i32);
    assert_eq!(g.output[1].name, contract::OUTPUT_SCORES);
    assert_eq!(elem(&g.output[1]), DataType::FLOAT as i32);
    // The preprocessing is the float32 graph's: Gather (RGB -> BGR), Sub (mean).
    let ops: Vec<&str> = g.node.iter().take(2).map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["Gather", "Sub"]);
}

/// A Python snippet run on `path` with the project's .venv (scripts/setup.sh).
fn python(code: &str, path: &Path) -> String {
    let py = lse_test_support::python();
    let out =
        lse_test_support::check_ok(std::process::Command::new(&py).args(["-c", code]).arg(path));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `onnx` package's full check and strict shape inference.
fn onnx_checks(path: &Path) {
    python(
        "import onnx, sys\n\
         m = onnx.load(sys.argv[1])\n\
         onnx.checker.check_model(m, full_check=True)\n\
         onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)",
        path,
    );
}

#[test]
fn int8_export_is_a_checked_qdq_model_with_its_calibration() {
    let dir = tempfile::tempdir().unwrap();
    let target = synth(&dir.path().join("syn"));
    let out = dir.path().join("m8.onnx");
    let q = int8(&target, CalibrationMethod::Percentile);
    let report = export_int8_checked(&default_checkpoint(), &out, &options(true), &q).unwrap();
    let report = serde_json::to_value(report).unwrap();
    assert_eq!(report["precision"], "int8");
    let check = &report["check"];
    assert_eq!(check["images"], 6);
    assert_eq!(check["min_agreement"], MIN_AGREEMENT);
    assert_eq!(check["provider"], "cpu");
    let agree = check["argmax_agreement"].as_f64().unwrap();
    eprintln!("the export's check: {check}");
    assert!(agree >= MIN_AGREEMENT, "{check}");
    // The synthetic target has labels: both mIoUs are measured.
    let (m32, m8) = (
        check["miou_fp32"].as_f64().unwrap(),
        check["miou_int8"].as_f64().unwrap(),
    );
    assert!((check["miou_change"].as_f64().unwrap() - (m8 - m32)).abs() < 1e-9);

    let m = load(&out);
    assert_qdq_graph(&m);
    onnx_checks(&out);

    // Metadata: precision, calibration summary, and no local path anywhere.
    let props = lse_runtime::trt::metadata_props(&std::fs::read(&out).unwrap()).unwrap();
    let meta = contract::ModelMeta::from_props(&props).unwrap();
    assert_eq!(meta.precision, Precision::Int8);
    assert_eq!(meta.train_size, [256, 128]);
    let cal = meta.calibration.as_ref().unwrap();
    assert_eq!(cal["method"], "percentile");
    assert_eq!(cal["images"], 8);
    let ds = cal["dataset"].as_str().unwrap();
    assert!(
        ds.starts_with("cityscapes \"target\" train (14 images, list "),
        "{ds}"
    );
    assert_eq!(cal["images_list"].as_str().unwrap().len(), 16);
    let root = dir.path().to_string_lossy().into_owned();
    for (k, v) in &props {
        assert!(!v.contains(&root), "{k} names the temporary folder: {v}");
        let found = lse_runtime::provenance::find_absolute_paths(v);
        assert!(found.is_empty(), "{k} carries local paths {found:?}");
    }

    // An independent comparison on fixed inputs: the int8 model and the float32
    // export, both in ONNX Runtime.
    let m32 = dir.path().join("m32.onnx");
    export_checked_as(&default_checkpoint(), &m32, &options(true), Precision::Fp32).unwrap();
    let agree = arg_max_agreement(&m32, &out, Precision::Int8, [256, 128], 4);
    eprintln!("agreement on fixed inputs: {agree:.3} %");
    assert!(
        agree >= MIN_AGREEMENT,
        "arg-max agreement on fixed inputs {agree:.3} %"
    );
    // About a quarter of the float32 file's size (int8 weights).
    let (s8, s32) = (
        std::fs::metadata(&out).unwrap().len(),
        std::fs::metadata(&m32).unwrap().len(),
    );
    assert!(s8 * 3 < s32, "{s8} vs {s32} bytes");
}

#[test]
fn calibration_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let target = synth(&dir.path().join("syn"));
    let export = |name: &str, method| {
        let out = dir.path().join(name);
        let q = int8(&target, method);
        export_int8_checked(&default_checkpoint(), &out, &options(false), &q).unwrap();
        std::fs::read(out).unwrap()
    };
    let a = export("a.onnx", CalibrationMethod::Percentile);
    let b = export("b.onnx", CalibrationMethod::Percentile);
    assert!(
        a == b,
        "the same images give the same scales and the same file"
    );
    // The scales are what differs between methods (so the comparison can fail).
    let c = export("c.onnx", CalibrationMethod::MinMax);
    assert!(a != c);
    let scale = |bytes: &[u8], name: &str| {
        let m = ModelProto::parse_from_bytes(bytes).unwrap();
        let t = m
            .graph
            .initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .clone();
        f32::from_le_bytes(t.raw_data[..4].try_into().unwrap())
    };
    // minmax takes the extremes, so its range (and step) is never smaller.
    assert!(scale(&c, "conv3_3.act_scale") >= scale(&a, "conv3_3.act_scale"));
}

#[test]
fn int8_export_of_a_network_built_to_fail_is_refused_and_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let target = synth(&dir.path().join("syn"));
    // One class's bias at -1e4 in the three score layers: a logit no image raises,
    // which stretches each score layer's 8-bit range to about 40 per step and erases
    // every other class's differences, while the float32 network's arg-max is
    // unchanged.
    let (meta, vs, _net) = lse_trainer::export::load_checkpoint(&default_checkpoint()).unwrap();
    let vars = vs.variables();
    for layer in ["score_fr", "score_pool4", "score_pool3"] {
        let bias = vars[&format!("{layer}.bias")].shallow_clone();
        tch::no_grad(|| {
            let _ = bias.get(18).fill_(-1e4);
        });
    }
    let broken = dir.path().join("broken.safetensors");
    checkpoint::save_network(&broken, &vs, &meta).unwrap();
    let out = dir.path().join("m8.onnx");
    let q = int8(&target, CalibrationMethod::Percentile);
    let err = export_int8_checked(&broken, &out, &options(true), &q).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("agreement check failed"), "{msg}");
    assert!(msg.contains("at least 95.00 % is required"), "{msg}");
    assert!(msg.contains("m8.onnx.failed"), "{msg}");
    assert!(!out.exists());
    assert!(dir.path().join("m8.onnx.failed").is_file());
    // Far under the threshold, not near it.
    let agreement: f64 = msg
        .split("network on ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("{msg}");
    assert!(agreement < 60.0, "{msg}");
    // The same network in float32 passes its parity check.
    let out32 = dir.path().join("m32.onnx");
    export_checked_as(&broken, &out32, &options(true), Precision::Fp32).unwrap();
}

/// ONNX Runtime's CPU provider, after its graph optimisations, runs every convolution
/// as an integer QLinearConv and the max-pools on uint8; only the upsampling, the skip
/// sums and the pre- and post-processing stay float.
#[test]
fn onnx_runtime_runs_the_convolutions_with_integer_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let target = synth(&dir.path().join("syn"));
    let out = dir.path().join("m8.onnx");
    let q = int8(&target, CalibrationMethod::Percentile);
    export_int8_checked(&default_checkpoint(), &out, &options(false), &q).unwrap();
    let ops = python(
        "import sys, collections, onnx, onnxruntime as ort\n\
         so = ort.SessionOptions()\n\
         so.log_severity_level = 3\n\
         so.optimized_model_filepath = sys.argv[1] + '.opt'\n\
         ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n\
         m = onnx.load(sys.argv[1] + '.opt')\n\
         c = collections.Counter(n.op_type for n in m.graph.node)\n\
         print(' '.join(f'{k}={v}' for k, v in sorted(c.items())))",
        &out,
    );
    let count = |op: &str| -> usize {
        ops.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{op}=")))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    assert_eq!(count("QLinearConv"), 18, "{ops}");
    assert_eq!(count("Conv") + count("FusedConv"), 0, "{ops}");
    assert_eq!(count("NhwcMaxPool") + count("MaxPool"), 5, "{ops}");
    assert_eq!(count("ConvTranspose"), 3, "{ops}");
}

#[test]
fn int8_without_calibration_images_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = export_checked_as(
        &default_checkpoint(),
        &dir.path().join("m.onnx"),
        &options(true),
        Precision::Int8,
    )
    .unwrap_err();
    assert!(err.to_string().contains("--calibrate"), "{err}");
    let target = synth(&dir.path().join("syn"));
    let mut q = int8(&target, CalibrationMethod::MinMax);
    q.images = 10;
    let err = export_int8_checked(
        &default_checkpoint(),
        &dir.path().join("m.onnx"),
        &options(true),
        &q,
    )
    .unwrap_err();
    assert!(err.to_string().contains("14 images"), "{err}");
}
