//! `lse label --confidence`: confidence and entropy maps beside the labels, checked
//! against the model's logits computed independently (onnxruntime in Python) on an
//! image at the model's training size, where nothing is resized.

use crate::common;

use std::path::Path;

use common::*;

const CHECK: &str = r#"
import sys
import numpy as np
import onnxruntime as ort
from PIL import Image

model, image, conf_png, ent_png = sys.argv[1:5]
x = np.asarray(Image.open(image).convert("RGB"), np.float32).transpose(2, 0, 1)[None]
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
scores = s.run(["scores"], {"image": x})[0][0].astype(np.float64)
p = np.exp(scores - scores.max(0))
p /= p.sum(0)
conf = np.round(p.max(0) * 255)
ent = np.round(-(p * np.log(np.where(p > 0, p, 1))).sum(0) / np.log(p.shape[0]) * 255)
got_c = np.asarray(Image.open(conf_png)).astype(np.int32)
got_e = np.asarray(Image.open(ent_png)).astype(np.int32)
assert got_c.shape == conf.shape and got_e.shape == ent.shape, (got_c.shape, conf.shape)
dc, de = np.abs(got_c - conf).max(), np.abs(got_e - ent).max()
assert dc <= 1 and de <= 1, f"confidence off by {dc}, entropy by {de}"
assert len(np.unique(got_c)) > 1, "a constant confidence map tests little"
print("ok", dc, de)
"#;

#[test]
fn confidence_and_entropy_maps_match_the_logits() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default/model.onnx");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in/city");
    std::fs::create_dir_all(&input).unwrap();
    // The model's training size is 256x128: this image is not resized.
    let img = image::RgbImage::from_fn(256, 128, |x, y| {
        image::Rgb([(x % 256) as u8, (y * 2) as u8, ((x / 4 + y) % 256) as u8])
    });
    img.save(input.join("a_leftImg8bit.png")).unwrap();
    let out = tmp.path().join("pred");
    let label = |extra: &[&str]| {
        ok(lse()
            .arg("label")
            .arg(&model)
            .arg(tmp.path().join("in"))
            .arg("--out")
            .arg(&out)
            .args(["--provider", "cpu", "--confidence"])
            .args(extra));
    };
    label(&[]);
    let conf = tmp.path().join("pred_confidence/city/a_leftImg8bit.png");
    let ent = tmp.path().join("pred_entropy/city/a_leftImg8bit.png");
    ok(python()
        .args(["-c", CHECK])
        .arg(&model)
        .arg(input.join("a_leftImg8bit.png"))
        .arg(&conf)
        .arg(&ent));
    // A missing map makes the image count as not done: a rerun writes it again.
    std::fs::remove_file(&ent).unwrap();
    label(&[]);
    assert!(ent.is_file(), "the rerun wrote the missing entropy map");
}
