//! int8 export (`lse-train export --precision int8 --calibrate DATASET`): calibration
//! of the activation ranges on target images in libtorch, the quantisation of weights
//! and biases, and the accuracy check of the QDQ model in ONNX Runtime against the
//! float32 network on held-out images of the same dataset.
//!
//! - **Weights**: int8, symmetric, one scale per output channel (`max |w| / 127`,
//!   rounded half to even like ONNX's QuantizeLinear). The skip sums and the fixed
//!   bilinear upsampling stay float32 (see [`crate::onnx`]). **Biases**: int32 with the scale
//!   `input scale x weight scale` of their channel, the form integer convolutions add
//!   to their int32 accumulators.
//! - **Activations**: uint8 with one scale and zero point per tensor, from the range
//!   the float32 network's activation takes on the calibration images (widened to
//!   include 0, so zero padding and ReLU's zeros are exact); a ReLU output has zero
//!   point 0, which lets ONNX Runtime drop the ReLU into the integer convolution.
//!   [`CalibrationMethod`]: the images' extreme values (`minmax`) or the mean over
//!   the images of each image's 0.01 % and 99.99 % quantiles (`percentile`, the
//!   default: a few extreme pixels do not coarsen every other pixel's step).
//! - **Images**: the dataset's images in a fixed pseudo-random order (ChaCha8, seed
//!   0): the first N calibrate, the next M check; so the same dataset always gives the
//!   same images, the same ranges and the same file, and the check never sees a
//!   calibration image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lse_runtime::datasets::{Dataset, DatasetSpec};
use lse_runtime::engine::{Engine, EngineOptions, Provider};
use lse_runtime::labels::ClassSubset;
use lse_runtime::metrics::ConfusionMatrix;
use lse_runtime::provenance::DatasetSummary;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::fcn8s::Fcn8s;
use crate::onnx::ExportError;

/// How activation ranges are taken from the calibration images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationMethod {
    /// The smallest and largest value over all calibration images.
    MinMax,
    /// The mean over the images of each image's [`PERCENTILE`] quantiles.
    #[default]
    Percentile,
}

lse_runtime::choice!(CalibrationMethod, "calibration method" {
    MinMax => "minmax", "the smallest and largest value over all calibration images";
    Percentile => "percentile",
        "the mean over the images of each one's 0.01 % and 99.99 % quantiles (default)";
});

/// The upper quantile of [`CalibrationMethod::Percentile`], in percent (the lower one
/// is `100 - PERCENTILE`).
pub const PERCENTILE: f64 = 99.99;

/// The least arg-max agreement, in percent, of an int8 model with the float32
/// network on held-out images. 8-bit rounding flips the pixels whose float32 top two
/// logits lie within a few quantisation steps of each other; on the committed
/// 1/8-width model (`models/default`, calibrated on 200 target-train images) that is a
/// few percent of the target pixels (the export reports the agreement it measured;
/// docs/quantization.md records it with the mIoU), and a network with wider layers has
/// more channels to average the rounding over. A broken quantisation
/// (an activation range blown up by an outlier, a clipped layer, a wrong scale) flips
/// far more: the test network built to fail agrees on less than half of the pixels.
/// 95 % lies between the two with room on both sides (docs/quantization.md).
pub const MIN_AGREEMENT: f64 = 95.0;

/// An activation's range over the calibration images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub lo: f32,
    pub hi: f32,
}

/// The uint8 quantisation of one activation: `x = (q - zero_point) * scale`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl QParams {
    /// The uint8 parameters that cover `r` widened to include 0, with 0 exact.
    pub fn of(r: Range) -> Self {
        let (lo, hi) = (r.lo.min(0.0), r.hi.max(0.0));
        let scale = (hi - lo) / 255.0;
        if scale <= 0.0 || !scale.is_finite() {
            // An activation that is 0 on every calibration image.
            return Self {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        Self { scale, zero_point }
    }
}

/// The quantisation parameters of every activation, by the names of
/// [`Fcn8s::forward_observed`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivationParams(BTreeMap<String, QParams>);

impl ActivationParams {
    pub fn of(cal: &Calibration) -> Self {
        Self(
            cal.ranges
                .iter()
                .map(|(k, &r)| (k.clone(), QParams::of(r)))
                .collect(),
        )
    }

    pub fn get(&self, point: &str) -> Result<QParams, ExportError> {
        self.0
            .get(point)
            .copied()
            .ok_or_else(|| ExportError::MissingCalibration(point.to_string()))
    }
}

/// The result of a calibration: a range per activation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    pub method: CalibrationMethod,
    pub images: usize,
    pub ranges: BTreeMap<String, Range>,
}

/// Running statistics of one activation.
#[derive(Debug, Clone, Copy)]
struct Stat {
    lo: f64,
    hi: f64,
}

/// Collects the activations' statistics image by image.
struct Observer {
    method: CalibrationMethod,
    stats: BTreeMap<String, Stat>,
    images: usize,
    error: Option<String>,
}

/// The `q`-quantile (0..1) of every value of `x`: the k-th smallest with
/// `k = ceil(q * n)`, at least 1.
fn quantile(x: &Tensor, q: f64) -> Result<f64, tch::TchError> {
    let flat = x.flatten(0, -1);
    let n = flat.size()[0];
    let k = ((q * n as f64).ceil() as i64).clamp(1, n.max(1));
    flat.f_kthvalue(k, 0, false)?.0.f_double_value(&[])
}

impl Observer {
    fn observe(&mut self, name: &str, x: &Tensor) {
        if self.error.is_some() {
            return;
        }
        match self.image_range(x) {
            Ok((lo, hi)) if lo.is_finite() && hi.is_finite() => {
                let s = self.stats.entry(name.to_string()).or_insert(Stat {
                    lo: match self.method {
                        CalibrationMethod::MinMax => f64::INFINITY,
                        CalibrationMethod::Percentile => 0.0,
                    },
                    hi: match self.method {
                        CalibrationMethod::MinMax => f64::NEG_INFINITY,
                        CalibrationMethod::Percentile => 0.0,
                    },
                });
                match self.method {
                    CalibrationMethod::MinMax => {
                        s.lo = s.lo.min(lo);
                        s.hi = s.hi.max(hi);
                    }
                    CalibrationMethod::Percentile => {
                        // Sums; divided by the image count at the end.
                        s.lo += lo;
                        s.hi += hi;
                    }
                }
            }
            Ok((lo, hi)) => {
                self.error = Some(format!(
                    "the activation `{name}` takes non-finite values ({lo} .. {hi})"
                ))
            }
            Err(e) => self.error = Some(format!("the activation `{name}`: {e}")),
        }
    }

    /// The range of one image's activation under the method.
    fn image_range(&self, x: &Tensor) -> Result<(f64, f64), tch::TchError> {
        match self.method {
            CalibrationMethod::MinMax => Ok((
                x.f_min()?.f_double_value(&[])?,
                x.f_max()?.f_double_value(&[])?,
            )),
            CalibrationMethod::Percentile => {
                let x = x.to_kind(Kind::Float);
                let q = PERCENTILE / 100.0;
                Ok((quantile(&x, 1.0 - q)?, quantile(&x, q)?))
            }
        }
    }

    fn finish(self) -> anyhow::Result<Calibration> {
        if let Some(e) = self.error {
            anyhow::bail!("calibration failed: {e}");
        }
        if self.images == 0 {
            anyhow::bail!("calibration needs at least one image");
        }
        let n = self.images as f64;
        let ranges = self
            .stats
            .into_iter()
            .map(|(k, s)| {
                let r = match self.method {
                    CalibrationMethod::MinMax => Range {
                        lo: s.lo as f32,
                        hi: s.hi as f32,
                    },
                    CalibrationMethod::Percentile => Range {
                        lo: (s.lo / n) as f32,
                        hi: (s.hi / n) as f32,
                    },
                };
                (k, r)
            })
            .collect();
        Ok(Calibration {
            method: self.method,
            images: self.images,
            ranges,
        })
    }
}

/// Runs the float32 network on each RGB image (`1 x 3 x H x W`, 0..255) and collects
/// the range of every activation the int8 graph quantises.
pub fn calibrate(
    net: &Fcn8s,
    images: impl IntoIterator<Item = anyhow::Result<Tensor>>,
    method: CalibrationMethod,
) -> anyhow::Result<Calibration> {
    let mut obs = Observer {
        method,
        stats: BTreeMap::new(),
        images: 0,
        error: None,
    };
    for rgb in images {
        let x = crate::fcn8s::preprocess_rgb(&rgb?);
        let _logits =
            tch::no_grad(|| net.forward_observed(&x, &mut |name, t| obs.observe(name, t)));
        obs.images += 1;
        if obs.images.is_multiple_of(20) {
            tracing::info!(images = obs.images, "calibrating");
        }
    }
    obs.finish()
}

/// int8 values and their scales (one per output channel, or one for the tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Symmetric int8 quantisation of `v` in `groups` equal consecutive slices, one scale
/// each: `scale = max |v| / 127` (1 for an all-zero slice), `q = round(v / scale)`.
fn quantize_groups(v: &[f32], groups: usize) -> QuantizedWeight {
    let per = v.len() / groups.max(1);
    let mut values = Vec::with_capacity(v.len());
    let mut scales = Vec::with_capacity(groups);
    for chunk in v.chunks(per.max(1)) {
        let max = chunk.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        values.extend(
            chunk
                .iter()
                .map(|x| (x / scale).round_ties_even().clamp(-127.0, 127.0) as i8),
        );
    }
    QuantizedWeight { values, scales }
}

fn to_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(
        t.to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .contiguous()
            .flatten(0, -1),
    )
    .expect("a float tensor converts")
}

/// A convolution weight (`out x in x k x k`) in int8 with one scale per output channel.
pub fn quantize_weight(w: &Tensor) -> QuantizedWeight {
    quantize_groups(&to_f32(w), w.size()[0] as usize)
}

/// A bias in int32 at scale `x_scale * w_scales[c]` for channel `c`.
pub fn quantize_bias(b: &Tensor, x_scale: f32, w_scales: &[f32]) -> Vec<i32> {
    to_f32(b)
        .iter()
        .zip(w_scales)
        .map(|(v, s)| {
            let q = f64::from(*v) / (f64::from(x_scale) * f64::from(*s));
            q.round_ties_even()
                .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        })
        .collect()
}

/// Which images of a dataset calibrate and which check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSplit {
    pub calibrate: Vec<usize>,
    pub check: Vec<usize>,
}

/// The dataset's `len` indices in a fixed pseudo-random order (ChaCha8, seed 0): the
/// first `calibrate` calibrate, the next `check` check. Too small a dataset is an
/// error that names the numbers.
pub fn split_images(len: usize, calibrate: usize, check: usize) -> anyhow::Result<ImageSplit> {
    if calibrate == 0 {
        anyhow::bail!("--calibrate-images must be at least 1");
    }
    if calibrate + check > len {
        anyhow::bail!(
            "the calibration dataset has {len} images: {calibrate} to calibrate and {check} \
             held out to check need {} (lower --calibrate-images or --check-images)",
            calibrate + check
        );
    }
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    Ok(ImageSplit {
        calibrate: order[..calibrate].to_vec(),
        check: order[calibrate..calibrate + check].to_vec(),
    })
}

/// Image `i` of `ds` resized to `size` as an RGB batch of one (`1 x 3 x H x W`,
/// 0..255, the model contract's input) and its train-id label, if any.
pub fn rgb_input(
    ds: &Dataset,
    i: usize,
    size: [u32; 2],
) -> anyhow::Result<(Tensor, Option<image::GrayImage>)> {
    let (img, label) = ds.load_sample(i, size)?;
    let chw = lse_runtime::imageio::to_rgb_chw(&img);
    let t = Tensor::from_slice(&chw).view([1, 3, i64::from(size[1]), i64::from(size[0])]);
    Ok((t, label))
}

/// How an int8 export is calibrated and checked.
#[derive(Debug, Clone)]
pub struct Int8Options {
    /// The calibration dataset (any the trainer reads: `cityscapes:DIR`, ...).
    pub dataset: DatasetSpec,
    /// Its split (Cityscapes only).
    pub split: String,
    /// Calibration images.
    pub images: usize,
    /// Held-out images the check compares on.
    pub check_images: usize,
    pub method: CalibrationMethod,
}

/// The calibration as recorded in the model (`lse.calibration`): method, dataset
/// summary (kind, folder name, split, image count, list hash) and a hash of the
/// calibration images' names; never a local path.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationRecord {
    pub activations: &'static str,
    /// The dataset's [`DatasetSummary`] text.
    pub dataset: String,
    /// Calibration images.
    pub images: usize,
    /// `list_hash` of the calibration images' names.
    pub images_list: String,
    pub method: CalibrationMethod,
    /// The percentile method's quantile, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    pub selection: &'static str,
    pub weights: &'static str,
}

/// The calibration record of `cal` on `ds` (see [`CalibrationRecord`]).
pub fn calibration_meta(
    cal: &Calibration,
    ds: &Dataset,
    o: &Int8Options,
    split: &ImageSplit,
) -> CalibrationRecord {
    let names = image_names(ds, &split.calibrate);
    CalibrationRecord {
        activations: "uint8 per tensor",
        dataset: DatasetSummary::of(ds, &o.split).to_string(),
        images: cal.images,
        images_list: lse_runtime::provenance::list_hash(&names),
        method: cal.method,
        percentile: (cal.method == CalibrationMethod::Percentile).then_some(PERCENTILE),
        selection: "ChaCha8 seed 0 order: the first images calibrate, the next check",
        weights: "int8 symmetric per output channel",
    }
}

/// The names of images `indices` of `ds`, relative to its folder, `/`-separated.
pub fn image_names(ds: &Dataset, indices: &[usize]) -> Vec<String> {
    indices
        .iter()
        .map(|&i| {
            let s = &ds.samples()[i].image;
            s.strip_prefix(ds.root())
                .unwrap_or(s)
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect()
}

/// The agreement of an int8 model with the float32 network.
#[derive(Debug, Clone, Serialize)]
pub struct Int8Check {
    pub images: usize,
    pub pixels: usize,
    /// Share of pixels whose arg-max agrees, in percent.
    pub argmax_agreement: f64,
    pub argmax_disagreements: usize,
    pub min_agreement: f64,
    /// mIoU (percent) of the float32 network and of the int8 model on the held-out
    /// images at the model's input size, when the dataset has labels.
    pub miou_fp32: Option<f64>,
    pub miou_int8: Option<f64>,
    pub miou_change: Option<f64>,
    pub provider: String,
}

/// Errors of the int8 check.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(
        "agreement check failed for {path}: the int8 model's arg-max agrees with the float32 \
         network on {agreement:.2} % of the pixels of {images} held-out calibration-dataset \
         images ({flips} of {pixels} differ); at least {min:.2} % is required"
    )]
    Agreement {
        path: std::path::PathBuf,
        agreement: f64,
        min: f64,
        images: usize,
        flips: usize,
        pixels: usize,
    },
}

/// Runs the int8 model at `path` in ONNX Runtime and `net` in libtorch on the check
/// images of `ds` (at `size`) and compares their arg-max, and their mIoU where the
/// dataset has labels.
pub fn compare(
    net: &Fcn8s,
    path: &Path,
    ds: &Dataset,
    indices: &[usize],
    size: [u32; 2],
    engine_opts: &EngineOptions,
) -> anyhow::Result<Int8Check> {
    let mut engine = Engine::load(path, engine_opts)?;
    let classes = net.spec.config.classes as usize;
    let (mut cm32, mut cm8) = (ConfusionMatrix::new(classes), ConfusionMatrix::new(classes));
    let (mut pixels, mut same, mut labelled) = (0usize, 0usize, 0usize);
    for &i in indices {
        let (rgb, label) = rgb_input(ds, i, size)?;
        let want = tch::no_grad(|| net.forward_t(&crate::fcn8s::preprocess_rgb(&rgb), false));
        let want: Vec<u8> =
            Vec::try_from(want.argmax(1, false).to_kind(Kind::Uint8).flatten(0, -1))?;
        let data = Vec::<f32>::try_from(rgb.flatten(0, -1))?;
        let (h, w) = (size[1] as usize, size[0] as usize);
        let arr = ndarray::Array4::from_shape_vec((1, 3, h, w), data)?;
        let out = engine.run(arr.view())?;
        let got: Vec<u8> = out.train_ids.iter().copied().collect();
        anyhow::ensure!(
            got.len() == want.len(),
            "ONNX Runtime returned {} train ids for {} pixels",
            got.len(),
            want.len()
        );
        pixels += got.len();
        same += got.iter().zip(&want).filter(|(a, b)| a == b).count();
        if let Some(l) = label {
            cm32.add(l.as_raw(), &want)?;
            cm8.add(l.as_raw(), &got)?;
            labelled += 1;
        }
    }
    let miou = |cm: &ConfusionMatrix| {
        (labelled > 0)
            .then(|| cm.miou(ClassSubset::All19).map(|m| m * 100.0))
            .flatten()
    };
    let (m32, m8) = (miou(&cm32), miou(&cm8));
    Ok(Int8Check {
        images: indices.len(),
        pixels,
        argmax_agreement: 100.0 * same as f64 / pixels.max(1) as f64,
        argmax_disagreements: pixels - same,
        min_agreement: MIN_AGREEMENT,
        miou_fp32: m32,
        miou_int8: m8,
        miou_change: m32.zip(m8).map(|(a, b)| b - a),
        provider: engine.provider().to_string(),
    })
}

/// [`compare`] with the acceptance threshold ([`MIN_AGREEMENT`]) as an error.
pub fn check(
    net: &Fcn8s,
    path: &Path,
    ds: &Dataset,
    indices: &[usize],
    size: [u32; 2],
    engine_opts: &EngineOptions,
) -> anyhow::Result<Int8Check> {
    let c = compare(net, path, ds, indices, size, engine_opts)?;
    // A NaN agreement is refused too.
    if c.argmax_agreement.is_nan() || c.argmax_agreement < MIN_AGREEMENT {
        return Err(QuantizeError::Agreement {
            path: path.to_path_buf(),
            agreement: c.argmax_agreement,
            min: MIN_AGREEMENT,
            images: c.images,
            flips: c.argmax_disagreements,
            pixels: c.pixels,
        }
        .into());
    }
    Ok(c)
}

/// What an int8 export wrote and how it was checked (`lse-train export --precision
/// int8 --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Int8ExportReport {
    pub model: PathBuf,
    pub checkpoint: PathBuf,
    /// The model's input size `[width, height]`.
    pub train_size: [u32; 2],
    pub precision: lse_runtime::contract::Precision,
    /// As recorded in the model.
    pub calibration: CalibrationRecord,
    /// The calibration images, relative to the dataset's folder (so other quantisers
    /// can be calibrated on exactly these images).
    pub calibration_images: Vec<String>,
    /// The agreement check on the held-out images, unless it was turned off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Int8Check>,
}

/// Calibrates `net` on the images of `q` and writes its int8 model to `out`
/// (atomically); unless `o.check` is off, checks it on the held-out images and moves
/// a model that fails to `<out>.failed`. Returns the report that `lse-train export
/// --json` prints.
pub fn export_int8_checked(
    checkpoint: &Path,
    out: &Path,
    o: &crate::export::ExportOptions,
    q: &Int8Options,
) -> anyhow::Result<Int8ExportReport> {
    let (meta, vs, net) = crate::export::load_checkpoint(checkpoint)?;
    let mut model_meta = crate::export::model_meta(&meta, o.train_size)?;
    let ds = Dataset::open_spec(&q.dataset, &q.split, None)
        .with_context(|| format!("opening {} (split {})", q.dataset, q.split))?;
    let split = split_images(ds.len(), q.images, if o.check { q.check_images } else { 0 })?;
    let size = model_meta.train_size;
    tracing::info!(images = q.images, method = %q.method, "calibrating on {}", q.dataset);
    let cal = calibrate(
        &net,
        split
            .calibrate
            .iter()
            .map(|&i| rgb_input(&ds, i, size).map(|(t, _)| t)),
        q.method,
    )?;
    let calibration = calibration_meta(&cal, &ds, q, &split);
    model_meta.precision = lse_runtime::contract::Precision::Int8;
    model_meta.calibration = Some(serde_json::to_value(&calibration)?);
    let params = ActivationParams::of(&cal);
    crate::onnx::export_quantized(&net, &vs, &model_meta, Some(&params), out)?;
    let mut report = Int8ExportReport {
        model: out.to_path_buf(),
        checkpoint: checkpoint.to_path_buf(),
        train_size: size,
        precision: model_meta.precision,
        calibration,
        calibration_images: image_names(&ds, &split.calibrate),
        check: None,
    };
    if o.check {
        let opts = EngineOptions {
            provider: Provider::Cpu,
            ort_lib: o.ort_lib.clone(),
            ..Default::default()
        };
        let c = check(&net, out, &ds, &split.check, size, &opts)
            .map_err(|e| crate::export::refuse(out, e))?;
        tracing::info!(
            argmax_agreement = format!("{:.2} %", c.argmax_agreement),
            min = format!("{MIN_AGREEMENT:.1} %"),
            miou_fp32 = ?c.miou_fp32,
            miou_int8 = ?c.miou_int8,
            "agreement check passed (int8 model in ONNX Runtime vs the float32 network in libtorch)"
        );
        report.check = Some(c);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_params_by_hand() {
        // A ReLU output: zero point 0, 255 steps up to the top.
        let p = QParams::of(Range { lo: 0.0, hi: 2.55 });
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 0.01).abs() < 1e-7);
        // -1 .. 3: scale 4/255, zero point round(255/4) = 64 (63.75).
        let p = QParams::of(Range { lo: -1.0, hi: 3.0 });
        assert_eq!(p.zero_point, 64);
        assert!((p.scale - 4.0 / 255.0).abs() < 1e-7);
        // A range that excludes 0 is widened to include it.
        let p = QParams::of(Range { lo: 1.0, hi: 2.0 });
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 2.0 / 255.0).abs() < 1e-7);
        // Negative only: zero point 255.
        assert_eq!(QParams::of(Range { lo: -5.1, hi: -1.0 }).zero_point, 255);
        assert_eq!(QParams::of(Range { lo: 0.0, hi: 0.0 }).scale, 1.0);
    }

    #[test]
    fn weights_per_channel_by_hand() {
        // Two channels: max 1.27 -> scale 0.01; max 0 -> scale 1, all zero.
        let w = Tensor::from_slice(&[1.27f32, -0.635, 0.005, 0.015, 0.0, 0.0, 0.0, 0.0])
            .view([2, 1, 2, 2]);
        let q = quantize_weight(&w);
        assert_eq!(q.scales.len(), 2);
        assert!((q.scales[0] - 0.01).abs() < 1e-8);
        assert_eq!(q.scales[1], 1.0);
        // 0.005 / 0.01 = 0.5 rounds to even (0), 0.015 / 0.01 = 1.5 to 2, -63.5 to -64.
        assert_eq!(q.values, vec![127, -64, 0, 2, 0, 0, 0, 0]);
        let b = quantize_bias(&Tensor::from_slice(&[0.5f32, -3.0]), 0.5, &[0.01, 1.0]);
        assert_eq!(b, vec![100, -6]);
    }

    #[test]
    fn quantiles_and_image_split() {
        let x = Tensor::arange(1000, (Kind::Float, tch::Device::Cpu));
        assert_eq!(quantile(&x, 0.5).unwrap(), 499.0);
        assert_eq!(quantile(&x, 0.9999).unwrap(), 999.0);
        assert_eq!(quantile(&x, 0.0001).unwrap(), 0.0);
        let s = split_images(10, 6, 3).unwrap();
        assert_eq!(s, split_images(10, 6, 3).unwrap());
        let mut all: Vec<usize> = s.calibrate.iter().chain(&s.check).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 9, "calibration and check images are distinct");
        let err = split_images(10, 8, 3).unwrap_err().to_string();
        assert!(
            err.contains("10 images") && err.contains("need 11"),
            "{err}"
        );
    }
}
