//! `lse_trainer::pth::load_state_dict` against checkpoints written by the real PyTorch
//! of the project's venv (`tests/py/pth_fixtures.py`), in both `torch.save` formats:
//! every tensor is compared with the same tensor written through
//! `safetensors.torch.save_file` and read back with tch's independent safetensors
//! reader, and imported networks are compared with PyTorch's forward pass.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use lse_test_support::{check_ok, python};
use lse_trainer::checkpoint;
use lse_trainer::fcn8s::{Fcn8s, Fcn8sConfig, InitScheme};
use lse_trainer::pth::{PthError, load_state_dict};
use lse_trainer::seeding::with_seed;
use tch::{Device, Kind, Tensor, nn};

/// Both formats of each fixture.
const FORMATS: [&str; 2] = ["zip", "legacy"];

/// Writes all fixtures once per test binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("pth-fixtures-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let py = python();
        check_ok(
            Command::new(&py)
                .arg(root.join("tests/py/pth_fixtures.py"))
                .arg(dir.path()),
        );
        dir
    })
    .path()
}

fn file(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn load(name: &str) -> Result<Vec<(String, Tensor)>, PthError> {
    load_state_dict(&file(name))
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(file(&format!("{name}.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

/// Same keys in the same order (when the fixture recorded them), and every tensor
/// equal in dtype, shape and values to the python-written reference.
fn assert_matches(got: &[(String, Tensor)], reference_name: &str) {
    let reference = reference(reference_name);
    let got_keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    if let Ok(text) = std::fs::read_to_string(file(&format!("{reference_name}.keys.json"))) {
        let keys: Vec<String> = serde_json::from_str(&text).unwrap();
        assert_eq!(got_keys, keys, "keys or their order differ");
    }
    assert_eq!(got.len(), reference.len(), "tensor count: {got_keys:?}");
    for (k, t) in got {
        let r = reference
            .get(k)
            .unwrap_or_else(|| panic!("unexpected key {k}"));
        assert_eq!(t.device(), Device::Cpu, "{k}");
        assert_eq!(t.kind(), r.kind(), "dtype of {k}");
        assert_eq!(t.size(), r.size(), "shape of {k}");
        assert!(t.is_contiguous(), "{k} is not contiguous");
        assert!(t.equal(r), "values of {k} differ:\n{t}\nvs\n{r}");
    }
}

fn err_text(name: &str) -> String {
    match load(name) {
        Ok(sd) => panic!("{name} loaded {} tensors, expected an error", sd.len()),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(&file(name).display().to_string()),
                "error does not name the file: {text}"
            );
            text
        }
    }
}

#[test]
fn dtypes_views_and_tied_weights_in_both_formats() {
    for f in FORMATS {
        for name in [format!("dtypes.{f}.pth"), format!("dtypes_dict.{f}.pth")] {
            let sd = load(&name).unwrap_or_else(|e| panic!("{e}"));
            assert_matches(&sd, "dtypes");
            let get = |k: &str| &sd.iter().find(|(n, _)| n == k).unwrap().1;
            assert_eq!(get("bn.num_batches_tracked").int64_value(&[]), 1);
            assert_eq!(
                Vec::<f32>::try_from(get("strided")).unwrap(),
                [3.0, 6.0, 9.0, 12.0, 15.0]
            );
            assert!(get("fc.weight").equal(get("head.weight")));
        }
    }
}

#[test]
fn training_checkpoints_and_parameters() {
    for f in FORMATS {
        let sd = load(&format!("training.{f}.pth")).unwrap_or_else(|e| panic!("{e}"));
        assert_matches(&sd, "dtypes");
        let sd = load(&format!("params.{f}.pth")).unwrap_or_else(|e| panic!("{e}"));
        assert_matches(&sd, "params");
    }
}

#[test]
fn float8_and_big_endian_zip_files() {
    let sd = load("f8.zip.pth").unwrap();
    assert_eq!(sd[0].1.kind(), Kind::Float8e4m3fn);
    assert_eq!(sd[0].1.size(), [4, 3]);
    let as_bytes = vec![("f8".to_string(), sd[0].1.view_dtype(Kind::Uint8))];
    assert_matches(&as_bytes, "f8");
    assert_matches(&load("le.zip.pth").unwrap(), "be");
    assert_matches(&load("be.zip.pth").unwrap(), "be");
}

#[test]
fn what_is_not_a_state_dict_is_a_clear_error() {
    for f in FORMATS {
        for (name, needle) in [
            ("uint16", "uint16"),
            ("quantized", "_rebuild_qtensor"),
            ("no_tensors", "no tensors"),
            ("list", "not a dict"),
            ("ambiguous", "several nested dicts"),
            ("whole_module", "torch.nn.modules.linear.Linear"),
        ] {
            let text = err_text(&format!("{name}.{f}.pth"));
            assert!(text.contains(needle), "{name}.{f}: {text}");
        }
    }
    let missing = file("does-not-exist.pth");
    let err = load_state_dict(&missing).unwrap_err();
    assert!(matches!(err, PthError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist.pth"), "{err}");
    for (name, needle) in [
        ("storage_short.zip.pth", "data/0"),
        ("storage_missing.zip.pth", "data/0"),
        ("byteorder_bad.zip.pth", "middle"),
    ] {
        let text = err_text(name);
        assert!(text.contains(needle), "{name}: {text}");
    }
}

#[test]
fn truncated_and_corrupted_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pth");
    for f in FORMATS {
        let bytes = std::fs::read(file(&format!("dtypes.{f}.pth"))).unwrap();
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
            let err = load_state_dict(&path).expect_err("a truncated file loaded");
            assert!(err.to_string().contains("cut.pth"), "{err}");
        }
        // Flipped bytes all over the file: any outcome but a panic is fine.
        for i in (0..bytes.len()).step_by(13) {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            std::fs::write(&path, &b).unwrap();
            let _ = load_state_dict(&path);
        }
    }
}

fn config() -> Fcn8sConfig {
    Fcn8sConfig {
        width: 0.125,
        classes: 19,
    }
}

/// max |ours - PyTorch's logits| of `net` on the fixture's input, and the logits' scale.
fn forward_diff(net: &Fcn8s) -> (f64, f64) {
    let io: HashMap<String, Tensor> = reference("fcn8s_io");
    let ours = tch::no_grad(|| net.forward_t(&io["x"], false));
    let diff = (&ours - &io["y"]).abs().max().double_value(&[]);
    (diff, io["y"].abs().max().double_value(&[]))
}

#[test]
fn reference_fcn8s_files_import_and_match_pytorch() {
    let mut names: Vec<String> = ["fcn8s", "fcn8s_state_dict", "fcn8s_model"]
        .iter()
        .flat_map(|n| FORMATS.map(|f| format!("{n}.{f}.pth")))
        .collect();
    names.push("fcn8s_old.legacy.pth".into()); // `_rebuild_tensor`, PyTorch < 0.4
    for name in names {
        let mut vs = nn::VarStore::new(Device::Cpu);
        // Drawn under the global generator's lock, so that it never falls between
        // the seed and the draws of a seeded test running beside it.
        let net = with_seed(0, || Fcn8s::new(&vs.root(), config(), InitScheme::Scratch));
        checkpoint::import_fcn8s(&mut vs, &file(&name)).unwrap_or_else(|e| panic!("{e}"));
        let (diff, scale) = forward_diff(&net);
        eprintln!("{name}: max |ours - pytorch| = {diff:e} (logits up to {scale:.1})");
        assert!(scale > 1e-2, "the reference output is not trivially zero");
        assert!(diff <= 1e-4 * scale.max(1.0), "{name}: {diff}");
    }
}

#[test]
fn torchvision_vgg16_files_import_and_match_pytorch() {
    let scores = reference("fcn8s_scores");
    for f in FORMATS {
        let name = format!("vgg16.{f}.pth");
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = Fcn8s::new(&vs.root(), config(), InitScheme::Reference);
        checkpoint::import_vgg16(&mut vs, &net.spec, &file(&name))
            .unwrap_or_else(|e| panic!("{e}"));
        // The score layers are not part of VGG16: take PyTorch's, then the whole
        // forward pass must agree.
        for (k, v) in vs.variables() {
            if let Some(t) = scores.get(&k) {
                let mut v = v.shallow_clone();
                tch::no_grad(|| v.copy_(t));
            }
        }
        let (diff, scale) = forward_diff(&net);
        eprintln!("{name}: max |ours - pytorch| = {diff:e} (logits up to {scale:.1})");
        assert!(scale > 1e-2, "the reference output is not trivially zero");
        assert!(diff <= 1e-4 * scale.max(1.0), "{name}: {diff}");
    }
}
