//! The prediction protocol shared by `lse segment`, `lse label` and the server.
//!
//! As in the reference evaluation (docs/method.md): resize the image to the model's
//! training size (bicubic), predict, turn the logits into class probabilities,
//! upsample the probabilities bilinearly to the image's own size with
//! `align_corners = true` (the reference's
//! `F.upsample(output, (1024, 2048), mode='bilinear', align_corners=True)`; recorded
//! in the model contract as [`crate::contract::UPSAMPLING`]), and take the arg-max
//! ([`upsample_argmax`]: exact, with a shortcut away from class boundaries).
//! [`Upsample::Labels`] is the fast variant: arg-max at the training size, then
//! nearest-neighbour upsampling of the labels.

use image::{GrayImage, RgbImage};
use ndarray::{Array4, ArrayView3};
use rayon::prelude::*;

use crate::engine::{Engine, EngineError};
use crate::imageio::{self, ImageError};

/// How predictions are brought back to the image's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Upsample {
    /// Bilinear upsampling of the class probabilities, then arg-max (the protocol).
    #[default]
    Probabilities,
    /// Arg-max first, then nearest-neighbour upsampling of the labels (faster).
    Labels,
}

impl Upsample {
    /// The outputs this post-processing reads.
    pub fn fetch(self) -> crate::engine::Fetch {
        match self {
            Upsample::Probabilities => crate::engine::Fetch::Scores,
            Upsample::Labels => crate::engine::Fetch::TrainIds,
        }
    }
}

crate::choice!(Upsample, "upsampling" {
    Probabilities => "probabilities",
        "bilinear upsampling of the class probabilities, then arg-max (the protocol)";
    Labels => "labels", "arg-max first, then nearest-neighbour upsampling (faster)";
});

/// Errors of predicting an image.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Resizes an image to `[width, height]` and lays it out as the model input (RGB CHW).
pub fn prepare(img: &RgbImage, size: [u32; 2]) -> Result<Vec<f32>, ImageError> {
    let resized = imageio::resize_rgb(img, size[0], size[1])?;
    Ok(imageio::to_rgb_chw(&resized))
}

/// One batch of N inputs, each laid out by [`prepare`] for a model of training size
/// `size` (`[width, height]`). An input of another length stays zero in the batch and
/// its position is returned, so the caller can answer that one with an error.
pub fn stack_inputs<'a>(
    inputs: impl ExactSizeIterator<Item = &'a [f32]>,
    size: [u32; 2],
) -> (Array4<f32>, Vec<usize>) {
    let (w, h) = (size[0] as usize, size[1] as usize);
    let mut batch = Array4::<f32>::zeros((inputs.len(), 3, h, w));
    let mut wrong = Vec::new();
    for (i, input) in inputs.enumerate() {
        let mut slot = batch.index_axis_mut(ndarray::Axis(0), i);
        match slot.as_slice_mut() {
            Some(s) if s.len() == input.len() => s.copy_from_slice(input),
            _ => wrong.push(i),
        }
    }
    (batch, wrong)
}

/// Softmax of the logits of one source pixel into `out` (`C` values): `scores` is
/// the `C x h x w` array flattened, `plane = h * w`, `at = y * w + x`.
///
/// The one definition of the probabilities: the full computation and the fast path
/// both call it, so their probabilities are the same bits.
#[inline]
fn softmax_at(scores: &[f32], plane: usize, at: usize, out: &mut [f32]) {
    let mut m = f32::NEG_INFINITY;
    for (k, o) in out.iter_mut().enumerate() {
        *o = scores[k * plane + at];
        m = m.max(*o);
    }
    let mut s = 0f32;
    for v in out.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in out.iter_mut() {
        *v /= s;
    }
}

/// Softmax over classes of every pixel, laid out pixel-major (`h x w x C`).
fn softmax_hwc(scores: ArrayView3<'_, f32>) -> Vec<f32> {
    let (c, h, w) = scores.dim();
    let mut out = vec![0f32; h * w * c];
    if c == 0 {
        return out;
    }
    let standard = scores.as_standard_layout();
    let flat = standard.as_slice().expect("standard layout");
    out.par_chunks_mut(w * c).enumerate().for_each(|(y, row)| {
        for (x, px) in row.chunks_exact_mut(c).enumerate() {
            softmax_at(flat, h * w, y * w + x, px);
        }
    });
    out
}

/// One output coordinate of the bilinear sampling along an axis: the two source
/// indices and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// The taps of one axis, `align_corners = true`, computed as PyTorch's CPU kernel
/// does (`area_pixel_compute_scale`, `compute_source_index_and_lambda`, in `f32`):
/// `scale = (in - 1) / (out - 1)`, `src = scale * o`, `i0 = floor(src)`,
/// `w1 = clamp(src - i0, 0, 1)`, `w0 = 1 - w1`, `i1 = i0 + 1` unless `i0` is the last
/// index; an axis whose size does not change is copied.
fn axis_taps(out_len: usize, in_len: usize) -> Vec<Tap> {
    if out_len == in_len {
        return (0..out_len)
            .map(|o| Tap {
                i0: o,
                i1: o,
                w0: 1.0,
                w1: 0.0,
            })
            .collect();
    }
    let scale = if out_len > 1 {
        (in_len - 1) as f32 / (out_len - 1) as f32
    } else {
        0.0
    };
    (0..out_len)
        .map(|o| {
            let src = scale * o as f32;
            let i0 = (src.floor() as usize).min(in_len - 1);
            let w1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 + 1 < in_len { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

/// Arg-max over classes of the bilinear interpolation of four probability vectors
/// (`a` at `(y0, x0)`, `b` at `(y0, x1)`, `d` at `(y1, x0)`, `e` at `(y1, x1)`), in
/// PyTorch's order of operations: `(a w0x + b w1x) w0y + (d w0x + e w1x) w1y`. Ties
/// go to the lower class id.
#[inline]
fn interp_argmax(a: &[f32], b: &[f32], d: &[f32], e: &[f32], tx: Tap, ty: Tap) -> u8 {
    let mut best = f32::NEG_INFINITY;
    let mut arg = 0u8;
    for k in 0..a.len() {
        let top = a[k] * tx.w0 + b[k] * tx.w1;
        let bot = d[k] * tx.w0 + e[k] * tx.w1;
        let v = top * ty.w0 + bot * ty.w1;
        if v > best {
            best = v;
            arg = k as u8;
        }
    }
    arg
}

/// The full computation of [`upsample_argmax`]: softmax at every source pixel, all
/// `C` channels interpolated at every output pixel, arg-max. It defines the result;
/// [`upsample_argmax`] returns the same bits, faster. Kept for tests and benchmarks.
pub fn upsample_argmax_full(scores: ArrayView3<'_, f32>, width: u32, height: u32) -> GrayImage {
    let (c, h, w) = scores.dim();
    let (ow, oh) = (width as usize, height as usize);
    let mut out = vec![0u8; ow * oh];
    if ow == 0 || oh == 0 || c == 0 || h == 0 || w == 0 {
        return GrayImage::from_raw(width, height, out).expect("buffer size matches");
    }
    let probs = softmax_hwc(scores);
    let xs = axis_taps(ow, w);
    let ys = axis_taps(oh, h);
    let px = |y: usize, x: usize| &probs[(y * w + x) * c..(y * w + x + 1) * c];
    out.par_chunks_mut(ow)
        .zip(ys.par_iter())
        .for_each(|(row, &ty)| {
            for (o, &tx) in row.iter_mut().zip(&xs) {
                *o = interp_argmax(
                    px(ty.i0, tx.i0),
                    px(ty.i0, tx.i1),
                    px(ty.i1, tx.i0),
                    px(ty.i1, tx.i1),
                    tx,
                    ty,
                );
            }
        });
    GrayImage::from_raw(width, height, out).expect("buffer size matches")
}

/// Confidence (the largest class probability) and normalised entropy
/// (`-sum p ln p / ln C`) of the class probabilities at `width x height`, upsampled as
/// [`upsample_argmax_full`] upsamples them (softmax at the model's resolution, bilinear
/// with aligned corners), each as an 8-bit image of `round(255 x value)`.
pub fn confidence_entropy(
    scores: ArrayView3<'_, f32>,
    width: u32,
    height: u32,
) -> (GrayImage, GrayImage) {
    let (c, h, w) = scores.dim();
    let (ow, oh) = (width as usize, height as usize);
    let (mut conf, mut ent) = (vec![0u8; ow * oh], vec![0u8; ow * oh]);
    if ow > 0 && oh > 0 && c > 0 && h > 0 && w > 0 {
        let probs = softmax_hwc(scores);
        let (xs, ys) = (axis_taps(ow, w), axis_taps(oh, h));
        let px = |y: usize, x: usize| &probs[(y * w + x) * c..(y * w + x + 1) * c];
        let norm = if c > 1 { (c as f32).ln() } else { 1.0 };
        let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        conf.par_chunks_mut(ow)
            .zip(ent.par_chunks_mut(ow))
            .zip(ys.par_iter())
            .for_each(|((crow, erow), &ty)| {
                for ((co, eo), &tx) in crow.iter_mut().zip(erow.iter_mut()).zip(&xs) {
                    let (a, b) = (px(ty.i0, tx.i0), px(ty.i0, tx.i1));
                    let (d, e) = (px(ty.i1, tx.i0), px(ty.i1, tx.i1));
                    let (mut best, mut entropy) = (0f32, 0f32);
                    for (((&pa, &pb), &pd), &pe) in a.iter().zip(b).zip(d).zip(e) {
                        let top = pa * tx.w0 + pb * tx.w1;
                        let p = top * ty.w0 + (pd * tx.w0 + pe * tx.w1) * ty.w1;
                        best = best.max(p);
                        if p > 0.0 {
                            entropy -= p * p.ln();
                        }
                    }
                    *co = to_u8(best);
                    *eo = to_u8(entropy / norm);
                }
            });
    }
    let img = |v| GrayImage::from_raw(width, height, v).expect("buffer size matches");
    (img(conf), img(ent))
}

/// Marks a source pixel whose class is not certain enough for the shortcut.
const UNSURE: u8 = u8::MAX;

/// The smallest logit margin (top class minus runner-up) for which a source pixel
/// counts as certain in [`upsample_argmax`], for `c` classes: `(c + 2) * 2^-19`.
///
/// Why it is safe (u = 2^-24, the unit roundoff of `f32`): with a logit margin
/// `D >= (c + 2) 2^-19` the computed probabilities of the pixel (`softmax_at`:
/// `exp(s_k - m) / sum`, `exp` accurate to a few ulp, `sum <= c (1 + c u)`) differ
/// between the top class and any other by at least
/// `(1 - e^-D - 10 u) / (c (1 + c u)) > 16 u`. Bilinear interpolation with the
/// weights of [`axis_taps`] (non-negative, each axis's pair summing to `1 +- u/2`) of
/// four probability vectors whose top class is the same `t`, each with a margin
/// `>= 16 u`, has an exact margin `>= 16 u (1 - u)` for `t`; evaluating
/// `(a w0x + b w1x) w0y + (d w0x + e w1x) w1y` with values in `[0, 1]` errs by at
/// most `4.03 u` per class, so the computed values still put `t` strictly first
/// (`16 u (1 - u) > 2 * 4.03 u`): [`upsample_argmax_full`] returns `t` there.
fn logit_margin(c: usize) -> f32 {
    (c as f32 + 2.0) * (-19f32).exp2()
}

/// The certain class of every source pixel (`h x w`, row-major), [`UNSURE`] where
/// the logit margin is below [`logit_margin`] or a logit is not finite.
fn certain_classes(scores: &[f32], c: usize, h: usize, w: usize) -> Vec<u8> {
    let plane = h * w;
    let margin = logit_margin(c);
    let mut cls = vec![UNSURE; plane];
    cls.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        let at = y * w;
        let first = &scores[at..at + w];
        // Top logit, runner-up, top class (first on ties) and a non-finite flag per
        // pixel, one class plane at a time: branch-free, so the loop vectorises.
        let mut best = first.to_vec();
        let mut second = vec![f32::NEG_INFINITY; w];
        let mut arg = vec![0u32; w];
        let mut bad: Vec<u32> = first.iter().map(|v| u32::from(!v.is_finite())).collect();
        for k in 1..c {
            let src = &scores[k * plane + at..k * plane + at + w];
            let kk = k as u32;
            for ((((&v, b), s), a), f) in src
                .iter()
                .zip(best.iter_mut())
                .zip(second.iter_mut())
                .zip(arg.iter_mut())
                .zip(bad.iter_mut())
            {
                let gt = v > *b;
                let lo = if gt { *b } else { v };
                *s = if lo > *s { lo } else { *s };
                *a = if gt { kk } else { *a };
                *b = if gt { v } else { *b };
                *f |= u32::from(!v.is_finite());
            }
        }
        for x in 0..w {
            if bad[x] == 0 && best[x] - second[x] >= margin {
                row[x] = arg[x] as u8;
            }
        }
    });
    cls
}

/// Marks, in `need` (one row), the source pixels of row `y` whose probabilities a
/// full computation may read: uncertain ones and those with a differing
/// 8-neighbour. Every corner of an output pixel that the shortcut does not settle is
/// one of them: the four corners of such a pixel are not all the same certain class,
/// so each is uncertain or differs from another corner, which is its neighbour.
fn mark_needed(cls: &[u8], h: usize, w: usize, y: usize, need: &mut [u8]) {
    let me = &cls[y * w..(y + 1) * w];
    for (n, &v) in need.iter_mut().zip(me) {
        *n = u8::from(v == UNSURE);
    }
    for r in [y.saturating_sub(1), y, (y + 1).min(h - 1)] {
        let other = &cls[r * w..(r + 1) * w];
        // The same column, the left neighbour and the right one (edges clamped).
        for (n, (a, b)) in need.iter_mut().zip(me.iter().zip(other)) {
            *n |= u8::from(a != b);
        }
        if w > 1 {
            for (n, (a, b)) in need[1..].iter_mut().zip(me[1..].iter().zip(other)) {
                *n |= u8::from(a != b);
            }
            for (n, (a, b)) in need[..w - 1].iter_mut().zip(me.iter().zip(&other[1..])) {
                *n |= u8::from(a != b);
            }
        }
    }
}

/// The output columns that share a source column pair: `taps[start..end]` all have
/// the same `i0` and `i1` (the taps' source indices never decrease).
fn tap_runs(taps: &[Tap]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = 0;
    for o in 1..=taps.len() {
        if o == taps.len() || (taps[o].i0, taps[o].i1) != (taps[start].i0, taps[start].i1) {
            runs.push((start, o));
            start = o;
        }
    }
    runs
}

/// Arg-max of the bilinearly upsampled class probabilities of `scores` (`C x h x w`
/// logits), at `width x height`: softmax, bilinear interpolation with
/// `align_corners = true` ([`crate::contract::UPSAMPLING`]), arg-max; ties go to the
/// lower class id.
///
/// Bit-identical to [`upsample_argmax_full`], without its cost: interpolation is a
/// convex combination of the four neighbouring probability vectors, so an output
/// pixel whose four neighbours share a top class with a safe margin (see
/// [`logit_margin`]) takes that class; only the others (class boundaries, near-ties)
/// get the softmax of their neighbours and the full `C`-channel interpolation.
pub fn upsample_argmax(scores: ArrayView3<'_, f32>, width: u32, height: u32) -> GrayImage {
    upsample_argmax_counted(scores, width, height).0
}

/// [`upsample_argmax`], and the number of output pixels computed in full.
pub fn upsample_argmax_counted(
    scores: ArrayView3<'_, f32>,
    width: u32,
    height: u32,
) -> (GrayImage, usize) {
    let (c, h, w) = scores.dim();
    let (ow, oh) = (width as usize, height as usize);
    if ow == 0 || oh == 0 || c == 0 || c > 255 || h == 0 || w == 0 {
        return (upsample_argmax_full(scores, width, height), ow * oh);
    }
    let standard = scores.as_standard_layout();
    let flat = standard.as_slice().expect("standard layout");
    let cls = certain_classes(flat, c, h, w);
    // Probabilities of the source pixels a full computation may read (`mark_needed`),
    // per row: `slot` maps a pixel to its place in its row's list.
    let mut slot = vec![u32::MAX; h * w];
    let probs: Vec<Vec<f32>> = slot
        .par_chunks_mut(w)
        .enumerate()
        .map(|(y, slots)| {
            let mut need = vec![0u8; w];
            mark_needed(&cls, h, w, y, &mut need);
            let mut probs = Vec::new();
            for (x, s) in slots.iter_mut().enumerate() {
                if need[x] != 0 {
                    *s = (probs.len() / c) as u32;
                    let at = probs.len();
                    probs.resize(at + c, 0.0);
                    softmax_at(flat, h * w, y * w + x, &mut probs[at..]);
                }
            }
            probs
        })
        .collect();
    let xs = axis_taps(ow, w);
    let ys = axis_taps(oh, h);
    let runs = tap_runs(&xs);
    let px = |y: usize, x: usize| {
        let s = slot[y * w + x] as usize;
        debug_assert!(
            s != u32::MAX as usize,
            "probabilities of ({y}, {x}) computed"
        );
        &probs[y][s * c..(s + 1) * c]
    };
    let mut out = vec![0u8; ow * oh];
    let full: usize = out
        .par_chunks_mut(ow)
        .zip(ys.par_iter())
        .map(|(row, &ty)| {
            let r0 = &cls[ty.i0 * w..(ty.i0 + 1) * w];
            let r1 = &cls[ty.i1 * w..(ty.i1 + 1) * w];
            let mut full = 0;
            for &(start, end) in &runs {
                let (x0, x1) = (xs[start].i0, xs[start].i1);
                let t = r0[x0];
                if t != UNSURE && r0[x1] == t && r1[x0] == t && r1[x1] == t {
                    row[start..end].fill(t);
                    continue;
                }
                full += end - start;
                let (a, b, d, e) = (px(ty.i0, x0), px(ty.i0, x1), px(ty.i1, x0), px(ty.i1, x1));
                for (o, &tx) in row[start..end].iter_mut().zip(&xs[start..end]) {
                    *o = interp_argmax(a, b, d, e, tx, ty);
                }
            }
            full
        })
        .sum();
    (
        GrayImage::from_raw(width, height, out).expect("buffer size matches"),
        full,
    )
}

/// Brings a model output back to `width x height` train ids.
pub fn to_train_ids(
    scores: ArrayView3<'_, f32>,
    ids: ndarray::ArrayView2<'_, u8>,
    width: u32,
    height: u32,
    mode: Upsample,
) -> Result<GrayImage, ImageError> {
    let (h, w) = ids.dim();
    match mode {
        // Also at the model's own size: the arg-max of the probabilities, as the
        // protocol says (the graph's `train_ids` is the arg-max of the logits, which
        // differs where two probabilities round to the same value).
        Upsample::Probabilities => Ok(upsample_argmax(scores, width, height)),
        Upsample::Labels => {
            let small = GrayImage::from_raw(w as u32, h as u32, ids.iter().copied().collect())
                .expect("buffer size matches");
            imageio::resize_labels(&small, width, height)
        }
    }
}

/// Segments a batch of images of any sizes: each is predicted at the model's training
/// size and its train ids returned at its own size.
pub fn segment_batch(
    engine: &mut Engine,
    images: &[RgbImage],
    mode: Upsample,
) -> Result<Vec<GrayImage>, PredictError> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let size = engine.meta().train_size;
    let inputs: Vec<Vec<f32>> = images
        .par_iter()
        .map(|img| prepare(img, size))
        .collect::<Result<_, _>>()?;
    let (batch, wrong) = stack_inputs(inputs.iter().map(Vec::as_slice), size);
    debug_assert!(wrong.is_empty(), "prepare() lays out the training size");
    let out = engine.run(batch.view())?;
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            to_train_ids(
                out.scores.index_axis(ndarray::Axis(0), i),
                out.train_ids.index_axis(ndarray::Axis(0), i),
                img.width(),
                img.height(),
                mode,
            )
            .map_err(PredictError::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_upsampling_fetches_only_the_output_it_reads() {
        use crate::engine::Fetch;
        assert_eq!(Upsample::Probabilities.fetch(), Fetch::Scores);
        assert_eq!(Upsample::Labels.fetch(), Fetch::TrainIds);
    }
    use ndarray::Array3;
    use rand::{Rng, SeedableRng};

    /// Bilinear `align_corners = true` interpolation written out by hand, in `f64`
    /// from the definition (source coordinate `o (in - 1) / (out - 1)`), on the `f32`
    /// probabilities of `softmax_at`; arg-max with ties to the lower class.
    fn by_hand(scores: &Array3<f32>, ow: usize, oh: usize) -> (Vec<u8>, Vec<f64>) {
        let (c, h, w) = scores.dim();
        let flat = scores
            .as_standard_layout()
            .to_owned()
            .into_raw_vec_and_offset()
            .0;
        let mut probs = vec![0f32; h * w * c];
        for i in 0..h * w {
            softmax_at(&flat, h * w, i, &mut probs[i * c..(i + 1) * c]);
        }
        let src = |o: usize, n_out: usize, n_in: usize| {
            let s = if n_out > 1 {
                o as f64 * (n_in - 1) as f64 / (n_out - 1) as f64
            } else {
                0.0
            };
            let i0 = (s.floor() as usize).min(n_in - 1);
            (i0, (i0 + 1).min(n_in - 1), s - i0 as f64)
        };
        let (mut ids, mut margins) = (Vec::new(), Vec::new());
        for oy in 0..oh {
            let (y0, y1, fy) = src(oy, oh, h);
            for ox in 0..ow {
                let (x0, x1, fx) = src(ox, ow, w);
                let p = |y: usize, x: usize, k: usize| probs[(y * w + x) * c + k] as f64;
                let mut v: Vec<(f64, usize)> = (0..c)
                    .map(|k| {
                        let top = p(y0, x0, k) * (1.0 - fx) + p(y0, x1, k) * fx;
                        let bot = p(y1, x0, k) * (1.0 - fx) + p(y1, x1, k) * fx;
                        (top * (1.0 - fy) + bot * fy, k)
                    })
                    .collect();
                v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                ids.push(v[0].1 as u8);
                margins.push(if c > 1 { v[0].0 - v[1].0 } else { 1.0 });
            }
        }
        (ids, margins)
    }

    #[test]
    fn inputs_stack_in_order_and_a_wrong_length_stays_zero() {
        let size = [3, 2]; // 3 x 2 x 3 = 18 values per input
        let a: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let b: Vec<f32> = (0..18).map(|v| -(v as f32)).collect();
        let short = vec![7.0; 5];
        let inputs = [a.as_slice(), short.as_slice(), b.as_slice()];
        let (batch, wrong) = stack_inputs(inputs.into_iter(), size);
        assert_eq!(batch.shape(), &[3, 3, 2, 3]);
        assert_eq!(wrong, vec![1]);
        // Element (n, c, y, x) of a CHW input sits at c*H*W + y*W + x.
        for (n, want) in [(0, &a), (2, &b)] {
            for ((c, y, x), v) in batch.index_axis(ndarray::Axis(0), n).indexed_iter() {
                assert_eq!(*v, want[c * 6 + y * 3 + x]);
            }
        }
        assert!(
            batch
                .index_axis(ndarray::Axis(0), 1)
                .iter()
                .all(|&v| v == 0.0)
        );
    }

    #[test]
    fn confidence_and_entropy_of_sure_and_unsure_pixels() {
        // Pixel (0, 0): one class far ahead; pixel (0, 1): all classes equal.
        let scores = Array3::from_shape_fn(
            (4, 1, 2),
            |(k, _, x)| {
                if x == 0 && k == 2 { 50.0 } else { 0.0 }
            },
        );
        let (conf, ent) = confidence_entropy(scores.view(), 2, 1);
        assert_eq!(conf.as_raw(), &vec![255, 64]);
        assert_eq!(ent.as_raw(), &vec![0, 255]);
        // Upsampled: the middle of the two pixels mixes them.
        let (conf, ent) = confidence_entropy(scores.view(), 3, 1);
        assert_eq!(conf.as_raw()[1], (255.0f32 * (0.5 + 0.125)).round() as u8);
        assert!(
            ent.as_raw()[1] > 0 && ent.as_raw()[1] < 255,
            "{:?}",
            ent.as_raw()
        );
    }

    #[test]
    fn taps_align_the_corners() {
        // 3 -> 5: source coordinates 0, 0.5, 1, 1.5, 2.
        let t = axis_taps(5, 3);
        let want = [
            (0, 1, 1.0, 0.0),
            (0, 1, 0.5, 0.5),
            (1, 2, 1.0, 0.0),
            (1, 2, 0.5, 0.5),
            (2, 2, 1.0, 0.0),
        ];
        for (t, w) in t.iter().zip(want) {
            assert_eq!((t.i0, t.i1, t.w0, t.w1), w);
        }
        // 1024 -> 2048: the first and last output pixels are the source's corners.
        let t = axis_taps(2048, 1024);
        assert_eq!((t[0].i0, t[0].w1), (0, 0.0));
        assert_eq!((t[2047].i0, t[2047].i1, t[2047].w0), (1023, 1023, 1.0));
        // Same size: a copy; one output pixel: the first source pixel.
        assert!(
            axis_taps(7, 7)
                .iter()
                .enumerate()
                .all(|(o, t)| t.i0 == o && t.i1 == o && t.w1 == 0.0)
        );
        assert_eq!(axis_taps(1, 9)[0].i0, 0);
        // Runs of output columns sharing a source cell cover the axis in order.
        for (out, inp) in [(2048, 1024), (13, 4), (5, 9), (6, 6), (1, 3)] {
            let taps = axis_taps(out, inp);
            let runs = tap_runs(&taps);
            assert_eq!((runs[0].0, runs[runs.len() - 1].1), (0, out));
            for (r, &(start, end)) in runs.iter().enumerate() {
                assert!(start < end && (r == 0 || runs[r - 1].1 == start));
                let cell = (taps[start].i0, taps[start].i1);
                assert!(taps[start..end].iter().all(|t| (t.i0, t.i1) == cell));
            }
        }
    }

    #[test]
    fn full_computation_matches_the_definition_by_hand() {
        let (c, h, w) = (5, 4, 6);
        let scores = Array3::from_shape_fn((c, h, w), |(k, y, x)| {
            ((k * 7 + y * 3 + x * 5) % 11) as f32 * 0.37 - (k as f32) * 0.2
        });
        for (ow, oh) in [(13, 9), (24, 16), (6, 4), (11, 7), (3, 2), (1, 1)] {
            let got = upsample_argmax_full(scores.view(), ow as u32, oh as u32);
            let (want, margin) = by_hand(&scores, ow, oh);
            for (i, (&g, &e)) in got.as_raw().iter().zip(&want).enumerate() {
                // f32 vs f64 arithmetic: only near-ties may differ.
                assert!(
                    g == e || margin[i] < 1e-6,
                    "{ow}x{oh} pixel {i}: {g} vs {e} (margin {})",
                    margin[i]
                );
            }
            assert_eq!(got, upsample_argmax(scores.view(), ow as u32, oh as u32));
        }
    }

    /// Random logits in class blobs (so that most output pixels take the shortcut),
    /// with exact ties, near-ties around [`logit_margin`], tiny margins everywhere in
    /// some rows, huge logits, and a few non-finite values.
    fn tricky_scores(c: usize, h: usize, w: usize, seed: u64) -> Array3<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<(f32, f32, usize)> = (0..6)
            .map(|_| {
                (
                    rng.random_range(0.0..h as f32),
                    rng.random_range(0.0..w as f32),
                    rng.random_range(0..c),
                )
            })
            .collect();
        let mut s = Array3::<f32>::zeros((c, h, w));
        let lm = logit_margin(c);
        for y in 0..h {
            for x in 0..w {
                let &(_, _, top) = centres
                    .iter()
                    .min_by(|a, b| {
                        let da = (a.0 - y as f32).powi(2) + (a.1 - x as f32).powi(2);
                        let db = (b.0 - y as f32).powi(2) + (b.1 - x as f32).powi(2);
                        da.total_cmp(&db)
                    })
                    .unwrap();
                for k in 0..c {
                    s[[k, y, x]] = rng.random_range(-4.0..2.0);
                }
                s[[top, y, x]] = 3.0 + rng.random_range(0.0..2.0);
                let other = (top + 1 + rng.random_range(0..c - 1)) % c;
                let m = s[[top, y, x]];
                match rng.random_range(0..40) {
                    0 => s[[other, y, x]] = m,                               // exact tie
                    1 => s[[other, y, x]] = m - lm,                          // at the bound
                    2 => s[[other, y, x]] = m - lm * 1.000_001,              // just past it
                    3 => s[[other, y, x]] = m - lm * 0.999_999,              // just short of it
                    4 => s[[other, y, x]] = f32::from_bits(m.to_bits() - 1), // one ulp
                    5 => s[[other, y, x]] = m - rng.random_range(0.0..1e-6),
                    6 => {
                        // huge logits: probabilities 0 and 1
                        s[[top, y, x]] = 1e30;
                        s[[other, y, x]] = -1e30;
                    }
                    _ => {}
                }
            }
        }
        // Rows of near-uniform logits (an untrained model), and a few non-finite values.
        for x in 0..w {
            for k in 0..c {
                s[[k, h / 2, x]] = 1.0 + (k as f32) * 1e-7 * rng.random_range(0.0..1.0);
            }
        }
        // Two rows where all classes are nearly even and class 0 leads class 1 by at
        // most 2e-6 (probability margins of a few ulps, flipped by rounding in the
        // interpolation): the shortcut must leave them to the full computation.
        for y in [h / 4, (h / 4 + 1).min(h - 1)] {
            for x in 0..w {
                for k in 2..c {
                    s[[k, y, x]] = 1.0 - 1e-3 * rng.random_range(0.1..1.0);
                }
                s[[0, y, x]] = 1.0;
                s[[1, y, x]] = 1.0 - rng.random_range(0.0..4e-7) * [0.01f32, 1.0, 5.0][x % 3];
            }
        }
        s[[0, 0, w - 1]] = f32::NAN;
        s[[c - 1, h - 1, 0]] = f32::INFINITY;
        s[[1, h - 1, w / 2]] = f32::NEG_INFINITY;
        s
    }

    #[test]
    fn shortcut_is_bit_identical_to_the_full_computation() {
        for (seed, (c, h, w)) in [
            (19, 32, 64),
            (5, 17, 23),
            (2, 9, 40),
            (1, 6, 7),
            (19, 1, 30),
        ]
        .into_iter()
        .enumerate()
        {
            let scores = tricky_scores(c.max(2), h, w, seed as u64);
            let scores = if c == 1 {
                scores.slice(ndarray::s![0..1, .., ..]).to_owned()
            } else {
                scores
            };
            for (ow, oh) in [
                (2 * w, 2 * h),
                (w, h),
                (3 * w + 5, 2 * h + 3),
                (w / 2 + 1, h / 2 + 1),
                (97, 1),
                (1, 1),
            ] {
                let (ow, oh) = (ow as u32, oh as u32);
                let full = upsample_argmax_full(scores.view(), ow, oh);
                let (fast, computed) = upsample_argmax_counted(scores.view(), ow, oh);
                assert_eq!(fast, full, "c {c}, {w}x{h} -> {ow}x{oh}");
                if c == 19 && h > 1 && (ow, oh) == (2 * w as u32, 2 * h as u32) {
                    // The shortcut settles most pixels of the blobs (with one row,
                    // all of it is the near-uniform row).
                    let share = computed as f64 / (ow * oh) as f64;
                    assert!(share < 0.5, "{computed} of {} computed in full", ow * oh);
                }
            }
        }
    }

    #[test]
    fn near_ties_across_neighbours_are_exact() {
        // Two classes whose probabilities cross between neighbouring pixels by a few
        // ulps: every output pixel between them is a near-tie.
        let (h, w) = (4, 8);
        let mut s = Array3::<f32>::zeros((3, h, w));
        for y in 0..h {
            for x in 0..w {
                let d = (x as f32 - 3.5) * 1e-7 + (y as f32) * 3e-8;
                s[[0, y, x]] = 0.5 + d;
                s[[1, y, x]] = 0.5 - d;
                s[[2, y, x]] = -1.0;
            }
        }
        for (ow, oh) in [(29, 13), (64, 32), (8, 4)] {
            let full = upsample_argmax_full(s.view(), ow, oh);
            assert_eq!(upsample_argmax(s.view(), ow, oh), full);
            assert!(full.contains(&0) && full.contains(&1));
        }
    }

    #[test]
    fn strided_scores_are_read_right() {
        let scores = tricky_scores(4, 10, 12, 7);
        let mut t = scores.clone();
        t.swap_axes(1, 2);
        let t = t.as_standard_layout().to_owned();
        let mut view = t.view();
        view.swap_axes(1, 2); // the same array, not in standard layout
        assert_eq!(
            upsample_argmax(view, 25, 21),
            upsample_argmax_full(scores.view(), 25, 21)
        );
    }
}
