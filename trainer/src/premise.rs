//! The paper's premise, measured: is a model less certain, and less accurate, on
//! up-scaled windows of target images than on the images themselves?
//!
//! LSE teaches the network to predict on a zoomed-in window what it predicted on the
//! whole image. That teaches something only where the two differ: where zooming in
//! raises the entropy (and, with labels, lowers the accuracy). [`measure`] runs a
//! model over a split and reports, per window scale, the mean normalised entropy
//! `H / ln C` of full images and of their windows, how often the window's arg-max
//! agrees with the pseudo-label LSE would train it on (the full prediction's crop,
//! upsampled as in [`lse::generate`]), and with ground truth, the accuracy of both and
//! how much of the source model's error is confident (max probability > 0.9) and
//! concentrated in a few confusions. It is the measurement the regime search of
//! docs/synthetic-domains.md is made with; it never trains.

use std::collections::BTreeMap;

use lse_runtime::datasets::Dataset;
use lse_runtime::labels::{self, IGNORE};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::data;
use crate::diagnostics::{Mean, mean_normalized_entropy};
use crate::lse;
use crate::train::Model;

/// A prediction counts as confident above this maximum probability.
pub const CONFIDENT: f64 = 0.9;

/// What is measured and on what.
#[derive(Debug, Clone)]
pub struct PremiseSettings {
    /// Prediction size `[width, height]`.
    pub size: [u32; 2],
    /// Window scales (fraction of the image side), as LSE's `window_scales`.
    pub scales: Vec<f64>,
    /// Windows per image and scale.
    pub patches: usize,
    /// Seed of the window positions.
    pub seed: u64,
    pub mean_bgr: [f64; 3],
}

/// One window scale's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub scale: f64,
    /// Mean `H / ln C` on the up-scaled windows.
    pub window_entropy: f64,
    /// `window_entropy / target_entropy`: above 1 where zooming in makes the model
    /// less certain (the premise).
    pub entropy_ratio: f64,
    /// Share of window pixels whose arg-max equals the LSE pseudo-label (unmasked).
    pub agreement_with_pseudo_labels: f64,
    /// Pixel accuracy of the prediction on the window (ground truth cropped and
    /// up-scaled by nearest neighbour), when labelled.
    pub window_accuracy: Option<f64>,
    /// Pixel accuracy of the pseudo-labels on the same pixels, when labelled.
    pub pseudo_label_accuracy: Option<f64>,
}

/// One confusion among the confident errors.
#[derive(Debug, Clone, Serialize)]
pub struct ConfidentConfusion {
    pub truth: String,
    pub predicted: String,
    /// Share of all erroneous labelled pixels.
    pub share_of_errors: f64,
}

/// The whole measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PremiseReport {
    pub images: usize,
    /// Mean `H / ln C` on full target images.
    pub target_entropy: f64,
    /// Mean `H / ln C` on the source images given, if any.
    pub source_entropy: Option<f64>,
    /// Pixel accuracy on full target images, when labelled.
    pub target_accuracy: Option<f64>,
    /// Share of erroneous pixels predicted with probability > [`CONFIDENT`].
    pub confident_error_share: Option<f64>,
    /// The largest confident confusions, by share of all errors.
    pub confident_confusions: Vec<ConfidentConfusion>,
    pub scales: Vec<ScaleReport>,
}

/// Pixel counts of the labelled comparisons.
#[derive(Debug, Default, Clone, Copy)]
struct Hits {
    correct: u64,
    labelled: u64,
}

impl Hits {
    fn add(&mut self, predicted: &Tensor, truth: &Tensor) {
        let valid = truth.ne(IGNORE as i64);
        self.labelled += valid.sum(Kind::Int64).int64_value(&[]) as u64;
        self.correct += predicted
            .eq_tensor(truth)
            .logical_and(&valid)
            .sum(Kind::Int64)
            .int64_value(&[]) as u64;
    }
    fn share(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }
}

#[derive(Debug, Default)]
struct ScaleAcc {
    entropy: Mean,
    agree: Hits,
    window: Hits,
    pseudo: Hits,
}

/// Errors of the full predictions: all, confident, and confident per confusion.
#[derive(Debug, Default)]
struct ErrorAcc {
    errors: u64,
    confident: u64,
    pairs: BTreeMap<(u8, u8), u64>,
}

impl ErrorAcc {
    fn add(&mut self, probs: &Tensor, truth: &Tensor) {
        let (conf, pred) = probs.max_dim(0, false);
        let wrong = pred.ne_tensor(truth).logical_and(&truth.ne(IGNORE as i64));
        self.errors += wrong.sum(Kind::Int64).int64_value(&[]) as u64;
        let sure = wrong.logical_and(&conf.gt(CONFIDENT));
        let picked = |t: &Tensor| -> Vec<i64> {
            Vec::try_from(t.masked_select(&sure).to_device(tch::Device::Cpu)).expect("int64 labels")
        };
        let (t, p) = (picked(truth), picked(&pred));
        self.confident += t.len() as u64;
        for (a, b) in t.into_iter().zip(p) {
            *self.pairs.entry((a as u8, b as u8)).or_default() += 1;
        }
    }

    fn top(&self, n: usize) -> Vec<ConfidentConfusion> {
        let mut all: Vec<_> = self.pairs.iter().collect();
        all.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        all.into_iter()
            .take(n)
            .map(|(&(t, p), &k)| ConfidentConfusion {
                truth: labels::train_name(t).to_string(),
                predicted: labels::train_name(p).to_string(),
                share_of_errors: k as f64 / self.errors.max(1) as f64,
            })
            .collect()
    }
}

/// Runs `model` over the first `limit` images of `target` (all when 0) and, if given,
/// the first 16 images of `source`.
pub fn measure(
    model: &Model,
    target: &Dataset,
    source: Option<&Dataset>,
    s: &PremiseSettings,
    limit: usize,
    mut tick: impl FnMut(),
) -> anyhow::Result<PremiseReport> {
    let n = if limit == 0 {
        target.len()
    } else {
        limit.min(target.len())
    };
    let mut rng = ChaCha8Rng::seed_from_u64(data::mix_seed(&[s.seed, 7]));
    let mut full = Mean::default();
    let (mut acc, mut errors) = (Hits::default(), ErrorAcc::default());
    let mut per_scale: Vec<ScaleAcc> = s.scales.iter().map(|_| ScaleAcc::default()).collect();
    for i in 0..n {
        let (img, label) = target.load_sample(i, s.size)?;
        let img = data::image_tensor(&img, s.mean_bgr).to_device(model.device);
        let probs = model.probs(&img);
        full.add(mean_normalized_entropy(&probs));
        let truth = label.map(|l| data::label_tensor(&l).to_device(model.device));
        if let Some(t) = &truth {
            acc.add(&probs.argmax(0, false), t);
            errors.add(&probs, t);
        }
        for (scale, out) in s.scales.iter().zip(per_scale.iter_mut()) {
            measure_windows(
                model,
                &img,
                &probs,
                truth.as_ref(),
                *scale,
                s.patches,
                &mut rng,
                out,
            );
        }
        tick();
    }
    let target_entropy = full.get().unwrap_or(f64::NAN);
    Ok(PremiseReport {
        images: n,
        target_entropy,
        source_entropy: source
            .map(|d| source_entropy(model, d, s.size, s.mean_bgr))
            .transpose()?
            .flatten(),
        target_accuracy: acc.share(),
        confident_error_share: (errors.errors > 0)
            .then(|| errors.confident as f64 / errors.errors as f64),
        confident_confusions: errors.top(5),
        scales: s
            .scales
            .iter()
            .zip(per_scale)
            .map(|(&scale, a)| {
                let window_entropy = a.entropy.get().unwrap_or(f64::NAN);
                ScaleReport {
                    scale,
                    window_entropy,
                    entropy_ratio: window_entropy / target_entropy,
                    agreement_with_pseudo_labels: a.agree.share().unwrap_or(f64::NAN),
                    window_accuracy: a.window.share(),
                    pseudo_label_accuracy: a.pseudo.share(),
                }
            })
            .collect(),
    })
}

/// The windows of one image at one scale: entropy, agreement with the (unmasked) LSE
/// pseudo-labels and, with ground truth, the accuracy of both.
#[allow(clippy::too_many_arguments)]
fn measure_windows(
    model: &Model,
    img: &Tensor,
    probs: &Tensor,
    truth: Option<&Tensor>,
    scale: f64,
    patches: usize,
    rng: &mut ChaCha8Rng,
    out: &mut ScaleAcc,
) {
    let (h, w) = (probs.size()[1], probs.size()[2]);
    let windows = lse::random_windows(rng, h, w, patches, scale);
    let keep_all = Tensor::ones([h, w], (Kind::Float, img.device()));
    let g = tch::no_grad(|| lse::generate(img, probs, &keep_all, &windows));
    for (k, win) in windows.iter().enumerate() {
        let wprobs = model.probs(&g.images.get(k as i64));
        out.entropy.add(mean_normalized_entropy(&wprobs));
        let wpred = wprobs.argmax(0, false);
        let pseudo = g.labels.get(k as i64);
        out.agree.add(&wpred, &pseudo);
        if let Some(t) = truth {
            let t = upscale_labels(t, win, h, w);
            out.window.add(&wpred, &t);
            out.pseudo.add(&pseudo, &t);
        }
    }
}

/// The ground truth of a window, up-scaled to `h x w` by nearest neighbour.
fn upscale_labels(truth: &Tensor, win: &lse::Window, h: i64, w: i64) -> Tensor {
    truth
        .narrow(0, win.y, win.h)
        .narrow(1, win.x, win.w)
        .to_kind(Kind::Float)
        .view([1, 1, win.h, win.w])
        .upsample_nearest2d([h, w], None, None)
        .view([h, w])
        .to_kind(Kind::Int64)
}

/// Mean normalised entropy of `model` on the first 16 images of `ds` (the source): the
/// premise's reference point, the domain the model was trained on.
pub fn source_entropy(
    model: &Model,
    ds: &Dataset,
    size: [u32; 2],
    mean_bgr: [f64; 3],
) -> anyhow::Result<Option<f64>> {
    let mut m = Mean::default();
    for i in 0..ds.len().min(16) {
        let (img, _) = ds.load_sample(i, size)?;
        m.add(mean_normalized_entropy(
            &model.probs(&data::image_tensor(&img, mean_bgr)),
        ));
    }
    Ok(m.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_count_only_labelled_pixels() {
        let pred = Tensor::from_slice(&[0i64, 1, 2, 3]);
        let truth = Tensor::from_slice(&[0i64, 2, 255, 3]);
        let mut h = Hits::default();
        h.add(&pred, &truth);
        assert_eq!((h.correct, h.labelled), (2, 3));
        assert_eq!(h.share(), Some(2.0 / 3.0));
        assert_eq!(Hits::default().share(), None);
    }

    #[test]
    fn confident_errors_are_counted_by_pair() {
        // Three pixels, two classes: a confident error (0.95 on class 1, truth 0), an
        // unconfident error (0.6 on class 1, truth 0) and a correct pixel.
        let probs = Tensor::from_slice(&[0.05f32, 0.4, 0.8, 0.95, 0.6, 0.2]).view([2, 3]);
        let truth = Tensor::from_slice(&[0i64, 0, 0]);
        let mut e = ErrorAcc::default();
        e.add(&probs, &truth);
        assert_eq!((e.errors, e.confident), (2, 1));
        let top = e.top(5);
        assert_eq!(top.len(), 1);
        assert_eq!(
            (top[0].truth.as_str(), top[0].predicted.as_str()),
            ("road", "sidewalk")
        );
        assert!((top[0].share_of_errors - 0.5).abs() < 1e-12);
    }

    #[test]
    fn window_labels_are_nearest_upscaled_crops() {
        let truth = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7, 8]).view([3, 3]);
        let win = lse::Window {
            y: 1,
            x: 1,
            h: 2,
            w: 2,
        };
        let up = upscale_labels(&truth, &win, 4, 4);
        let v: Vec<i64> = Vec::try_from(up.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![4, 4, 5, 5, 4, 4, 5, 5, 7, 7, 8, 8, 7, 7, 8, 8]);
    }
}
