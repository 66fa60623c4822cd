//! One LSE adaptation round (docs/method.md, "One adaptation round") as tensor operations
//! on the probabilities' device.
//!
//! 1. Rank: [`class_scores`] per image, then [`select`] keeps, per class, the first
//!    `floor(N_c * p / C)` images of the class's ranking; the confident set `S` is the
//!    union; the first image not kept is the class's boundary image.
//! 2. Thresholds: [`thresholds`] = mean [`normalized_entropy`] over the pixels
//!    predicted `c` in `c`'s boundary image.
//! 3. Generate: [`reliable_mask`] `M = H' < tau_A`, [`place_windows`] (the
//!    reference's [`random_windows`], or a [`WindowPlacement::Grid`]) and
//!    [`generate_with`] (crop, bilinear upsampling with aligned corners, arg-max,
//!    ignore where the mask carried into the window says so: [`WindowMask`]).
//! 4. Train for [`iterations_per_round`] iterations.
//!
//! Definitions of the degenerate cases (the paper leaves them open):
//!
//! - **Degenerate groups** ([`DegenerateGroups`]). Within the pixels predicted `k`,
//!   `H' = (H - min) / (max - min)`. When the group's `max == min` (a single pixel, or
//!   all its pixels have the same entropy) the reference divides 0 by 0: `H'` is NaN,
//!   a threshold computed from such a group is NaN, every comparison with NaN is
//!   false, and its mask (`ignore iff H' >= tau`) therefore *keeps* those pixels: a
//!   NaN `tau_c` keeps every pixel predicted `c`, and a NaN `H'` keeps its pixel.
//!   [`DegenerateGroups::Keep`] (the default) reproduces this exactly.
//!   [`DegenerateGroups::Drop`] sets such a group's `H'` to 0 instead (as certain as
//!   the most certain pixel of its class), so a threshold of 0 keeps nothing: a class
//!   whose boundary group is degenerate contributes no pseudo-label.
//! - **A class without a threshold (`None`).** Its pixels are *ignored* (mask 0),
//!   never turned into pseudo-labels. With `p < C` (every schedule: p <= 1 < C)
//!   `floor(N_c p / C) < N_c`, so every class predicted somewhere in the target set
//!   has a boundary image and a threshold; `None` only arises for classes skipped
//!   because the source does not teach them (SYNTHIA: terrain, truck, train) and
//!   for classes no image predicts (which then cannot appear in `S` either). The
//!   pixels of a class the source never taught must not become training labels.
//! - **Ties in the ranking** are broken by image index (lower first), so the
//!   selection is deterministic.
//! - **`floor(N_c * p / C)`** is evaluated with a relative tolerance of 1e-9 so that a
//!   product that is an integer in exact arithmetic (e.g. `380 * 0.15 / 19 = 3`) is
//!   not floored to one less by binary rounding of `p`.

use rand::Rng;
use tch::{Device, Kind, Tensor};

use crate::losses::IGNORE_LABEL;

/// Default number of windows per confident image.
pub const DEFAULT_K: usize = 4;
/// Default window scale (half height, half width).
pub const DEFAULT_WINDOW_SCALE: f64 = 0.5;
/// Default epochs per round.
pub const DEFAULT_EPOCHS_PER_ROUND: usize = 2;
/// What a group of pixels whose entropies are all equal (`max == min`, e.g. a class
/// predicted at a single pixel) normalises to; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DegenerateGroups {
    /// NaN, as the reference's 0/0: such pixels and classes are kept.
    #[default]
    Keep,
    /// 0: a degenerate boundary group gives `tau = 0`, which keeps nothing.
    Drop,
}

/// `skip` mask for [`select`]: `true` for the classes in `skipped`.
pub fn skip_mask(classes: usize, skipped: &[usize]) -> Vec<bool> {
    (0..classes).map(|c| skipped.contains(&c)).collect()
}

/// Per-class confidence of one image: for each class `c`, the mean over the pixels
/// whose arg-max is `c` of the maximum probability; `None` when `c` is never the
/// arg-max. `probs`: `C x H x W` softmax probabilities (any float kind, any device).
///
/// Sums are accumulated in f64 so the score does not depend on the pixel count's
/// rounding.
pub fn class_scores(probs: &Tensor) -> Vec<Option<f64>> {
    let c = probs.size()[0];
    let (maxp, arg) = probs.max_dim(0, false);
    let idx = arg.flatten(0, -1);
    let dev = probs.device();
    let sums = Tensor::zeros([c], (Kind::Double, dev)).scatter_add(
        0,
        &idx,
        &maxp.flatten(0, -1).to_kind(Kind::Double),
    );
    let counts = idx.bincount(None::<Tensor>, c).to_kind(Kind::Double);
    let both = Tensor::stack(&[sums, counts], 0).to_device(Device::Cpu);
    let v: Vec<f64> = Vec::try_from(both.flatten(0, -1)).expect("f64 scores");
    let (s, n) = v.split_at(c as usize);
    s.iter()
        .zip(n)
        .map(|(&s, &n)| (n > 0.0).then(|| s / n))
        .collect()
}

/// The outcome of the ranking step.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The share `p` of this round.
    pub p: f64,
    /// `C`, the total number of classes (including skipped ones).
    pub classes: usize,
    /// Per class: the images predicting it, most confident first (ties: lower image
    /// index first). Empty for skipped classes.
    pub rankings: Vec<Vec<usize>>,
    /// Per class: how many images of its ranking are kept, `floor(N_c * p / C)`.
    pub kept: Vec<usize>,
    /// The confident set `S`: union of the kept images, sorted, without duplicates.
    pub confident: Vec<usize>,
    /// Per class: the first image of its ranking that is not kept (`None` when the
    /// ranking is empty or every image is kept).
    pub boundary: Vec<Option<usize>>,
}

/// `floor(n * p / c)` with a tolerance for binary rounding (see the module docs).
pub fn kept_count(n: usize, p: f64, c: usize) -> usize {
    if c == 0 || n == 0 || p <= 0.0 {
        return 0;
    }
    let x = n as f64 * p / c as f64;
    ((x * (1.0 + 1e-9)).floor() as usize).min(n)
}

/// Ranks the images per class and keeps the first `floor(N_c * p / C)` of each.
///
/// `scores[i][c]` is [`class_scores`] of image `i`; `skip[c]` marks classes not
/// learned from the source (they contribute nothing). `C = skip.len()`, the total
/// number of classes, as docs/method.md says (also for a 16-class SYNTHIA source).
///
/// # Panics
/// If an image's score vector does not have `skip.len()` entries.
pub fn select(scores: &[Vec<Option<f64>>], p: f64, skip: &[bool]) -> Selection {
    let classes = skip.len();
    for (i, s) in scores.iter().enumerate() {
        assert_eq!(
            s.len(),
            classes,
            "image {i} has scores for {} classes, expected {classes}",
            s.len()
        );
    }
    let mut rankings = Vec::with_capacity(classes);
    let mut kept = Vec::with_capacity(classes);
    let mut boundary = Vec::with_capacity(classes);
    let mut confident = Vec::new();
    for (c, &skipped) in skip.iter().enumerate() {
        let mut r: Vec<(usize, f64)> = if skipped {
            Vec::new()
        } else {
            scores
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s[c].map(|v| (i, v)))
                .collect()
        };
        r.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let ranking: Vec<usize> = r.into_iter().map(|(i, _)| i).collect();
        let k = kept_count(ranking.len(), p, classes);
        confident.extend_from_slice(&ranking[..k]);
        boundary.push(ranking.get(k).copied());
        kept.push(k);
        rankings.push(ranking);
    }
    confident.sort_unstable();
    confident.dedup();
    Selection {
        p,
        classes,
        rankings,
        kept,
        confident,
        boundary,
    }
}

/// Entropy map `H = -sum_k P_k log P_k` (`H x W`, f32) of `C x H x W` probabilities,
/// with `0 log 0 = 0`.
pub fn entropy(probs: &Tensor) -> Tensor {
    let p = probs.to_kind(Kind::Float);
    -p.xlogy(&p).sum_dim_intlist(0, false, Kind::Float)
}

/// Normalised entropy `H'` and arg-max `A` of `C x H x W` probabilities.
///
/// Per predicted class `k`, `H' = (H - min_k) / (max_k - min_k)` where `min_k`,
/// `max_k` are taken over the pixels predicted `k`; where `max_k == min_k`, `H'` is
/// NaN ([`DegenerateGroups::Keep`]) or 0 ([`DegenerateGroups::Drop`]). The group
/// minima and maxima are one `scatter_reduce` (amin / amax) over the arg-max index
/// each.
pub fn normalized_entropy_and_argmax(
    probs: &Tensor,
    degenerate: DegenerateGroups,
) -> (Tensor, Tensor) {
    let c = probs.size()[0];
    let shape = probs.size()[1..].to_vec();
    let dev = probs.device();
    let h = entropy(probs).flatten(0, -1);
    // max_dim's indices (first maximum on ties, like argmax) are about twice as
    // fast as argmax over a non-innermost dimension on CPU.
    let a = probs.max_dim(0, false).1.flatten(0, -1);
    let mins = Tensor::full([c], f64::INFINITY, (Kind::Float, dev))
        .internal_scatter_reduce(0, &a, &h, "amin", true);
    let maxs = Tensor::full([c], f64::NEG_INFINITY, (Kind::Float, dev))
        .internal_scatter_reduce(0, &a, &h, "amax", true);
    let lo = mins.gather(0, &a, false);
    let range = maxs.gather(0, &a, false) - &lo;
    let positive = range.gt(0.0);
    let fill = match degenerate {
        DegenerateGroups::Keep => f64::NAN,
        DegenerateGroups::Drop => 0.0,
    };
    let hn = ((h - lo) / range.where_self(&positive, &range.ones_like()))
        .where_self(&positive, &range.full_like(fill));
    (hn.view(shape.as_slice()), a.view(shape.as_slice()))
}

/// Normalised entropy `H'` (`H x W`, values in `[0, 1]`, NaN for degenerate groups
/// under [`DegenerateGroups::Keep`]), see [`normalized_entropy_and_argmax`].
pub fn normalized_entropy(probs: &Tensor, degenerate: DegenerateGroups) -> Tensor {
    normalized_entropy_and_argmax(probs, degenerate).0
}

/// Per class `c`: mean of `H'` over the pixels predicted `c` in this image (`None`
/// where `c` is not predicted; NaN for a degenerate group under
/// [`DegenerateGroups::Keep`]), accumulated in f64.
pub fn class_mean_normalized_entropy(
    probs: &Tensor,
    degenerate: DegenerateGroups,
) -> Vec<Option<f64>> {
    let c = probs.size()[0];
    let (hn, a) = normalized_entropy_and_argmax(probs, degenerate);
    let a = a.flatten(0, -1);
    let sums = Tensor::zeros([c], (Kind::Double, probs.device())).scatter_add(
        0,
        &a,
        &hn.flatten(0, -1).to_kind(Kind::Double),
    );
    let counts = a.bincount(None::<Tensor>, c).to_kind(Kind::Double);
    let both = Tensor::stack(&[sums, counts], 0).to_device(Device::Cpu);
    let v: Vec<f64> = Vec::try_from(both.flatten(0, -1)).expect("f64 means");
    let (s, n) = v.split_at(c as usize);
    s.iter()
        .zip(n)
        .map(|(&s, &n)| (n > 0.0).then(|| s / n))
        .collect()
}

/// Dynamic class thresholds: `tau_c` = mean normalised entropy over the pixels
/// predicted `c` in `c`'s boundary image, `boundary_probs[c]` (its `C x H x W`
/// probabilities). `None` when there is no boundary image or `c` is not predicted
/// there; `Some(NaN)` when `c`'s group in its boundary image is degenerate under
/// [`DegenerateGroups::Keep`] (every pixel predicted `c` is then kept). Classes
/// sharing one boundary image (the same tensor storage) share its computation.
pub fn thresholds(
    boundary_probs: &[Option<Tensor>],
    degenerate: DegenerateGroups,
) -> Vec<Option<f64>> {
    type Key = (usize, Vec<i64>, Vec<i64>);
    let mut cache: Vec<(Key, Vec<Option<f64>>)> = Vec::new();
    boundary_probs
        .iter()
        .enumerate()
        .map(|(c, probs)| {
            let probs = probs.as_ref()?;
            let key: Key = (probs.data_ptr() as usize, probs.size(), probs.stride());
            let means = match cache.iter().position(|(k, _)| *k == key) {
                Some(i) => &cache[i].1,
                None => {
                    cache.push((key, class_mean_normalized_entropy(probs, degenerate)));
                    &cache.last().expect("just pushed").1
                }
            };
            means.get(c).copied().flatten()
        })
        .collect()
}

/// The thresholds as a `C` tensor on `device` (`None` -> NaN, masked separately) and
/// whether each class has one.
fn threshold_tensors(thresholds: &[Option<f64>], device: Device) -> (Tensor, Tensor) {
    let v: Vec<f64> = thresholds.iter().map(|t| t.unwrap_or(f64::NAN)).collect();
    let has: Vec<bool> = thresholds.iter().map(Option::is_some).collect();
    (
        Tensor::from_slice(&v).to_device(device),
        Tensor::from_slice(&has).to_device(device),
    )
}

/// Reliable-pixel mask (`H x W`, f32 0/1) of `C x H x W` probabilities, the
/// reference's `M = not (H' >= tau_A)`: equal to `H' < tau_A` for numbers, and a NaN
/// on either side (a degenerate group, see [`DegenerateGroups`]) keeps the pixel.
/// Pixels whose predicted class has no threshold (`None`) are 0 (ignored). The
/// comparison is made in f64 against the f64 thresholds.
///
/// # Panics
/// If `thresholds.len()` is not the number of classes `C`.
pub fn reliable_mask(
    probs: &Tensor,
    thresholds: &[Option<f64>],
    degenerate: DegenerateGroups,
) -> Tensor {
    let c = probs.size()[0];
    assert_eq!(
        thresholds.len() as i64,
        c,
        "{} thresholds for {c} classes",
        thresholds.len()
    );
    let (hn, a) = normalized_entropy_and_argmax(probs, degenerate);
    let (tau, has) = threshold_tensors(thresholds, probs.device());
    let a = a.flatten(0, -1);
    let tau_px = tau.index_select(0, &a).view_as(&hn);
    let has_px = has.index_select(0, &a).view_as(&hn);
    hn.to_kind(Kind::Double)
        .ge_tensor(&tau_px)
        .logical_not()
        .logical_and(&has_px)
        .to_kind(Kind::Float)
}

/// A crop window: top-left corner `(y, x)` and size `h x w`, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub y: i64,
    pub x: i64,
    pub h: i64,
    pub w: i64,
}

/// Window size for an `h x w` image at `scale`: `round(h * scale) x round(w *
/// scale)`, at least 1 and at most the image.
pub fn window_size(h: i64, w: i64, scale: f64) -> (i64, i64) {
    let f = |n: i64| ((n as f64 * scale).round() as i64).clamp(1, n.max(1));
    (f(h), f(w))
}

/// `k` windows of [`window_size`]`(h, w, scale)`, each placed uniformly at random
/// (top-left `y` in `0..=h - wh`, `x` in `0..=w - ww`). `scale = 1.0` gives the whole
/// image (no crop: the plain self-training ablation).
pub fn random_windows<R: Rng + ?Sized>(
    rng: &mut R,
    h: i64,
    w: i64,
    k: usize,
    scale: f64,
) -> Vec<Window> {
    let (wh, ww) = window_size(h, w, scale);
    (0..k)
        .map(|_| Window {
            y: rng.random_range(0..=h - wh),
            x: rng.random_range(0..=w - ww),
            h: wh,
            w: ww,
        })
        .collect()
}

/// Where a round's windows fall (`window_placement`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowPlacement {
    /// The reference's: every top-left corner uniform over the positions that keep
    /// the window inside the image. Positions near the middle are covered by more
    /// windows than the borders.
    #[default]
    Random,
    /// The windows of one scale tile the image as evenly as the scale allows
    /// ([`grid_windows`]); at K = 4 and scale 0.5 a 2x2 grid covering every pixel once.
    Grid,
}

/// How the reliable mask is carried into an upsampled window (`window_mask`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowMask {
    /// The reference's: the mask is upsampled bilinearly like the probabilities and a
    /// pixel is ignored only where the result is exactly 0, i.e. where every source
    /// pixel it interpolates is unreliable. An ignored region shrinks by up to one
    /// source pixel per side; a 1-pixel ignored band vanishes.
    #[default]
    ExactZero,
    /// Each pixel takes the mask of the source pixel nearest to its sample point
    /// ([`nearest_indices`]): ignored regions keep their size.
    Nearest,
    /// A pixel is ignored wherever any unreliable source pixel contributes to its
    /// interpolation: ignored regions grow by up to one source pixel per side.
    AnyIgnored,
}

/// Windows for one image: `k` windows, window `i` of scale `scales[i % scales.len()]`,
/// placed by `placement`. With one scale and [`WindowPlacement::Random`] this draws
/// exactly what [`random_windows`] draws.
///
/// # Panics
/// When `scales` is empty.
pub fn place_windows<R: Rng + ?Sized>(
    rng: &mut R,
    h: i64,
    w: i64,
    k: usize,
    scales: &[f64],
    placement: WindowPlacement,
) -> Vec<Window> {
    assert!(!scales.is_empty(), "at least one window scale");
    let scale_of = |i: usize| scales[i % scales.len()];
    match placement {
        WindowPlacement::Random => (0..k)
            .map(|i| random_windows(rng, h, w, 1, scale_of(i))[0])
            .collect(),
        WindowPlacement::Grid => {
            let mut out = vec![None; k];
            for (s, &scale) in scales.iter().enumerate() {
                let slots: Vec<usize> = (s..k).step_by(scales.len()).collect();
                let placed = grid_windows(rng, h, w, slots.len(), scale);
                for (slot, win) in slots.into_iter().zip(placed) {
                    out[slot] = Some(win);
                }
            }
            out.into_iter()
                .map(|w| w.expect("every slot placed"))
                .collect()
        }
    }
}

/// `m` windows of [`window_size`]`(h, w, scale)` on a grid: `ceil(h / wh)` rows and
/// `ceil(w / ww)` columns of positions spread evenly from one border to the other
/// (the first at 0, the last touching the far border), so the cells cover the image
/// with the least overlap the size allows. Every cell is used `floor(m / cells)` times
/// in row-major order; the `m % cells` windows left over take distinct cells drawn at
/// random.
pub fn grid_windows<R: Rng + ?Sized>(
    rng: &mut R,
    h: i64,
    w: i64,
    m: usize,
    scale: f64,
) -> Vec<Window> {
    let (wh, ww) = window_size(h, w, scale);
    let (ys, xs) = (grid_offsets(h, wh), grid_offsets(w, ww));
    let cells: Vec<Window> = ys
        .iter()
        .flat_map(|&y| xs.iter().map(move |&x| Window { y, x, h: wh, w: ww }))
        .collect();
    let mut out: Vec<Window> = (0..m / cells.len())
        .flat_map(|_| cells.iter().copied())
        .collect();
    let rest = m % cells.len();
    if rest > 0 {
        out.extend(
            rand::seq::index::sample(rng, cells.len(), rest)
                .into_iter()
                .map(|i| cells[i]),
        );
    }
    out
}

/// Offsets of `ceil(len / win)` windows of length `win` spread evenly over `0..=len -
/// win` (rounded to the nearest pixel, halves up).
fn grid_offsets(len: i64, win: i64) -> Vec<i64> {
    let n = (len + win - 1) / win;
    if n <= 1 {
        return vec![0];
    }
    let span = len - win;
    (0..n)
        .map(|i| (2 * i * span + (n - 1)) / (2 * (n - 1)))
        .collect()
}

/// For upsampling `n_in` samples to `n_out` with aligned corners (output `i` samples
/// input position `i * (n_in - 1) / (n_out - 1)`): the index of the input sample
/// nearest to each output's position, halves rounded up. Used for the
/// [`WindowMask::Nearest`] mask and to carry labels (ground truth) into a window.
pub fn nearest_indices(n_in: i64, n_out: i64) -> Vec<i64> {
    if n_out <= 1 {
        return vec![0; n_out.max(0) as usize];
    }
    (0..n_out)
        .map(|i| (2 * i * (n_in - 1) + (n_out - 1)) / (2 * (n_out - 1)))
        .collect()
}

/// For an example of `h x w` made from `win`: the image row of each example row and
/// the image column of each example column, by [`nearest_indices`].
pub fn window_sources(win: &Window, h: i64, w: i64) -> (Vec<i64>, Vec<i64>) {
    let rows = nearest_indices(win.h, h)
        .into_iter()
        .map(|i| i + win.y)
        .collect();
    let cols = nearest_indices(win.w, w)
        .into_iter()
        .map(|i| i + win.x)
        .collect();
    (rows, cols)
}

/// `t` (`... x H x W`) cut to `win` and brought to `h x w` by [`nearest_indices`].
pub fn window_nearest(t: &Tensor, win: &Window, h: i64, w: i64) -> Tensor {
    let dev = t.device();
    let (rows, cols) = window_sources(win, h, w);
    t.index_select(-2, &Tensor::from_slice(&rows).to_device(dev))
        .index_select(-1, &Tensor::from_slice(&cols).to_device(dev))
}

/// The scale-invariant examples of one image.
#[derive(Debug)]
pub struct Generated {
    /// One `(image 3 x H x W f32, labels H x W int64)` per window; views into
    /// [`Generated::images`] and [`Generated::labels`].
    pub examples: Vec<(Tensor, Tensor)>,
    /// All images, `K x 3 x H x W`.
    pub images: Tensor,
    /// All pseudo-labels, `K x H x W` int64 (255 = ignore).
    pub labels: Tensor,
    /// Share of pseudo-label pixels set to ignore, over all windows.
    pub ignored_share: f64,
}

/// [`generate_with`] and the reference's [`WindowMask::ExactZero`].
pub fn generate(image: &Tensor, probs: &Tensor, mask: &Tensor, windows: &[Window]) -> Generated {
    generate_with(image, probs, mask, windows, WindowMask::ExactZero)
}

/// Generates the scale-invariant examples of one image: for each window, crop the
/// image (`3 x H x W`), the probabilities `P` (`C x H x W`) and the mask `M` (`H x
/// W`), upsample them bilinearly with `align_corners = true` back to `H x W` (one
/// interpolation call for all windows), take the arg-max of the upsampled `P` as
/// pseudo-label and set it to 255 where `rule` says the window's pixel is
/// unreliable. Everything stays on the image's device.
///
/// # Panics
/// On mismatched spatial sizes or a window outside the image.
pub fn generate_with(
    image: &Tensor,
    probs: &Tensor,
    mask: &Tensor,
    windows: &[Window],
    rule: WindowMask,
) -> Generated {
    let (ci, h, w) = image.size3().expect("image must be 3 x H x W");
    let c = probs.size()[0];
    assert_eq!(&probs.size()[1..], &[h, w], "probs and image sizes differ");
    assert_eq!(mask.size(), [h, w], "mask and image sizes differ");
    let dev = image.device();
    if windows.is_empty() {
        let images = Tensor::zeros([0, ci, h, w], (Kind::Float, dev));
        let labels = Tensor::zeros([0, h, w], (Kind::Int64, dev));
        return Generated {
            examples: Vec::new(),
            images,
            labels,
            ignored_share: 0.0,
        };
    }
    let probs = probs.to_kind(Kind::Float).to_device(dev);
    let mask = mask.to_kind(Kind::Float).to_device(dev);
    // The mask's channel: M itself, or for `AnyIgnored` the unreliable indicator
    // 1 - M, whose interpolation is exactly 0 only where no unreliable pixel
    // contributes (sums of exact zeros stay exact; a positive weight of a 1 does not).
    let mask_channel = match rule {
        WindowMask::AnyIgnored => mask.ones_like() - &mask,
        WindowMask::ExactZero | WindowMask::Nearest => mask.shallow_clone(),
    };
    let image = image.to_kind(Kind::Float);
    let upsample = |t: &Tensor| t.upsample_bilinear2d([h, w], true, None, None);
    // Image, P and M of each window are copied straight into one K x (3 + C + 1) x
    // wh x ww batch: one copy of the crops, one interpolation call.
    let crop_into = |dst: &Tensor, win: &Window| {
        assert!(
            win.y >= 0 && win.x >= 0 && win.y + win.h <= h && win.x + win.w <= w,
            "window {win:?} outside the {h}x{w} image"
        );
        let cut = |t: &Tensor| t.narrow(-2, win.y, win.h).narrow(-1, win.x, win.w);
        dst.narrow(0, 0, ci).copy_(&cut(&image));
        dst.narrow(0, ci, c).copy_(&cut(&probs));
        dst.get(ci + c).copy_(&cut(&mask_channel));
    };
    let (wh, ww) = (windows[0].h, windows[0].w);
    let up = if windows.iter().all(|win| (win.h, win.w) == (wh, ww)) {
        let k = windows.len() as i64;
        let crops = Tensor::empty([k, ci + c + 1, wh, ww], (Kind::Float, dev));
        for (i, win) in windows.iter().enumerate() {
            crop_into(&crops.get(i as i64), win);
        }
        upsample(&crops)
    } else {
        let ups: Vec<Tensor> = windows
            .iter()
            .map(|win| {
                let crop = Tensor::empty([1, ci + c + 1, win.h, win.w], (Kind::Float, dev));
                crop_into(&crop.get(0), win);
                upsample(&crop)
            })
            .collect();
        Tensor::cat(&ups, 0)
    };
    // A compact copy: a view would keep the whole upsampled stack (P included) alive.
    let images = up.narrow(1, 0, ci).contiguous();
    let m = up.select(1, ci + c);
    let arg = up.narrow(1, ci, c).max_dim(1, false).1;
    let ignore = match rule {
        WindowMask::ExactZero => m.eq(0.0),
        WindowMask::AnyIgnored => m.gt(0.0),
        WindowMask::Nearest => {
            let near: Vec<Tensor> = windows
                .iter()
                .map(|win| window_nearest(&mask, win, h, w))
                .collect();
            Tensor::stack(&near, 0).eq(0.0)
        }
    };
    let labels = arg.masked_fill(&ignore, IGNORE_LABEL);
    let ignored_share = ignore
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    let examples = (0..windows.len() as i64)
        .map(|i| (images.get(i), labels.get(i)))
        .collect();
    Generated {
        examples,
        images,
        labels,
        ignored_share,
    }
}

/// The image of one example, recomputed from the image and its window: the crop
/// upsampled bilinearly (`align_corners = true`) back to the image's size, exactly as
/// [`generate`] computes it (interpolation is per channel). The trainer keeps only
/// windows and labels in memory and rebuilds example images with this.
pub fn window_image(image: &Tensor, win: &Window) -> Tensor {
    let (_, h, w) = image.size3().expect("image must be 3 x H x W");
    image
        .to_kind(Kind::Float)
        .narrow(1, win.y, win.h)
        .narrow(2, win.x, win.w)
        .unsqueeze(0)
        .upsample_bilinear2d([h, w], true, None, None)
        .squeeze_dim(0)
}

/// Training iterations of one round: `epochs` passes over the `|S| * K` examples at
/// `batch` examples per iteration, `ceil(|S| * K * epochs / batch)`.
pub fn iterations_per_round(n_confident: usize, k: usize, epochs: usize, batch: usize) -> usize {
    (n_confident * k * epochs).div_ceil(batch.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cpu() -> (Kind, Device) {
        (Kind::Float, Device::Cpu)
    }

    /// Probabilities `C x 1 x n` from per-pixel rows.
    fn probs_from(rows: &[&[f32]]) -> Tensor {
        let c = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat)
            .view([rows.len() as i64, c])
            .transpose(0, 1)
            .contiguous()
            .view([c, 1, rows.len() as i64])
    }

    fn vec_f32(t: &Tensor) -> Vec<f32> {
        Vec::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
    }

    #[test]
    fn entropy_by_hand_with_zero_probabilities() {
        let p = probs_from(&[&[1.0, 0.0, 0.0], &[0.5, 0.5, 0.0], &[0.25, 0.25, 0.5]]);
        let h = vec_f32(&entropy(&p));
        let expected = [0.0, 2f32.ln(), 1.5 * 2f32.ln()];
        for (a, b) in h.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{h:?}");
        }
        assert!(h.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn normalized_entropy_groups_and_degenerate_cases() {
        // Class 0: three pixels with entropies ln2 (0.5/0.5/0), H(0.6,0.4), 0 -> min 0,
        // max ln2. Class 1: a single pixel -> 0. Class 2: two pixels with the same
        // entropy (max == min) -> 0 and 0.
        let p = probs_from(&[
            &[0.5, 0.5, 0.0],
            &[0.6, 0.4, 0.0],
            &[1.0, 0.0, 0.0],
            &[0.2, 0.7, 0.1],
            &[0.1, 0.1, 0.8],
            &[0.1, 0.1, 0.8],
        ]);
        let drop = DegenerateGroups::Drop;
        let (hn, a) = normalized_entropy_and_argmax(&p, drop);
        let a: Vec<i64> = Vec::try_from(a.flatten(0, -1)).unwrap();
        assert_eq!(a, [0, 0, 0, 1, 2, 2]);
        let hn = vec_f32(&hn);
        let h06 = -(0.6f32 * 0.6f32.ln() + 0.4 * 0.4f32.ln());
        let expected = [1.0, h06 / 2f32.ln(), 0.0, 0.0, 0.0, 0.0];
        for (x, y) in hn.iter().zip(expected) {
            assert!((x - y).abs() < 1e-6, "{hn:?} vs {expected:?}");
        }
        // Thresholds of this image as boundary image for all three classes.
        let t = thresholds(
            &[Some(p.shallow_clone()), Some(p.shallow_clone()), None],
            drop,
        );
        assert!((t[0].unwrap() - (1.0 + (h06 / 2f32.ln()) as f64) / 3.0).abs() < 1e-6);
        assert_eq!(t[1], Some(0.0));
        assert_eq!(t[2], None);
        // Mask: class 0 H' = (1, 0.971, 0) against tau_0 = 0.657 keeps only the last,
        // class 1 with tau 0 (0 < 0 false), class 2 without threshold: ignored.
        let m = vec_f32(&reliable_mask(&p, &t, drop));
        assert_eq!(m, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        // Class 2 with a positive threshold keeps its degenerate (H' = 0) pixels.
        let m = vec_f32(&reliable_mask(&p, &[t[0], t[1], Some(0.1)], drop));
        assert_eq!(m, [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]);

        // The reference's behaviour: degenerate groups are NaN, which keeps them.
        let keep = DegenerateGroups::Keep;
        let hn = vec_f32(&normalized_entropy(&p, keep));
        assert!((hn[0] - 1.0).abs() < 1e-6 && hn[2] == 0.0);
        assert!(hn[3].is_nan() && hn[4].is_nan() && hn[5].is_nan(), "{hn:?}");
        let t = thresholds(
            &[Some(p.shallow_clone()), Some(p.shallow_clone()), None],
            keep,
        );
        assert!((t[0].unwrap() - (1.0 + (h06 / 2f32.ln()) as f64) / 3.0).abs() < 1e-6);
        assert!(t[1].unwrap().is_nan(), "degenerate boundary group: NaN");
        assert_eq!(t[2], None);
        // Class 1 (NaN tau, NaN H') is kept; class 2 has no threshold: ignored even
        // though its H' is NaN.
        let m = vec_f32(&reliable_mask(&p, &t, keep));
        assert_eq!(m, [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
        // A NaN H' is kept against any threshold, even 0.
        let m = vec_f32(&reliable_mask(&p, &[Some(0.0), Some(0.0), Some(0.0)], keep));
        assert_eq!(m, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn class_scores_by_hand() {
        let p = probs_from(&[&[0.5, 0.3, 0.2], &[0.7, 0.2, 0.1], &[0.1, 0.6, 0.3]]);
        let s = class_scores(&p);
        assert!((s[0].unwrap() - 0.6).abs() < 1e-7);
        assert!((s[1].unwrap() - 0.6).abs() < 1e-7);
        assert_eq!(s[2], None);
    }

    #[test]
    fn selection_by_hand() {
        // C = 2 classes, p = 1.0: keep floor(N_c / 2) per class.
        let scores = vec![
            vec![Some(0.9), None],      // 0
            vec![Some(0.5), Some(0.8)], // 1
            vec![Some(0.9), Some(0.1)], // 2 (ties with 0 on class 0)
            vec![Some(0.7), Some(0.8)], // 3 (ties with 1 on class 1)
            vec![None, Some(0.95)],     // 4
        ];
        let s = select(&scores, 1.0, &[false, false]);
        assert_eq!(s.rankings[0], [0, 2, 3, 1]);
        assert_eq!(s.rankings[1], [4, 1, 3, 2]);
        assert_eq!(s.kept, [2, 2]);
        assert_eq!(s.confident, [0, 1, 2, 4]);
        assert_eq!(s.boundary, [Some(3), Some(3)]);
        // p = 0.5: floor(4 * 0.5 / 2) = 1 each.
        let s = select(&scores, 0.5, &[false, false]);
        assert_eq!(s.kept, [1, 1]);
        assert_eq!(s.confident, [0, 4]);
        assert_eq!(s.boundary, [Some(2), Some(1)]);
        // Class 1 skipped: contributes nothing.
        let s = select(&scores, 1.0, &[false, true]);
        assert!(s.rankings[1].is_empty());
        assert_eq!(s.kept, [2, 0]);
        assert_eq!(s.confident, [0, 2]);
        assert_eq!(s.boundary, [Some(3), None]);
        // p = C keeps everything: no boundary.
        let s = select(&scores, 2.0, &[false, false]);
        assert_eq!(s.confident, [0, 1, 2, 3, 4]);
        assert_eq!(s.boundary, [None, None]);
    }

    #[test]
    fn kept_count_floors_exact_products_correctly() {
        assert_eq!(kept_count(380, 0.15, 19), 3);
        assert_eq!(kept_count(379, 0.15, 19), 2);
        assert_eq!(kept_count(2975, 0.1, 19), 15);
        assert_eq!(kept_count(0, 0.4, 19), 0);
        for n in 0..2000 {
            for p in [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4] {
                let exact = n * (p * 100.0f64).round() as usize / (100 * 19);
                assert_eq!(kept_count(n, p, 19), exact, "n {n} p {p}");
            }
        }
    }

    #[test]
    fn synthia_skip_mask() {
        let untaught = lse_runtime::labels::SYNTHIA_UNTAUGHT.map(usize::from);
        let s = skip_mask(19, &untaught);
        assert_eq!(s.iter().filter(|&&b| b).count(), 3);
        assert!(untaught.iter().all(|&c| s[c]) && !s[0]);
    }

    #[test]
    fn windows_are_inside_and_sized() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let ws = random_windows(&mut rng, 512, 1024, 4, 0.5);
        assert_eq!(ws.len(), 4);
        for w in &ws {
            assert_eq!((w.h, w.w), (256, 512));
            assert!(w.y >= 0 && w.y + w.h <= 512 && w.x >= 0 && w.x + w.w <= 1024);
        }
        let full = random_windows(&mut rng, 7, 9, 2, 1.0);
        assert!(full.iter().all(|w| *w
            == Window {
                y: 0,
                x: 0,
                h: 7,
                w: 9
            }));
        // Uniform placement reaches both ends of the range.
        let many = random_windows(&mut rng, 4, 4, 400, 0.5);
        assert!(many.iter().any(|w| w.y == 0) && many.iter().any(|w| w.y == 2));
    }

    #[test]
    fn scale_one_is_identity() {
        let img = Tensor::randn([3, 5, 7], cpu());
        let probs = Tensor::randn([4, 5, 7], cpu()).softmax(0, Kind::Float);
        let mask = Tensor::ones([5, 7], cpu());
        let win = [Window {
            y: 0,
            x: 0,
            h: 5,
            w: 7,
        }];
        let g = generate(&img, &probs, &mask, &win);
        assert!(g.images.get(0).allclose(&img, 1e-6, 1e-6, false));
        assert!(g.labels.get(0).equal(&probs.argmax(0, false)));
        assert_eq!(g.ignored_share, 0.0);
    }

    #[test]
    fn ignore_exactly_where_upsampled_mask_is_zero() {
        // 2x2 window from a 5x5 mask with one reliable pixel at the window's corner.
        let mask = Tensor::zeros([5, 5], cpu());
        let _ = mask.get(1).get(1).fill_(1.0);
        let probs = Tensor::randn([3, 5, 5], cpu()).softmax(0, Kind::Float);
        let img = Tensor::zeros([3, 5, 5], cpu());
        let win = [Window {
            y: 1,
            x: 1,
            h: 2,
            w: 2,
        }];
        let g = generate(&img, &probs, &mask, &win);
        let labels: Vec<i64> = Vec::try_from(g.labels.flatten(0, -1)).unwrap();
        // Align-corners upsampling 2x2 -> 5x5: the value is (1 - y/4)(1 - x/4), zero
        // only on the last row and the last column.
        for y in 0..5 {
            for x in 0..5 {
                let ignored = labels[y * 5 + x] == 255;
                assert_eq!(ignored, y == 4 || x == 4, "({y}, {x})");
            }
        }
        assert!((g.ignored_share - 9.0 / 25.0).abs() < 1e-12);
    }

    #[test]
    fn windows_of_different_sizes_match_one_by_one() {
        let img = Tensor::randn([3, 9, 11], cpu());
        let probs = Tensor::randn([4, 9, 11], cpu()).softmax(0, Kind::Float);
        let mask = Tensor::rand([9, 11], cpu()).gt(0.5).to_kind(Kind::Float);
        let wins = [
            Window {
                y: 1,
                x: 2,
                h: 4,
                w: 5,
            },
            Window {
                y: 0,
                x: 0,
                h: 9,
                w: 11,
            },
            Window {
                y: 5,
                x: 3,
                h: 4,
                w: 8,
            },
        ];
        let all = generate(&img, &probs, &mask, &wins);
        for (i, win) in wins.iter().enumerate() {
            let one = generate(&img, &probs, &mask, std::slice::from_ref(win));
            assert!(
                one.images
                    .get(0)
                    .allclose(&all.images.get(i as i64), 1e-6, 1e-6, false)
            );
            assert!(one.labels.get(0).equal(&all.labels.get(i as i64)));
        }
        // The full window reproduces the inputs.
        assert!(all.images.get(1).allclose(&img, 1e-6, 1e-6, false));
        let expected = probs.argmax(0, false).masked_fill(&mask.eq(0.0), 255);
        assert!(all.labels.get(1).equal(&expected));
    }

    #[test]
    fn iterations() {
        assert_eq!(iterations_per_round(10, 4, 2, 1), 80);
        assert_eq!(iterations_per_round(10, 4, 2, 4), 20);
        // A last, partial batch still counts: 3 * 4 * 2 = 24 examples at batch 5.
        assert_eq!(iterations_per_round(3, 4, 2, 5), 5);
        assert_eq!(iterations_per_round(0, 4, 2, 4), 0);
    }

    #[test]
    fn window_image_equals_generated_images() {
        tch::manual_seed(5);
        let (h, w) = (12i64, 20i64);
        let image = Tensor::randn([3, h, w], (Kind::Float, Device::Cpu));
        let probs = Tensor::randn([4, h, w], (Kind::Float, Device::Cpu)).softmax(0, Kind::Float);
        let mask = Tensor::ones([h, w], (Kind::Float, Device::Cpu));
        let windows = [
            Window {
                y: 0,
                x: 0,
                h: 6,
                w: 10,
            },
            Window {
                y: 5,
                x: 9,
                h: 6,
                w: 10,
            },
        ];
        let g = generate(&image, &probs, &mask, &windows);
        for (i, win) in windows.iter().enumerate() {
            let d = (window_image(&image, win) - g.images.get(i as i64))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d < 1e-6, "window {i}: {d}");
        }
    }

    /// How many windows cover each pixel of an `h x w` image.
    fn coverage(h: i64, w: i64, windows: &[Window]) -> Vec<u32> {
        let mut c = vec![0u32; (h * w) as usize];
        for win in windows {
            for y in win.y..win.y + win.h {
                for x in win.x..win.x + win.w {
                    c[(y * w + x) as usize] += 1;
                }
            }
        }
        c
    }

    #[test]
    fn grid_of_four_half_windows_covers_every_pixel_once() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (h, w) in [(128, 256), (512, 1024), (6, 10)] {
            let ws = place_windows(&mut rng, h, w, 4, &[0.5], WindowPlacement::Grid);
            assert_eq!(ws.len(), 4);
            assert!(
                coverage(h, w, &ws).iter().all(|&n| n == 1),
                "{h}x{w}: {ws:?}"
            );
        }
        // An odd size: the 2x2 grid's cells touch both borders and overlap by one
        // row and one column; every pixel is still covered.
        let ws = place_windows(&mut rng, 7, 9, 4, &[0.5], WindowPlacement::Grid);
        let c = coverage(7, 9, &ws);
        assert!(c.iter().all(|&n| (1..=4).contains(&n)), "{c:?}");
        assert_eq!(
            ws.iter().map(|w| (w.y, w.x)).collect::<Vec<_>>(),
            [(0, 0), (0, 4), (3, 0), (3, 4)]
        );
    }

    #[test]
    fn grid_with_fewer_or_more_windows_than_cells() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        // 3 windows of a 2x2 grid: 3 distinct cells.
        let ws = grid_windows(&mut rng, 8, 8, 3, 0.5);
        let mut cells: Vec<(i64, i64)> = ws.iter().map(|w| (w.y, w.x)).collect();
        cells.sort_unstable();
        cells.dedup();
        assert_eq!(cells.len(), 3);
        // 9 windows: every cell twice, one cell a third time.
        let c = coverage(8, 8, &grid_windows(&mut rng, 8, 8, 9, 0.5));
        let mut counts: Vec<u32> = [0, 4, 32, 36].iter().map(|&i| c[i]).collect();
        counts.sort_unstable();
        assert_eq!(counts, [2, 2, 2, 3]);
        // Scale 1: one cell, the image.
        let full = grid_windows(&mut rng, 5, 7, 2, 1.0);
        assert!(full.iter().all(|w| *w
            == Window {
                y: 0,
                x: 0,
                h: 5,
                w: 7
            }));
    }

    #[test]
    fn random_placement_of_one_scale_draws_as_the_reference() {
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        assert_eq!(
            place_windows(&mut a, 64, 128, 4, &[0.5], WindowPlacement::Random),
            random_windows(&mut b, 64, 128, 4, 0.5)
        );
    }

    #[test]
    fn several_scales_alternate_over_the_windows() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for placement in [WindowPlacement::Random, WindowPlacement::Grid] {
            let ws = place_windows(&mut rng, 64, 128, 4, &[0.5, 0.75], placement);
            let sizes: Vec<(i64, i64)> = ws.iter().map(|w| (w.h, w.w)).collect();
            assert_eq!(
                sizes,
                [(32, 64), (48, 96), (32, 64), (48, 96)],
                "{placement:?}"
            );
        }
    }

    #[test]
    fn nearest_indices_by_hand() {
        // 4 -> 8 with aligned corners: positions i * 3 / 7.
        assert_eq!(nearest_indices(4, 8), [0, 0, 1, 1, 2, 2, 3, 3]);
        // 3 -> 5: positions 0, 0.5, 1, 1.5, 2 (halves up).
        assert_eq!(nearest_indices(3, 5), [0, 1, 1, 2, 2]);
        assert_eq!(nearest_indices(5, 5), [0, 1, 2, 3, 4]);
        assert_eq!(nearest_indices(7, 1), [0]);
    }

    #[test]
    fn mask_rules_on_a_one_pixel_band() {
        // An 8x8 mask, reliable except the column 3 (a 1-pixel band). The 4x4 window
        // at (2, 2) holds the band at its column 1 and is upsampled to 8x8: output
        // column j samples window column j * 3 / 7 = 0, .43, .86, 1.29, 1.71, 2.14,
        // 2.57, 3. The band is at 1.0: no sample point falls on it exactly.
        let mask = Tensor::ones([8, 8], cpu());
        let _ = mask.narrow(1, 3, 1).fill_(0.0);
        let probs = Tensor::randn([3, 8, 8], cpu()).softmax(0, Kind::Float);
        let img = Tensor::zeros([3, 8, 8], cpu());
        let win = [Window {
            y: 2,
            x: 2,
            h: 4,
            w: 4,
        }];
        let ignored_columns = |rule| {
            let g = generate_with(&img, &probs, &mask, &win, rule);
            let labels: Vec<i64> = Vec::try_from(g.labels.flatten(0, -1)).unwrap();
            let cols: Vec<usize> = (0..8).filter(|&x| labels[x] == 255).collect();
            // The mask does not change along rows.
            for y in 1..8 {
                let row: Vec<usize> = (0..8).filter(|&x| labels[y * 8 + x] == 255).collect();
                assert_eq!(row, cols, "{rule:?} row {y}");
            }
            cols
        };
        // The reference: only where every interpolated pixel is unreliable: the band
        // vanishes.
        assert_eq!(ignored_columns(WindowMask::ExactZero), Vec::<usize>::new());
        // Nearest: the samples whose nearest window column is 1 (positions .86, 1.29).
        assert_eq!(ignored_columns(WindowMask::Nearest), [2, 3]);
        // Any ignored pixel contributing: every sample strictly between 0 and 2.
        assert_eq!(ignored_columns(WindowMask::AnyIgnored), [1, 2, 3, 4]);
    }

    #[test]
    fn mask_rules_agree_without_zoom_and_exact_zero_is_the_reference() {
        let probs = Tensor::randn([4, 6, 9], cpu()).softmax(0, Kind::Float);
        let img = Tensor::randn([3, 6, 9], cpu());
        let mask = Tensor::rand([6, 9], cpu()).gt(0.5).to_kind(Kind::Float);
        let full = [Window {
            y: 0,
            x: 0,
            h: 6,
            w: 9,
        }];
        let zoom = [Window {
            y: 1,
            x: 2,
            h: 3,
            w: 4,
        }];
        let labels = |w: &[Window], rule| generate_with(&img, &probs, &mask, w, rule).labels;
        let reference = labels(&full, WindowMask::ExactZero);
        for rule in [WindowMask::Nearest, WindowMask::AnyIgnored] {
            assert!(labels(&full, rule).equal(&reference), "{rule:?}");
        }
        assert!(
            generate(&img, &probs, &mask, &zoom)
                .labels
                .equal(&labels(&zoom, WindowMask::ExactZero))
        );
    }
}
