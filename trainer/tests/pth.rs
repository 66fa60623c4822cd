//! `lse_trainer::pth::load_state_dict` against checkpoints written by the real
//! PyTorch of the project's venv. Every tensor is compared with the same tensor
//! written by python through `safetensors.torch.save_file` and read back with tch's
//! independent safetensors reader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use lse_trainer::pth::{PthError, RESAVE_COMMAND, load_state_dict};
use tch::{Kind, Tensor};

const FIXTURES_PY: &str = r#"
import json, sys, types, zipfile
import numpy as np
import torch, torch.nn as nn
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(5, 6)
        self.head = nn.Linear(5, 6)
        self.head.weight = self.fc.weight  # tied: two keys, one storage
        self.register_buffer("transposed", torch.randn(4, 6).t())  # non-contiguous
        self.register_buffer("strided", torch.arange(20.0)[3:17:3])  # offset + stride
        self.register_buffer("expanded", torch.randn(3, 1).expand(3, 4))  # stride 0
        self.register_buffer("h16", torch.randn(2, 3).half())
        self.register_buffer("h16_t", torch.randn(3, 5).half().t())
        self.register_buffer("bf16", torch.randn(3, 2).bfloat16())
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("scalar", torch.tensor(2.5, dtype=torch.float64))
        self.register_buffer("empty", torch.zeros(0, 3))
        self.register_buffer("ints", torch.arange(6, dtype=torch.int32).reshape(2, 3)[:, 1:])
        self.register_buffer("bytes", torch.arange(5, dtype=torch.uint8))
        self.register_buffer("i8", torch.tensor([-3, 4], dtype=torch.int8))
        self.register_buffer("i16", torch.tensor([-300, 400], dtype=torch.int16))

net = Net()
net.train()
net.bn(torch.randn(2, 4, 5, 5))  # running stats and num_batches_tracked (int64) move
sd = net.state_dict()
assert not sd["transposed"].is_contiguous()
assert sd["fc.weight"].data_ptr() == sd["head.weight"].data_ptr()

def reference(d, path):
    save_file({k: v.contiguous().clone() for k, v in d.items()}, path)

reference(sd, f"{out}/ref.safetensors")
json.dump(list(sd.keys()), open(f"{out}/keys.json", "w"))

torch.save(sd, f"{out}/plain.pth")
torch.save(dict(sd), f"{out}/plaindict.pth")
torch.save(sd, f"{out}/proto4.pth", pickle_protocol=4)
torch.save({"state_dict": sd, "epoch": 3}, f"{out}/nested.pth")
other = Net()  # stepping `net` would change `sd`, which shares its storages
opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
other.fc(torch.randn(2, 5)).sum().backward()
opt.step()
torch.save(
    {
        "epoch": 7,
        "optimizer": opt.state_dict(),  # tensors under int keys, must not be picked
        "model": sd,
        "best_miou": np.float64(0.5),
        "args": types.SimpleNamespace(lr=0.1, name="x"),
        "history": [1.5, 2.5, None, (1, 2)],
        "big": 2**70,
    },
    f"{out}/training.pth",
)
params = dict(net.named_parameters())  # nn.Parameter -> torch._utils._rebuild_parameter
reference(params, f"{out}/params_ref.safetensors")
torch.save(params, f"{out}/params.pth")
json.dump(list(params.keys()), open(f"{out}/params_keys.json", "w"))

f8 = torch.randn(3, 4).to(torch.float8_e4m3fn).t()  # _rebuild_tensor_v3 + UntypedStorage
torch.save({"f8": f8}, f"{out}/f8.pth")
save_file({"f8": f8.contiguous().view(torch.uint8)}, f"{out}/f8_ref.safetensors")

torch.save({"u16": torch.zeros(3, dtype=torch.uint16)}, f"{out}/uint16.pth")
torch.save({"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)}, f"{out}/quantized.pth")
torch.save({"epoch": 3, "lr": 0.1}, f"{out}/no_tensors.pth")
torch.save([torch.ones(2)], f"{out}/list.pth")
torch.save(sd, f"{out}/legacy.pth", _use_new_zipfile_serialization=False)

def rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)

# A big-endian file, as written on a big-endian machine (all float32 storages).
be = {"w": torch.randn(3, 4).t(), "v": torch.arange(5.0)}
torch.save(be, f"{out}/le.pth")
reference(be, f"{out}/be_ref.safetensors")
def to_big(name, data):
    if name.endswith("/byteorder"):
        return b"big"
    if "/data/" in name:
        return np.frombuffer(data, dtype="<f4").astype(">f4").tobytes()
    return data
rewrite(f"{out}/le.pth", f"{out}/be.pth", to_big)

rewrite(f"{out}/plain.pth", f"{out}/pkl_truncated.pth",
        lambda n, d: d[: len(d) // 2] if n.endswith("/data.pkl") else d)
rewrite(f"{out}/plain.pth", f"{out}/storage_short.pth",
        lambda n, d: d[: len(d) // 2] if n.endswith("/data/0") else d)
rewrite(f"{out}/plain.pth", f"{out}/storage_missing.pth",
        lambda n, d: None if n.endswith("/data/0") else d)
rewrite(f"{out}/plain.pth", f"{out}/byteorder_bad.pth",
        lambda n, d: b"middle" if n.endswith("/byteorder") else d)
print("ok")
"#;

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Writes all fixtures once per test binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("pth-fixtures-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir");
        let py = python();
        assert!(
            py.exists(),
            "{} not found: run scripts/setup.sh to create the venv with torch",
            py.display()
        );
        let out = Command::new(&py)
            .arg("-c")
            .arg(FIXTURES_PY)
            .arg(dir.path())
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "fixture script failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

fn keys(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reference(file: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(file))
        .unwrap()
        .into_iter()
        .collect()
}

/// Same keys in the same order, and every tensor equal (dtype, shape, values) to the
/// python-written reference.
fn assert_matches(got: &[(String, Tensor)], ref_file: &str, keys_file: Option<&str>) {
    let reference = reference(ref_file);
    let got_keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    if let Some(keys_file) = keys_file {
        assert_eq!(got_keys, keys(keys_file), "keys or their order differ");
    }
    assert_eq!(got.len(), reference.len(), "tensor count: {got_keys:?}");
    for (k, t) in got {
        let r = reference
            .get(k)
            .unwrap_or_else(|| panic!("unexpected key {k}"));
        assert_eq!(t.device(), tch::Device::Cpu, "{k}");
        assert_eq!(t.kind(), r.kind(), "dtype of {k}");
        assert_eq!(t.size(), r.size(), "shape of {k}");
        assert!(t.is_contiguous(), "{k} is not contiguous");
        assert!(t.equal(r), "values of {k} differ:\n{t}\nvs\n{r}");
    }
}

fn load(file: &str) -> Result<Vec<(String, Tensor)>, PthError> {
    load_state_dict(&fixtures().join(file))
}

#[test]
fn plain_state_dict_ordered_dict() {
    let sd = load("plain.pth").unwrap();
    assert_matches(&sd, "ref.safetensors", Some("keys.json"));
    let get = |k: &str| &sd.iter().find(|(n, _)| n == k).unwrap().1;
    assert_eq!(get("bn.num_batches_tracked").kind(), Kind::Int64);
    assert_eq!(get("bn.num_batches_tracked").int64_value(&[]), 1);
    assert_eq!(get("h16").kind(), Kind::Half);
    assert_eq!(get("transposed").size(), vec![6, 4]);
    assert_eq!(
        Vec::<f32>::try_from(get("strided")).unwrap(),
        vec![3.0, 6.0, 9.0, 12.0, 15.0]
    );
    assert!(get("fc.weight").equal(get("head.weight")));
}

#[test]
fn plain_dict_protocol_4_and_nested_checkpoints() {
    for file in ["plaindict.pth", "proto4.pth", "nested.pth", "training.pth"] {
        let sd = load(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_matches(&sd, "ref.safetensors", Some("keys.json"));
    }
}

#[test]
fn parameters_via_rebuild_parameter() {
    let sd = load("params.pth").unwrap();
    assert_matches(&sd, "params_ref.safetensors", Some("params_keys.json"));
}

#[test]
fn float8_via_rebuild_tensor_v3() {
    let sd = load("f8.pth").unwrap();
    assert_eq!(sd.len(), 1);
    assert_eq!(sd[0].1.kind(), Kind::Float8e4m3fn);
    assert_eq!(sd[0].1.size(), vec![4, 3]);
    let as_bytes = vec![("f8".to_string(), sd[0].1.view_dtype(Kind::Uint8))];
    assert_matches(&as_bytes, "f8_ref.safetensors", None);
}

#[test]
fn big_endian_storages_are_swapped() {
    let le = load("le.pth").unwrap();
    assert_matches(&le, "be_ref.safetensors", None);
    let be = load("be.pth").unwrap();
    assert_matches(&be, "be_ref.safetensors", None);
}

fn err_text(file: &str) -> String {
    match load(file) {
        Ok(sd) => panic!("{file} loaded {} tensors, expected an error", sd.len()),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(&fixtures().join(file).display().to_string()),
                "error does not name the file: {text}"
            );
            text
        }
    }
}

#[test]
fn legacy_file_asks_for_resave() {
    let text = err_text("legacy.pth");
    assert!(matches!(load("legacy.pth"), Err(PthError::Legacy { .. })));
    assert!(text.contains(RESAVE_COMMAND), "{text}");
    assert!(text.contains(
        r#"python -c "import torch; sd=torch.load('in.pth', map_location='cpu'); torch.save(sd, 'out.pth')""#
    ));
}

#[test]
fn missing_file_is_named() {
    let path = fixtures().join("does-not-exist.pth");
    let err = load_state_dict(&path).unwrap_err();
    assert!(matches!(err, PthError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist.pth"), "{err}");
}

#[test]
fn unsupported_or_absent_tensors_are_errors() {
    for (file, needle) in [
        ("uint16.pth", "uint16"),
        ("quantized.pth", "_rebuild_qtensor"),
        ("no_tensors.pth", "no tensors"),
        ("list.pth", "not a dict"),
    ] {
        let text = err_text(file);
        assert!(text.contains(needle), "{file}: {text}");
    }
}

#[test]
fn damaged_archives_are_errors() {
    for (file, needle) in [
        ("pkl_truncated.pth", "unexpected end of data"),
        ("storage_short.pth", "data/0"),
        ("storage_missing.pth", "data/0"),
        ("byteorder_bad.pth", "middle"),
    ] {
        let text = err_text(file);
        assert!(text.contains(needle), "{file}: {text}");
    }
}

#[test]
fn truncated_and_corrupted_files_never_panic() {
    let bytes = std::fs::read(fixtures().join("plain.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pth");
    let mut cuts: Vec<usize> = (0..bytes.len()).step_by(97).collect();
    cuts.extend([
        0,
        1,
        3,
        4,
        30,
        bytes.len() / 2,
        bytes.len() - 22,
        bytes.len() - 1,
    ]);
    for cut in cuts {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_state_dict(&path).expect_err("truncated file loaded");
        assert!(err.to_string().contains("cut.pth"), "{err}");
    }
    // Flip bytes all over the file: any outcome but a panic is fine (the zip CRC
    // catches most changes).
    for i in (0..bytes.len()).step_by(13) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        std::fs::write(&path, &b).unwrap();
        let _ = load_state_dict(&path);
    }
}
