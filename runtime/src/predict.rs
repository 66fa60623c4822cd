//! The prediction protocol shared by `lse segment`, `lse label` and the server.
//!
//! As in the reference evaluation (docs/method.md): resize the image to the model's
//! training size (bicubic), predict, turn the logits into class probabilities,
//! upsample the probabilities bilinearly to the image's own size (half-pixel
//! centres, `align_corners = false`, as `torch.nn.functional.interpolate`), and
//! take the arg-max. [`Upsample::Labels`] is the fast variant: arg-max at the
//! training size, then nearest-neighbour upsampling of the labels.

use image::{GrayImage, RgbImage};
use ndarray::{Array4, ArrayView3};
use rayon::prelude::*;

use crate::engine::{Engine, EngineError};
use crate::imageio::{self, ImageError};

/// How predictions are brought back to the image's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Upsample {
    /// Bilinear upsampling of the class probabilities, then arg-max (the protocol).
    #[default]
    Probabilities,
    /// Arg-max first, then nearest-neighbour upsampling of the labels (faster).
    Labels,
}

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

/// Softmax over classes, laid out pixel-major (`h x w x C`) for the upsampling loop.
fn softmax_hwc(scores: ArrayView3<'_, f32>) -> Vec<f32> {
    let (c, h, w) = scores.dim();
    let mut out = vec![0f32; h * w * c];
    out.par_chunks_mut(w * c).enumerate().for_each(|(y, row)| {
        for x in 0..w {
            let px = &mut row[x * c..(x + 1) * c];
            let mut m = f32::NEG_INFINITY;
            for k in 0..c {
                px[k] = scores[[k, y, x]];
                m = m.max(px[k]);
            }
            let mut s = 0f32;
            for v in px.iter_mut() {
                *v = (*v - m).exp();
                s += *v;
            }
            for v in px.iter_mut() {
                *v /= s;
            }
        }
    });
    out
}

/// Source index pair and weight of the half-pixel bilinear sampling of one axis.
fn axis_weights(out_len: usize, in_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Arg-max of the bilinearly upsampled class probabilities of `scores` (`C x h x w`
/// logits), at `width x height`. Ties go to the lower class id.
pub fn upsample_argmax(scores: ArrayView3<'_, f32>, width: u32, height: u32) -> GrayImage {
    let (c, h, w) = scores.dim();
    let probs = softmax_hwc(scores);
    let xs = axis_weights(width as usize, w);
    let ys = axis_weights(height as usize, h);
    let mut out = vec![0u8; (width * height) as usize];
    out.par_chunks_mut(width as usize)
        .zip(ys.par_iter())
        .for_each(|(row, &(y0, y1, wy))| {
            let r0 = &probs[y0 * w * c..(y0 + 1) * w * c];
            let r1 = &probs[y1 * w * c..(y1 + 1) * w * c];
            for (o, &(x0, x1, wx)) in row.iter_mut().zip(&xs) {
                let (a, b) = (&r0[x0 * c..x0 * c + c], &r0[x1 * c..x1 * c + c]);
                let (d, e) = (&r1[x0 * c..x0 * c + c], &r1[x1 * c..x1 * c + c]);
                let mut best = f32::NEG_INFINITY;
                let mut arg = 0u8;
                for k in 0..c {
                    let top = a[k] + (b[k] - a[k]) * wx;
                    let bot = d[k] + (e[k] - d[k]) * wx;
                    let v = top + (bot - top) * wy;
                    if v > best {
                        best = v;
                        arg = k as u8;
                    }
                }
                *o = arg;
            }
        });
    GrayImage::from_raw(width, height, out).expect("buffer size matches")
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
        Upsample::Probabilities if (w as u32, h as u32) != (width, height) => {
            Ok(upsample_argmax(scores, width, height))
        }
        _ => {
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
    let (w, h) = (size[0] as usize, size[1] as usize);
    let mut batch = Array4::<f32>::zeros((images.len(), 3, h, w));
    for (i, inp) in inputs.iter().enumerate() {
        batch
            .index_axis_mut(ndarray::Axis(0), i)
            .as_slice_mut()
            .expect("standard layout")
            .copy_from_slice(inp);
    }
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
    use ndarray::Array3;

    /// Independent reference: per-class bilinear interpolation written the long way.
    fn reference(scores: &Array3<f32>, ow: usize, oh: usize) -> Vec<u8> {
        let (c, h, w) = scores.dim();
        let mut probs = scores.clone();
        for y in 0..h {
            for x in 0..w {
                let m = (0..c).map(|k| scores[[k, y, x]]).fold(f32::MIN, f32::max);
                let s: f32 = (0..c).map(|k| (scores[[k, y, x]] - m).exp()).sum();
                for k in 0..c {
                    probs[[k, y, x]] = (scores[[k, y, x]] - m).exp() / s;
                }
            }
        }
        let sample = |k: usize, sy: f32, sx: f32| {
            let sy = sy.max(0.0);
            let sx = sx.max(0.0);
            let y0 = (sy.floor() as usize).min(h - 1);
            let x0 = (sx.floor() as usize).min(w - 1);
            let y1 = (y0 + 1).min(h - 1);
            let x1 = (x0 + 1).min(w - 1);
            let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
            probs[[k, y0, x0]] * (1.0 - fy) * (1.0 - fx)
                + probs[[k, y0, x1]] * (1.0 - fy) * fx
                + probs[[k, y1, x0]] * fy * (1.0 - fx)
                + probs[[k, y1, x1]] * fy * fx
        };
        let mut out = Vec::new();
        for oy in 0..oh {
            for ox in 0..ow {
                let sy = (oy as f32 + 0.5) * h as f32 / oh as f32 - 0.5;
                let sx = (ox as f32 + 0.5) * w as f32 / ow as f32 - 0.5;
                let mut best = (0, f32::MIN);
                for k in 0..c {
                    let v = sample(k, sy, sx);
                    if v > best.1 {
                        best = (k, v);
                    }
                }
                out.push(best.0 as u8);
            }
        }
        out
    }

    #[test]
    fn upsampling_matches_reference() {
        let (c, h, w) = (5, 4, 6);
        let scores = Array3::from_shape_fn((c, h, w), |(k, y, x)| {
            ((k * 7 + y * 3 + x * 5) % 11) as f32 * 0.37 - (k as f32) * 0.2
        });
        for (ow, oh) in [(13, 9), (24, 16), (6, 4)] {
            let got = upsample_argmax(scores.view(), ow as u32, oh as u32);
            let want = reference(&scores, ow, oh);
            let same = got
                .as_raw()
                .iter()
                .zip(&want)
                .filter(|(a, b)| a == b)
                .count();
            assert!(
                same as f32 >= 0.99 * want.len() as f32,
                "{same}/{}",
                want.len()
            );
        }
    }
}
