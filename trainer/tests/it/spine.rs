//! The spine: FCN8s in libtorch, our ONNX writer, ONNX Runtime parity, weight
//! import against PyTorch, the exported file against the `onnx` checker and python
//! onnxruntime, and clear errors on bad input. Python runs from the project's .venv
//! (scripts/setup.sh) as the independent reference.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lse_runtime::contract::ModelMeta;
use lse_runtime::engine::{EngineOptions, Provider};
use lse_trainer::fcn8s::{Fcn8s, Fcn8sConfig, InitScheme};
use lse_trainer::{onnx, seeding};
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

/// A workspace binary: the `lse-train` built for these tests, the others beside it.
fn bin(name: &str) -> PathBuf {
    lse_test_support::beside(Path::new(env!("CARGO_BIN_EXE_lse-train")), name)
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
    let vs = nn::VarStore::new(Device::Cpu);
    let config = Fcn8sConfig { width, classes: 19 };
    let net = seeding::with_seed(42, || Fcn8s::new(&vs.root(), config, InitScheme::Scratch));
    let path = dir.path().join("m.onnx");
    onnx::export(&net, &vs, &ModelMeta::cityscapes(width, [64, 32]), &path).unwrap();
    let opts = EngineOptions {
        provider: Provider::Cpu,
        ..Default::default()
    };
    for shape in shapes {
        let rgb =
            seeding::with_seed(42, || Tensor::rand(*shape, (Kind::Float, Device::Cpu))) * 255.0;
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
    // Imports `backbone` into a fresh checkpoint and compares it with torchvision's.
    let import_and_check = |backbone: &str| {
        let o = run(
            &bin("lse-train"),
            &[
                "init",
                "--width",
                "0.125",
                "--init",
                "reference",
                "--backbone",
                backbone,
                "--out",
                ckpt.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        reference_py(&["check-vgg16", &vgg, ckpt.to_str().unwrap(), "0.125"]);
    };
    import_and_check(&vgg);
    // The same weights in the legacy torch.save format, as torchvision publishes
    // vgg16-397923af.pth.
    let legacy = format!("{d}/vgg16-legacy.pth");
    let resave = "import sys, torch; torch.save(torch.load(sys.argv[1]), sys.argv[2], \
                  _use_new_zipfile_serialization=False)";
    let o = Command::new(python())
        .args(["-c", resave, &vgg, &legacy])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    import_and_check(&legacy);
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
    let init_from = |weights: &Path| {
        run(
            &train,
            &[
                "init",
                "--width",
                "0.125",
                "--weights",
                &s(weights),
                "--out",
                &out,
            ],
        )
    };
    let o = init_from(&d.join("missing.pth"));
    assert_clear_error(&o, "conv3_2.bias");
    let o = init_from(&d.join("misshaped.pth"));
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
    // Drawn under the global generator's lock: the seeded tests beside it draw the same
    // numbers whatever this one does.
    let _net = seeding::with_seed(0, || Fcn8s::new(&vs.root(), cfg, InitScheme::Scratch));
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

/// A randomly initialised 1/8-width network.
fn small_net() -> (nn::VarStore, Fcn8s) {
    let vs = nn::VarStore::new(Device::Cpu);
    let config = Fcn8sConfig {
        width: 0.125,
        classes: 19,
    };
    let net = seeding::with_seed(11, || Fcn8s::new(&vs.root(), config, InitScheme::Scratch));
    (vs, net)
}

/// Multiplies the three score layers (weights and biases) by `factor`, and with them
/// every logit.
fn scale_scores(vs: &nn::VarStore, factor: f64) {
    for (name, var) in vs.variables() {
        if name.starts_with("score_") {
            let mut v = var.shallow_clone();
            tch::no_grad(|| {
                let _ = v.f_mul_scalar_(factor).unwrap();
            });
        }
    }
}

fn probe() -> Tensor {
    lse_trainer::export::parity_probe()
}

fn cpu_engine() -> EngineOptions {
    EngineOptions {
        provider: Provider::Cpu,
        ..Default::default()
    }
}

/// The largest |logit| of `net` on `rgb`.
fn max_logit(net: &Fcn8s, rgb: &Tensor) -> f64 {
    let x = lse_trainer::fcn8s::preprocess_rgb(rgb);
    tch::no_grad(|| net.forward_t(&x, false))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn parity_tolerance_scales_with_the_logits() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = probe();
    let (vs, net) = small_net();
    for target in [1.0, 1e2, 1e4] {
        scale_scores(&vs, target / max_logit(&net, &rgb));
        let path = dir.path().join(format!("m{target}.onnx"));
        onnx::export(&net, &vs, &ModelMeta::cityscapes(0.125, [64, 32]), &path).unwrap();
        let p = onnx::check_parity(&net, &path, &rgb, &cpu_engine(), Default::default())
            .unwrap_or_else(|e| panic!("logits ~{target}: {e}"));
        eprintln!("logits ~{target}: {p:?}");
        assert!(
            (p.max_abs_logit as f64 - target).abs() <= 1e-3 * target,
            "{p:?}"
        );
        assert!(p.argmax_agreement > 99.9, "{p:?}");
    }
}

/// Rewrites one initializer of an exported model.
fn with_initializer(
    model: &onnx_protobuf::ModelProto,
    name: &str,
    raw: Vec<u8>,
) -> onnx_protobuf::ModelProto {
    let mut m = model.clone();
    let graph = m.graph.as_mut().unwrap();
    let init = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no initializer {name}"));
    init.raw_data = raw;
    m
}

#[test]
fn parity_check_rejects_a_wrong_graph() {
    use onnx_protobuf::Message;
    let dir = tempfile::tempdir().unwrap();
    let rgb = probe();
    // Logits of order 1e3: the relative tolerance allows differences of order 1e-2.
    let (vs, net) = small_net();
    scale_scores(&vs, 1e3 / max_logit(&net, &rgb));
    let good = onnx::build_model(&net, &vs, &ModelMeta::cityscapes(0.125, [64, 32])).unwrap();
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let wrong = [
        // RGB fed as BGR: a gross error.
        (
            "channel order",
            with_initializer(&good, "preprocess.bgr_order", i64s(&[0, 1, 2])),
        ),
        // The mean rounded to whole numbers: a subtle one.
        (
            "rounded mean",
            with_initializer(&good, "preprocess.mean_bgr", f32s(&[104.0, 117.0, 123.0])),
        ),
    ];
    for (what, model) in wrong {
        let path = dir.path().join("wrong.onnx");
        std::fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
        let err = onnx::check_parity(&net, &path, &rgb, &cpu_engine(), Default::default())
            .expect_err(what);
        eprintln!("{what}: {err}");
        assert!(
            matches!(err, onnx::ExportError::Parity { .. }),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("max |diff|"), "{err}");
    }
}

/// Runs a command with standard error going to a file and returns the file's bytes.
fn stderr_to_file(cmd: &mut Command, file: &Path) -> (std::process::ExitStatus, Vec<u8>) {
    let f = std::fs::File::create(file).unwrap();
    let status = cmd
        .stderr(std::process::Stdio::from(f))
        .status()
        .expect("binary runs");
    (status, std::fs::read(file).unwrap())
}

fn assert_plain_log(what: &str, log: &[u8], needle: &str) {
    let text = String::from_utf8_lossy(log);
    assert!(text.contains(needle), "{what}: no `{needle}` in {text}");
    assert!(
        !log.contains(&0x1b),
        "{what}: ANSI escape in the log: {text:?}"
    );
}

#[test]
fn logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (ckpt, model, log) = (d.join("c.safetensors"), d.join("m.onnx"), d.join("log"));
    let o = run(
        &bin("lse-train"),
        &["init", "--width", "0.125", "--out", &s(&ckpt)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // NO_COLOR unset: the terminal test alone must turn colours off.
    let (status, text) = stderr_to_file(
        Command::new(bin("lse-train"))
            .args(["export", &s(&ckpt), "--out", &s(&model)])
            .args(["--train-size", "64x32"])
            .env_remove("NO_COLOR"),
        &log,
    );
    assert!(status.success(), "{}", String::from_utf8_lossy(&text));
    assert_plain_log("lse-train export", &text, "parity check passed");

    let (status, text) = stderr_to_file(
        Command::new(bin("lse"))
            .args(["info", &s(&model)])
            .env_remove("NO_COLOR"),
        &log,
    );
    assert!(status.success(), "{}", String::from_utf8_lossy(&text));
    assert_plain_log("lse info", &text, "execution provider");

    // The server logs `serving` before it prints `listening on`; then it is stopped.
    use std::io::BufRead;
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(bin("lse-serve"))
        .args(["--model", &s(&model), "--addr", "127.0.0.1:0"])
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(f))
        .spawn()
        .expect("lse-serve starts");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.any(|l| l.is_ok_and(|l| l.starts_with("listening on")));
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read(&log).unwrap();
    assert!(
        listening,
        "lse-serve did not start: {}",
        String::from_utf8_lossy(&text)
    );
    assert_plain_log("lse-serve", &text, "serving");
}
