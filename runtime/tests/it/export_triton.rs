//! `lse export-triton`: the repository entry's config parses with Triton's own
//! ModelConfig protobuf (shipped in tritonclient, text format) and its inputs and
//! outputs match the ONNX file's, checked by the onnx package.

use crate::common;

use std::path::Path;

use common::*;

const CHECK: &str = r#"
import json, sys
import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

repo, name, onnx_path = sys.argv[1:4]
cfg = text_format.Parse(open(f"{repo}/{name}/config.pbtxt").read(), mc.ModelConfig())
m = onnx.load(f"{repo}/{name}/1/model.onnx")
types = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.UINT8: mc.TYPE_UINT8}

def dims(vi):
    # Triton's dims leave out the batch dimension; -1 where ONNX has a symbolic size.
    d = vi.type.tensor_type.shape.dim
    return [x.dim_value if x.HasField("dim_value") else -1 for x in d][1:]

def same(cfg_tensors, onnx_tensors, what):
    got = {t.name: (t.data_type, list(t.dims)) for t in cfg_tensors}
    want = {v.name: (types[v.type.tensor_type.elem_type], dims(v)) for v in onnx_tensors}
    assert got == want, f"{what}: config {got} != onnx {want}"

same(cfg.input, m.graph.input, "inputs")
same(cfg.output, m.graph.output, "outputs")
assert open(onnx_path, "rb").read() == open(f"{repo}/{name}/1/model.onnx", "rb").read()
acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
print(json.dumps({
    "name": cfg.name, "backend": cfg.backend, "max_batch_size": cfg.max_batch_size,
    "preferred": list(cfg.dynamic_batching.preferred_batch_size),
    "instances": [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group],
    "accelerator": acc.name, "parameters": dict(acc.parameters),
}))
"#;

#[test]
fn triton_config_matches_the_onnx_file() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default/model.onnx");
    let repo = tempfile::tempdir().unwrap();
    ok(lse()
        .arg("export-triton")
        .arg(&model)
        .arg("--repo")
        .arg(repo.path())
        .args(["--name", "seg", "--max-batch", "4", "--precision", "fp16"])
        .args(["--instances", "2"]));
    let out = ok(python()
        .args(["-c", CHECK])
        .arg(repo.path())
        .arg("seg")
        .arg(&model));
    let v = json(&out);
    assert_eq!(v["name"], "seg");
    assert_eq!(v["backend"], "onnxruntime");
    assert_eq!(v["max_batch_size"], 4);
    assert_eq!(v["preferred"], serde_json::json!([2, 4]));
    assert_eq!(v["instances"], serde_json::json!([[2, "KIND_GPU"]]));
    assert_eq!(v["accelerator"], "tensorrt");
    assert_eq!(v["parameters"]["precision_mode"], "FP16");
    assert_eq!(v["parameters"]["trt_engine_cache_enable"], "1");
}

#[test]
fn bad_names_and_models_are_refused() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default/model.onnx");
    let repo = tempfile::tempdir().unwrap();
    let err = fails(
        lse()
            .arg("export-triton")
            .arg(&model)
            .arg("--repo")
            .arg(repo.path())
            .args(["--name", "a/b"]),
    );
    assert!(err.contains("`a/b`"), "{err}");
    let missing = repo.path().join("none.onnx");
    let err = fails(
        lse()
            .arg("export-triton")
            .arg(&missing)
            .arg("--repo")
            .arg(repo.path()),
    );
    assert!(err.contains("none.onnx"), "{err}");
    assert!(
        std::fs::read_dir(repo.path()).unwrap().next().is_none(),
        "nothing is written for a refused export"
    );
}
