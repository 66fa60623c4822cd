//! Post-processing of `lse_runtime::predict` against independent computations:
//!
//! - PyTorch (`tests/py/upsample_ref.py`: softmax, `F.interpolate(...,
//!   mode="bilinear", align_corners=True)`, arg-max), the reference evaluation's
//!   post-processing; the two may differ only where PyTorch's own top-2 margin is a
//!   float-rounding near-tie;
//! - the full computation (`upsample_argmax_full`: every channel interpolated at every
//!   pixel), which the shortcut of `upsample_argmax` must match bit for bit, on random
//!   logits and on the outputs of the default model (`models/default/model.onnx`) for
//!   synthetic street images.

use crate::common;

use std::path::Path;

use common::{ok, py_script, python};
use lse_runtime::engine::{Engine, EngineOptions, Provider};
use lse_runtime::predict::{self, upsample_argmax, upsample_argmax_counted, upsample_argmax_full};
use ndarray::{Array3, Array4, Axis};
use rand::{Rng, SeedableRng};

/// A near-tie in PyTorch's own upsampled probabilities: f32 rounding (PyTorch's
/// vectorised softmax, its kernel's operation order) may flip the arg-max there.
const NEAR_TIE: f32 = 1e-6;

/// PyTorch's arg-max and top-2 margin of the upsampled probabilities of `scores`.
fn torch_reference(scores: &Array3<f32>, ow: usize, oh: usize) -> (Vec<u8>, Vec<f32>) {
    let (c, h, w) = scores.dim();
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("scores.f32");
    let bytes: Vec<u8> = scores
        .as_standard_layout()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&input, bytes).unwrap();
    let prefix = d.path().join("out");
    ok(python().arg(py_script("upsample_ref.py")).arg(&input).args(
        [c, h, w, ow, oh]
            .iter()
            .map(ToString::to_string)
            .chain([prefix.to_string_lossy().into_owned()]),
    ));
    let ids = std::fs::read(prefix.with_extension("ids")).unwrap();
    let margin: Vec<f32> = std::fs::read(prefix.with_extension("margin"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!((ids.len(), margin.len()), (ow * oh, ow * oh));
    (ids, margin)
}

/// Asserts that `got` is PyTorch's arg-max except at PyTorch's near-ties; returns
/// (pixels that differ, near-ties).
fn assert_agrees_with_torch(
    scores: &Array3<f32>,
    got: &[u8],
    ow: usize,
    oh: usize,
) -> (usize, usize) {
    let (want, margin) = torch_reference(scores, ow, oh);
    let mut differ = 0;
    for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
        if g != e {
            differ += 1;
            assert!(
                margin[i] < NEAR_TIE,
                "pixel ({}, {}) of {ow}x{oh}: {g} vs PyTorch's {e}, whose margin is {}",
                i % ow,
                i / ow,
                margin[i]
            );
        }
    }
    (differ, margin.iter().filter(|&&m| m < NEAR_TIE).count())
}

/// Logits with class regions (smooth random fields per class) and noise.
fn random_scores(c: usize, h: usize, w: usize, seed: u64) -> Array3<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let waves: Vec<[f32; 4]> = (0..c)
        .map(|_| {
            [
                rng.random_range(0.05..0.4),
                rng.random_range(0.05..0.4),
                rng.random_range(0.0..6.3),
                rng.random_range(-1.0..1.0),
            ]
        })
        .collect();
    Array3::from_shape_fn((c, h, w), |(k, y, x)| {
        let [fy, fx, ph, b] = waves[k];
        3.0 * ((y as f32 * fy + ph).sin() + (x as f32 * fx - ph).cos()) + b
    }) + Array3::from_shape_fn((c, h, w), |_| rng.random_range(-0.3..0.3))
}

#[test]
fn upsampling_matches_pytorch_align_corners() {
    for (seed, (c, h, w, ow, oh)) in [
        (19, 16, 32, 64, 32),
        (19, 16, 32, 203, 97),
        (5, 12, 20, 20, 12),
        (7, 30, 40, 17, 11),
        (3, 1, 9, 33, 5),
    ]
    .into_iter()
    .enumerate()
    {
        let mut scores = random_scores(c, h, w, seed as u64);
        // Exact ties of two logits in a few pixels: the arg-max goes to the lower class.
        for x in (0..w).step_by(5) {
            scores[[2, h / 2, x]] = scores[[0, h / 2, x]] + 5.0;
            scores[[1, h / 2, x]] = scores[[2, h / 2, x]];
        }
        let got = upsample_argmax(scores.view(), ow as u32, oh as u32);
        let (differ, ties) = assert_agrees_with_torch(&scores, got.as_raw(), ow, oh);
        eprintln!(
            "{c} classes {w}x{h} -> {ow}x{oh}: {differ} pixels differ from PyTorch, {ties} near-ties"
        );
        assert!(differ <= ties);
    }
}

fn default_model() -> Option<Engine> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default/model.onnx");
    if !path.is_file() {
        eprintln!("{} missing: skipped", path.display());
        return None;
    }
    let opts = EngineOptions {
        provider: Provider::Cpu,
        threads: 1,
        ..EngineOptions::default()
    };
    Some(Engine::load(&path, &opts).expect("default model loads"))
}

/// Logits of the default model for synthetic target-domain street scenes.
fn model_scores(engine: &mut Engine, images: usize) -> Vec<Array3<f32>> {
    let settings = lse_runtime::synth::SynthSettings::default();
    let size = engine.meta().train_size;
    (0..images)
        .map(|i| {
            let scene =
                lse_runtime::synth::generate(&settings, lse_runtime::synth::Part::TargetVal, i);
            let input = predict::prepare(&scene.image, size).unwrap();
            let batch =
                Array4::from_shape_vec((1, 3, size[1] as usize, size[0] as usize), input).unwrap();
            engine
                .run(batch.view())
                .unwrap()
                .scores
                .index_axis_move(Axis(0), 0)
        })
        .collect()
}

#[test]
fn shortcut_is_bit_identical_on_model_outputs() {
    let Some(mut engine) = default_model() else {
        return;
    };
    let [tw, th] = engine.meta().train_size;
    for (i, scores) in model_scores(&mut engine, 3).iter().enumerate() {
        for (ow, oh) in [
            (2048, 1024),
            (16 * tw + 3, 16 * th - 5),
            (tw, th),
            (tw * 3 / 4, th / 2),
        ] {
            let full = upsample_argmax_full(scores.view(), ow, oh);
            let (fast, computed) = upsample_argmax_counted(scores.view(), ow, oh);
            assert_eq!(fast, full, "image {i}, {ow}x{oh}");
            eprintln!(
                "image {i} -> {ow}x{oh}: {:.2}% of the pixels computed in full",
                100.0 * computed as f64 / (ow * oh) as f64
            );
        }
    }
}

#[test]
fn model_outputs_match_pytorch() {
    let Some(mut engine) = default_model() else {
        return;
    };
    let scores = model_scores(&mut engine, 1).remove(0);
    let (ow, oh) = (1000, 500);
    let got = upsample_argmax(scores.view(), ow, oh);
    let (differ, ties) = assert_agrees_with_torch(&scores, got.as_raw(), ow as usize, oh as usize);
    eprintln!("default model -> {ow}x{oh}: {differ} pixels differ from PyTorch, {ties} near-ties");
}
