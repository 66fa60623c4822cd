//! The two training losses of docs/method.md ("Losses"), as tensor operations on the
//! logits' device.
//!
//! - Source: per-pixel cross-entropy, labels 255 ignored, mean over valid pixels.
//! - Target (generated examples): `l` = per-pixel cross-entropy over valid pixels,
//!   `p_t = exp(-l)`; `loss = mean(l) + beta * mean(l * (1 - p_t)^gamma)` with
//!   `beta = 0.1`, `gamma = 3` ([`DEFAULT_FOCAL`]), or `mean(l)` without the focal
//!   term.
//!
//! Means are taken over the valid (non-255) pixels of the whole batch. When every
//! pixel is ignored both losses are an exact zero that is still part of the graph
//! (its gradient is zero), never NaN: `sum / max(count, 1)` instead of PyTorch's
//! `reduction = mean`, which divides by zero there.

use tch::{Kind, Reduction, Tensor};

/// The label value that marks a pixel to ignore.
pub const IGNORE_LABEL: i64 = 255;

/// The focal term's `(beta, gamma)` of the reference implementation.
pub const DEFAULT_FOCAL: (f64, f64) = (0.1, 3.0);

/// Per-pixel cross-entropy `N x H x W` (0 at ignored pixels) and the number of valid
/// pixels as a float scalar tensor on the same device (no host synchronisation).
///
/// `logits`: `N x C x H x W`; `labels`: `N x H x W` int64 in `0..C` or 255.
pub fn per_pixel_cross_entropy(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let labels = labels.to_kind(Kind::Int64);
    let logp = logits.log_softmax(1, Kind::Float);
    let l = logp.nll_loss_nd(&labels, None::<Tensor>, Reduction::None, IGNORE_LABEL);
    let valid = labels.ne(IGNORE_LABEL).sum(Kind::Float);
    (l, valid)
}

/// Mean of `x` over `count` valid pixels, 0 (with a graph) when there are none.
fn mean_over_valid(x: &Tensor, count: &Tensor) -> Tensor {
    x.sum(Kind::Float) / count.clamp_min(1.0)
}

/// Source loss: mean cross-entropy over the valid pixels (labels 255 ignored).
pub fn source_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (l, n) = per_pixel_cross_entropy(logits, labels);
    mean_over_valid(&l, &n)
}

/// Target loss on generated examples: `mean(l)` plus, with `focal = Some((beta,
/// gamma))`, `beta * mean(l * (1 - exp(-l))^gamma)`, both means over valid pixels.
///
/// `1 - p_t` is clamped below at 1e-30 before the power so that the gradient stays
/// finite for any `gamma > 0` where `l == 0` (ignored pixels, perfect predictions);
/// for `gamma >= 1` this changes neither the value nor the gradient measurably.
pub fn target_loss(logits: &Tensor, labels: &Tensor, focal: Option<(f64, f64)>) -> Tensor {
    let (l, n) = per_pixel_cross_entropy(logits, labels);
    let ce = mean_over_valid(&l, &n);
    match focal {
        None => ce,
        Some((beta, gamma)) => {
            let one_minus_pt = (-(-&l).exp() + 1.0).clamp_min(1e-30);
            let focal = &l * one_minus_pt.pow_tensor_scalar(gamma);
            ce + mean_over_valid(&focal, &n) * beta
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn logits_2px() -> Tensor {
        // One image, 2 classes, 1 x 3 pixels.
        // pixel 0: logits (0, 0)       -> CE for label 0 = ln 2
        // pixel 1: logits (ln 3, 0)    -> p = (3/4, 1/4), CE for label 1 = ln 4
        // pixel 2: logits (5, -5)      -> ignored
        Tensor::from_slice(&[0.0f32, 3f32.ln(), 5.0, 0.0, 0.0, -5.0])
            .view([1, 2, 1, 3])
            .set_requires_grad(true)
    }

    #[test]
    fn cross_entropy_with_ignore_by_hand() {
        let x = logits_2px();
        let y = Tensor::from_slice(&[0i64, 1, 255]).view([1, 1, 3]);
        let loss = source_loss(&x, &y).double_value(&[]);
        let expected = (2f64.ln() + 4f64.ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        // Without focal the target loss is the same mean.
        let t = target_loss(&x, &y, None).double_value(&[]);
        assert!((t - expected).abs() < 1e-6);
    }

    #[test]
    fn focal_term_by_hand() {
        let x = logits_2px();
        let y = Tensor::from_slice(&[0i64, 1, 255]).view([1, 1, 3]);
        let (beta, gamma) = DEFAULT_FOCAL;
        let t = target_loss(&x, &y, Some((beta, gamma))).double_value(&[]);
        // l = ln 2 (p_t = 1/2), ln 4 (p_t = 1/4).
        let f = 2f64.ln() * 0.5f64.powf(gamma) + 4f64.ln() * 0.75f64.powf(gamma);
        let expected = (2f64.ln() + 4f64.ln()) / 2.0 + beta * f / 2.0;
        assert!((t - expected).abs() < 1e-6, "{t} vs {expected}");
    }

    #[test]
    fn all_ignored_is_zero_with_a_graph() {
        for focal in [None, Some(DEFAULT_FOCAL), Some((0.1, 0.5))] {
            let x = Tensor::randn([2, 4, 3, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let y = Tensor::full([2, 3, 5], 255, (Kind::Int64, Device::Cpu));
            let l = target_loss(&x, &y, focal);
            assert_eq!(l.double_value(&[]), 0.0);
            assert!(l.requires_grad());
            l.backward();
            let g = x.grad();
            assert_eq!(g.abs().sum(Kind::Double).double_value(&[]), 0.0);
            let s = source_loss(&x, &y);
            assert_eq!(s.double_value(&[]), 0.0);
            assert!(s.requires_grad());
        }
    }

    #[test]
    fn matches_libtorch_cross_entropy_mean() {
        let x = Tensor::randn([2, 5, 4, 6], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(5, [2, 4, 6], (Kind::Int64, Device::Cpu));
        let _ = y.narrow(2, 0, 2).fill_(255);
        let ours = source_loss(&x, &y).double_value(&[]);
        let lib = x
            .cross_entropy_loss(&y, None::<Tensor>, Reduction::Mean, 255, 0.0)
            .double_value(&[]);
        assert!((ours - lib).abs() < 1e-6, "{ours} vs {lib}");
    }
}
