//! The spine: FCN8s in libtorch, our ONNX writer, ONNX Runtime parity, weight
//! import against PyTorch, the exported file against the `onnx` checker and python
//! onnxruntime, and clear errors on bad input. Python runs from the project's .venv
//! (scripts/setup.sh) as the independent reference.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lse_runtime::contract::ModelMeta;
use lse_runtime::engine::{EngineOptions, Provider};
use lse_trainer::fcn8s::{Fcn8s, Fcn8sConfig, InitScheme};
use lse_trainer::onnx;
use tch::{Device, Kind, Tensor, nn};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} missing: run scripts/setup.sh first",
        p.display()
    );
    p
}

fn reference_py(args: &[&str]) -> Output {
    let out = Command::new(python())
        .arg(root().join("trainer/tests/py/fcn8s_reference.py"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "fcn8s_reference.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn bin(name: &str) -> PathBuf {
    // The test binary lives in target/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} missing: build the workspace first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

fn run(cmd: &Path, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().expect("binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless the command failed with one clear message that contains `needle`
/// and did not panic.
fn assert_clear_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {e}"
    );
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
}

fn parity_case(width: f64, shapes: &[[i64; 4]]) {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(42);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = Fcn8sConfig { width, classes: 19 };
    let net = Fcn8s::new(&vs.root(), config, InitScheme::Scratch);
    let path = dir.path().join("m.onnx");
    onnx::export(&net, &vs, &ModelMeta::cityscapes(width, [64, 32]), &path).unwrap();
    let opts = EngineOptions {
        provider: Provider::Cpu,
        ..Default::default()
    };
    for shape in shapes {
        let rgb = Tensor::rand(*shape, (Kind::Float, Device::Cpu)) * 255.0;
        let p = onnx::parity(&net, &path, &rgb, &opts).unwrap();
        eprintln!("width {width} {shape:?}: {p:?}");
        assert!(p.max_abs_diff <= 1e-4, "width {width} {shape:?}: {p:?}");
        assert!(
            p.argmax_agreement >= 99.99,
            "width {width} {shape:?}: {p:?}"
        );
    }
}

#[test]
fn onnx_matches_libtorch_small() {
    parity_case(0.125, &[[1, 3, 37, 53], [2, 3, 64, 96]]);
}

#[test]
fn onnx_matches_libtorch_full_width() {
    parity_case(1.0, &[[1, 3, 37, 53], [2, 3, 64, 96]]);
}

#[test]
fn import_matches_pytorch_forward() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    reference_py(&["fcn8s", d, "0.125"]);
    // Import through the CLI (plain torch.save(model.state_dict()) .pth).
    let ckpt = dir.path().join("imported.safetensors");
    let o = run(
        &bin("lse-train"),
        &[
            "init",
            "--width",
            "0.125",
            "--weights",
            &format!("{d}/fcn8s.pth"),
            "--out",
            ckpt.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut vs = nn::VarStore::new(Device::Cpu);
    let config = Fcn8sConfig {
        width: 0.125,
        classes: 19,
    };
    let net = Fcn8s::new(&vs.root(), config, InitScheme::Reference);
    lse_trainer::checkpoint::load_network(&mut vs, &ckpt, config).unwrap();
    let io = Tensor::read_safetensors(dir.path().join("io.safetensors")).unwrap();
    let get = |n: &str| io.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
    let (x, y) = (get("x"), get("y"));
    let ours = tch::no_grad(|| net.forward_t(&x, false));
    let diff = (&ours - &y).abs().max().double_value(&[]);
    let scale = y.abs().max().double_value(&[]);
    eprintln!("max |ours - pytorch| = {diff:e} (logits up to {scale})");
    assert!(scale > 1e-2, "the reference output is not trivially zero");
    assert!(diff <= 1e-4, "{diff}");
}

#[test]
fn import_vgg16_backbone_maps_like_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    reference_py(&["vgg16", d, "0.125"]);
    let ckpt = dir.path().join("vgg.safetensors");
    let vgg = format!("{d}/vgg16.pth");
    let o = run(
        &bin("lse-train"),
        &[
            "init",
            "--width",
            "0.125",
            "--init",
            "reference",
            "--backbone",
            &vgg,
            "--out",
            ckpt.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    reference_py(&["check-vgg16", &vgg, ckpt.to_str().unwrap(), "0.125"]);
}

#[test]
fn exported_model_passes_onnx_checker_and_python_ort_agrees_with_lse_segment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = d.join("c.safetensors");
    let model = d.join("m.onnx");
    let o = run(
        &bin("lse-train"),
        &[
            "init",
            "--width",
            "0.125",
            "--seed",
            "3",
            "--out",
            ckpt.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        &bin("lse-train"),
        &[
            "export",
            ckpt.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--train-size",
            "80x48",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    reference_py(&["onnx-check", model.to_str().unwrap()]);
    // An image at the training size: `lse segment`'s labelIds equal the model's own
    // arg-max, which python onnxruntime computes independently.
    let img = image::RgbImage::from_fn(80, 48, |x, y| {
        image::Rgb([
            (x * 3 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x * y) % 256) as u8,
        ])
    });
    let img_path = d.join("probe.png");
    img.save(&img_path).unwrap();
    let seg = d.join("seg");
    let o = run(
        &bin("lse"),
        &[
            "segment",
            model.to_str().unwrap(),
            img_path.to_str().unwrap(),
            "--out",
            seg.to_str().unwrap(),
            "--color",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(seg.join("probe_color.png").is_file());
    let py_ids = d.join("py.png");
    reference_py(&[
        "ort-ids",
        model.to_str().unwrap(),
        img_path.to_str().unwrap(),
        py_ids.to_str().unwrap(),
    ]);
    let ours = image::open(seg.join("probe_labelIds.png"))
        .unwrap()
        .to_luma8();
    let theirs = image::open(&py_ids).unwrap().to_luma8();
    assert_eq!(ours.dimensions(), theirs.dimensions());
    assert_eq!(ours.as_raw(), theirs.as_raw());
    // `lse info` reads the contract back.
    let o = run(&bin("lse"), &["info", model.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["metadata"]["train_size"], serde_json::json!([80, 48]));
    assert_eq!(info["metadata"]["class_names"][13], "car");
    // Images of another size come back at their own size.
    let big = image::RgbImage::from_pixel(123, 77, image::Rgb([90, 90, 90]));
    let big_path = d.join("big.jpg");
    big.save(&big_path).unwrap();
    let o = run(
        &bin("lse"),
        &[
            "segment",
            model.to_str().unwrap(),
            big_path.to_str().unwrap(),
            "--out",
            seg.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        image::open(seg.join("big_labelIds.png"))
            .unwrap()
            .to_luma8()
            .dimensions(),
        (123, 77)
    );
}

#[test]
fn bad_input_gives_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = bin("lse-train");
    let lse = bin("lse");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Missing and corrupt checkpoints.
    let o = run(
        &train,
        &[
            "export",
            &s(&d.join("nope.safetensors")),
            "--out",
            &s(&d.join("m.onnx")),
        ],
    );
    assert_clear_error(&o, "nope.safetensors does not exist");
    std::fs::write(d.join("corrupt.safetensors"), b"this is not a checkpoint").unwrap();
    let o = run(
        &train,
        &[
            "export",
            &s(&d.join("corrupt.safetensors")),
            "--out",
            &s(&d.join("m.onnx")),
        ],
    );
    assert_clear_error(&o, "corrupt.safetensors");
    assert!(!d.join("m.onnx").exists(), "no output from a failed export");

    // A state dict with a missing and with a mis-shaped tensor: named.
    let py = python();
    let script = r#"
import sys, torch
sys.path.insert(0, sys.argv[1])
from fcn8s_reference import FCN8s
sd = FCN8s(19, 0.125).state_dict()
missing = dict(sd); del missing["conv3_2.bias"]
torch.save(missing, sys.argv[2] + "/missing.pth")
bad = dict(sd); bad["fc7.weight"] = torch.zeros(3, 3, 1, 1)
torch.save(bad, sys.argv[2] + "/misshaped.pth")
"#;
    let o = Command::new(&py)
        .args(["-c", script, &s(&root().join("trainer/tests/py")), &s(d)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = s(&d.join("x.safetensors"));
    let o = run(
        &train,
        &[
            "init",
            "--width",
            "0.125",
            "--weights",
            &s(&d.join("missing.pth")),
            "--out",
            &out,
        ],
    );
    assert_clear_error(&o, "conv3_2.bias");
    let o = run(
        &train,
        &[
            "init",
            "--width",
            "0.125",
            "--weights",
            &s(&d.join("misshaped.pth")),
            "--out",
            &out,
        ],
    );
    assert_clear_error(&o, "fc7.weight");
    assert_clear_error(&o, "[3, 3, 1, 1]");
    assert!(!d.join("x.safetensors").exists());

    // A checkpoint of another width is refused by name.
    let c = d.join("c.safetensors");
    let o = run(&train, &["init", "--width", "0.125", "--out", &s(&c)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut vs = nn::VarStore::new(Device::Cpu);
    let cfg = Fcn8sConfig {
        width: 0.25,
        classes: 19,
    };
    let _net = Fcn8s::new(&vs.root(), cfg, InitScheme::Scratch);
    let err = lse_trainer::checkpoint::load_network(&mut vs, &c, cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("width-0.125") && err.contains("width 0.25"),
        "{err}"
    );

    // An ONNX file without our metadata.
    let foreign = d.join("foreign.onnx");
    reference_py(&["no-metadata", &s(&foreign)]);
    let o = run(&lse, &["info", &s(&foreign)]);
    assert_clear_error(&o, "no LSE metadata");

    // An unreadable image: reported with its name, non-zero exit.
    let m = d.join("m.onnx");
    let o = run(
        &train,
        &["export", &s(&c), "--out", &s(&m), "--train-size", "64x32"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(d.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let o = run(
        &lse,
        &[
            "segment",
            &s(&m),
            &s(&d.join("broken.png")),
            "--out",
            &s(&d.join("seg")),
        ],
    );
    assert_clear_error(&o, "broken.png");

    // No ONNX Runtime library.
    let o = run(
        &lse,
        &[
            "info",
            &s(&m),
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
        ],
    );
    assert_clear_error(&o, "ONNX Runtime library not found");
    assert_clear_error(&o, "scripts/setup.sh");
}
