//! Pseudo-label diagnostics of an adaptation round, measured against the target's
//! ground truth when its adaptation split happens to have labels (the built-in
//! synthetic target, Cityscapes train with gtFine).
//!
//! They answer "why did this round help or hurt?": how many pixels the reliability
//! mask keeps per class and how precise the kept and the dropped pseudo-labels are,
//! whether the confident images really are better labelled than the rest, which
//! confusions the kept pseudo-labels teach, and whether the paper's premise holds
//! (the model is less certain on up-scaled windows than on full images).
//!
//! Nothing here feeds back into the round: the diagnostics read the same
//! probabilities, masks and windows the round computed and the labels it never uses
//! otherwise; selection, thresholds and training are identical with them on or off.

use lse_runtime::labels;
use serde::{Deserialize, Serialize};

/// Pixel counts of one class over the confident images of a round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassCounts {
    /// Pixels predicted as the class (with a ground-truth label).
    pub predicted: u64,
    /// Of those, kept by the reliability mask.
    pub kept: u64,
    /// Kept pixels whose ground truth is the class.
    pub kept_correct: u64,
    /// Dropped pixels whose ground truth is the class.
    pub dropped_correct: u64,
}

impl ClassCounts {
    /// Share of the class's predicted pixels that the mask keeps.
    pub fn kept_share(&self) -> Option<f64> {
        ratio(self.kept, self.predicted)
    }
    /// Precision of the kept pseudo-labels.
    pub fn kept_precision(&self) -> Option<f64> {
        ratio(self.kept_correct, self.kept)
    }
    /// Precision of the dropped pseudo-labels.
    pub fn dropped_precision(&self) -> Option<f64> {
        ratio(self.dropped_correct, self.predicted - self.kept)
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Accumulates the pixel statistics of a round.
#[derive(Debug, Clone)]
pub struct PseudoLabelCounts {
    classes: usize,
    per_class: Vec<ClassCounts>,
    /// `kept_confusion[truth * C + predicted]`: kept pixels by ground truth and
    /// pseudo-label.
    kept_confusion: Vec<u64>,
    /// `(correct, labelled)` pixels of the confident images' predictions.
    confident: (u64, u64),
    /// The same for the images not selected this round.
    others: (u64, u64),
}

impl PseudoLabelCounts {
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            per_class: vec![ClassCounts::default(); classes],
            kept_confusion: vec![0; classes * classes],
            confident: (0, 0),
            others: (0, 0),
        }
    }

    /// Adds one confident image: its predicted classes, reliability mask and ground
    /// truth (train ids, 255 = ignore), all of one size. Pixels without a label are
    /// not counted.
    pub fn add_confident(&mut self, predicted: &[u8], kept: &[bool], truth: &[u8]) {
        assert_eq!(predicted.len(), kept.len(), "mask size");
        assert_eq!(predicted.len(), truth.len(), "label size");
        let c = self.classes;
        for ((&p, &k), &t) in predicted.iter().zip(kept).zip(truth) {
            let (p, t) = (p as usize, t as usize);
            if t >= c || p >= c {
                continue;
            }
            let e = &mut self.per_class[p];
            e.predicted += 1;
            if k {
                e.kept += 1;
                e.kept_correct += u64::from(p == t);
                self.kept_confusion[t * c + p] += 1;
            } else {
                e.dropped_correct += u64::from(p == t);
            }
        }
        add_accuracy(&mut self.confident, predicted, truth, c);
    }

    /// Adds the prediction of an image that was not selected this round.
    pub fn add_other(&mut self, predicted: &[u8], truth: &[u8]) {
        add_accuracy(&mut self.others, predicted, truth, self.classes);
    }

    /// Adds an unselected image by its counts: `correct` of `labelled` pixels.
    pub fn add_other_counts(&mut self, correct: u64, labelled: u64) {
        self.others.0 += correct;
        self.others.1 += labelled;
    }

    /// The `n` most frequent kept confusions (ground truth != pseudo-label).
    pub fn top_confusions(&self, n: usize) -> Vec<Confusion> {
        let c = self.classes;
        let kept: u64 = self.per_class.iter().map(|e| e.kept).sum();
        let mut all: Vec<Confusion> = (0..c * c)
            .filter(|&i| i / c != i % c && self.kept_confusion[i] > 0)
            .map(|i| Confusion {
                truth: labels::train_name((i / c) as u8).to_string(),
                predicted: labels::train_name((i % c) as u8).to_string(),
                pixels: self.kept_confusion[i],
                share_of_kept: self.kept_confusion[i] as f64 / kept.max(1) as f64,
            })
            .collect();
        all.sort_by(|a, b| b.pixels.cmp(&a.pixels).then(a.truth.cmp(&b.truth)));
        all.truncate(n);
        all
    }

    /// The round's summary.
    pub fn summary(&self, premise: Premise) -> RoundDiagnostics {
        let total = self
            .per_class
            .iter()
            .fold(ClassCounts::default(), |a, e| ClassCounts {
                predicted: a.predicted + e.predicted,
                kept: a.kept + e.kept,
                kept_correct: a.kept_correct + e.kept_correct,
                dropped_correct: a.dropped_correct + e.dropped_correct,
            });
        RoundDiagnostics {
            kept_share: total.kept_share(),
            kept_precision: total.kept_precision(),
            dropped_precision: total.dropped_precision(),
            confident_accuracy: ratio(self.confident.0, self.confident.1),
            others_accuracy: ratio(self.others.0, self.others.1),
            per_class: self
                .per_class
                .iter()
                .enumerate()
                .map(|(k, e)| ClassDiagnostics {
                    class: labels::train_name(k as u8).to_string(),
                    kept_share: e.kept_share(),
                    kept_precision: e.kept_precision(),
                    dropped_precision: e.dropped_precision(),
                    counts: e.clone(),
                })
                .collect(),
            confusions: self.top_confusions(5),
            premise,
            window: None,
        }
    }
}

fn add_accuracy(acc: &mut (u64, u64), predicted: &[u8], truth: &[u8], classes: usize) {
    let (correct, labelled) = pixel_accuracy(predicted, truth, classes);
    acc.0 += correct;
    acc.1 += labelled;
}

/// `(correct, labelled)` pixels of an arg-max map against its ground truth (train
/// ids; pixels labelled `classes` or above, e.g. 255, are not counted).
pub fn pixel_accuracy(predicted: &[u8], truth: &[u8], classes: usize) -> (u64, u64) {
    assert_eq!(predicted.len(), truth.len(), "label size");
    predicted
        .iter()
        .zip(truth)
        .filter(|&(_, &t)| (t as usize) < classes)
        .fold((0, 0), |(c, l), (&p, &t)| (c + u64::from(p == t), l + 1))
}

/// A frequent error among the kept pseudo-labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub truth: String,
    pub predicted: String,
    pub pixels: u64,
    pub share_of_kept: f64,
}

/// The paper's premise: mean normalised entropy `H / ln C` (0: certain, 1: uniform)
/// of the model's predictions on full target images, on their up-scaled windows (the
/// scale-invariant examples' inputs) and on source images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Premise {
    pub target_full: Option<f64>,
    pub target_windows: Option<f64>,
    pub source: Option<f64>,
}

/// Mean normalised entropy `H / ln C` of a `C x H x W` probability map: 0 for one-hot
/// predictions, 1 for uniform ones.
pub fn mean_normalized_entropy(probs: &tch::Tensor) -> f64 {
    let c = probs.size()[0] as f64;
    crate::lse::entropy(probs)
        .mean(tch::Kind::Double)
        .double_value(&[])
        / c.ln()
}

/// Running mean of per-image mean entropies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mean {
    sum: f64,
    n: u64,
}

impl Mean {
    pub fn add(&mut self, v: f64) {
        self.sum += v;
        self.n += 1;
    }
    pub fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Per class: what the mask kept and how precise it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassDiagnostics {
    pub class: String,
    pub kept_share: Option<f64>,
    pub kept_precision: Option<f64>,
    pub dropped_precision: Option<f64>,
    pub counts: ClassCounts,
}

/// The diagnostics of one round, as recorded in `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundDiagnostics {
    /// Share of the confident images' labelled pixels kept by the mask.
    pub kept_share: Option<f64>,
    /// Precision of the kept pseudo-labels, and of the dropped ones.
    pub kept_precision: Option<f64>,
    pub dropped_precision: Option<f64>,
    /// Pixel accuracy of the predictions on the confident images, and on the images
    /// not selected.
    pub confident_accuracy: Option<f64>,
    pub others_accuracy: Option<f64>,
    pub per_class: Vec<ClassDiagnostics>,
    /// The most frequent confusions among kept pseudo-labels.
    pub confusions: Vec<Confusion>,
    pub premise: Premise,
    /// What was trained on: the generated examples after masking (absent in runs
    /// made before it was measured).
    #[serde(default)]
    pub window: Option<WindowDiagnostics>,
}

/// What a round actually trains on: every generated example after upsampling and
/// masking, pixel by pixel, against the ground truth of its window (cut and brought
/// to the example's size by nearest neighbour, as the labels are), and where in the
/// image the trained pixels come from.
#[derive(Debug, Clone)]
pub struct WindowCounts {
    classes: usize,
    /// Image size `(h, w)`; the coverage map is over image positions.
    size: (usize, usize),
    /// Example pixels, and of those the ignored ones (pseudo-label 255).
    pixels: u64,
    ignored: u64,
    /// Per pseudo-label class: trained pixels, those with a ground-truth label, and
    /// the correct ones among them.
    trained: Vec<u64>,
    labelled: Vec<u64>,
    correct: Vec<u64>,
    /// `coverage[y * w + x]`: trained pixels whose interpolation point is nearest to
    /// image position `(y, x)`.
    coverage: Vec<u64>,
}

impl WindowCounts {
    pub fn new(classes: usize, h: usize, w: usize) -> Self {
        Self {
            classes,
            size: (h, w),
            pixels: 0,
            ignored: 0,
            trained: vec![0; classes],
            labelled: vec![0; classes],
            correct: vec![0; classes],
            coverage: vec![0; h * w],
        }
    }

    /// Adds one example of `rows.len() x cols.len()` pixels: its pseudo-labels (255 =
    /// ignored), the window's ground truth at the same size (255 = unlabelled), and
    /// for each example row and column the image row and column its pixels come from
    /// (`lse::nearest_indices` plus the window's corner).
    pub fn add_window(&mut self, pseudo: &[u8], truth: &[u8], rows: &[i64], cols: &[i64]) {
        let (h, w) = self.size;
        assert_eq!(pseudo.len(), rows.len() * cols.len(), "example size");
        assert_eq!(pseudo.len(), truth.len(), "ground-truth size");
        for (i, &y) in rows.iter().enumerate() {
            for (j, &x) in cols.iter().enumerate() {
                let k = i * cols.len() + j;
                self.pixels += 1;
                let (p, t) = (pseudo[k] as usize, truth[k] as usize);
                if p >= self.classes {
                    self.ignored += 1;
                    continue;
                }
                self.trained[p] += 1;
                assert!(
                    (y as usize) < h && (x as usize) < w,
                    "source ({y}, {x}) outside {h}x{w}"
                );
                self.coverage[y as usize * w + x as usize] += 1;
                if t < self.classes {
                    self.labelled[p] += 1;
                    self.correct[p] += u64::from(p == t);
                }
            }
        }
    }

    /// The round's summary, the coverage map in at most `64 x 32` bins.
    pub fn summary(&self) -> WindowDiagnostics {
        let trained: u64 = self.trained.iter().sum();
        WindowDiagnostics {
            examples_pixels: self.pixels,
            trained_pixels: trained,
            ignored_share: ratio(self.ignored, self.pixels),
            precision: ratio(self.correct.iter().sum(), self.labelled.iter().sum()),
            per_class: (0..self.classes)
                .map(|k| WindowClass {
                    class: labels::train_name(k as u8).to_string(),
                    trained_share: ratio(self.trained[k], trained),
                    precision: ratio(self.correct[k], self.labelled[k]),
                })
                .collect(),
            central_quarter_share: self.region_share(|y, x, h, w| {
                (h / 4..h - h / 4).contains(&y) && (w / 4..w - w / 4).contains(&x)
            }),
            top_bottom_bands_share: self.region_share(|y, _, h, _| y < h / 4 || y >= h - h / 4),
            coverage: self.coverage_map(64, 32),
        }
    }

    /// Share of the trained pixels that come from the image positions in `region`.
    fn region_share(&self, region: impl Fn(usize, usize, usize, usize) -> bool) -> Option<f64> {
        let (h, w) = self.size;
        let inside: u64 = (0..h * w)
            .filter(|&i| region(i / w, i % w, h, w))
            .map(|i| self.coverage[i])
            .sum();
        ratio(inside, self.coverage.iter().sum())
    }

    /// The coverage in `min(w, max_w) x min(h, max_h)` bins, each the density of
    /// trained pixels over its positions relative to a uniform spread (1 = uniform).
    fn coverage_map(&self, max_w: usize, max_h: usize) -> CoverageMap {
        let (h, w) = self.size;
        let (bw, bh) = (w.min(max_w), h.min(max_h));
        let mut sum = vec![0u64; bw * bh];
        let mut area = vec![0u64; bw * bh];
        for y in 0..h {
            for x in 0..w {
                let b = (y * bh / h) * bw + x * bw / w;
                sum[b] += self.coverage[y * w + x];
                area[b] += 1;
            }
        }
        let total: u64 = self.coverage.iter().sum();
        let uniform = total as f64 / (h * w).max(1) as f64;
        let density = sum
            .iter()
            .zip(&area)
            .map(|(&s, &a)| {
                if uniform > 0.0 {
                    (s as f64 / a as f64 / uniform) as f32
                } else {
                    0.0
                }
            })
            .collect();
        CoverageMap {
            width: bw,
            height: bh,
            density,
        }
    }
}

/// Where a round's trained pixels come from, binned: `density[row * width + col]`,
/// the bin's trained pixels per image position relative to a uniform spread (1.0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoverageMap {
    pub width: usize,
    pub height: usize,
    pub density: Vec<f32>,
}

impl CoverageMap {
    /// The coverage of several rounds as one map: each round's densities weighted by
    /// its trained pixels (`None` for no map, or maps of different bins).
    pub fn combine(rounds: &[&WindowDiagnostics]) -> Option<CoverageMap> {
        let first = &rounds.first()?.coverage;
        let (width, height) = (first.width, first.height);
        if rounds
            .iter()
            .any(|r| (r.coverage.width, r.coverage.height) != (width, height))
        {
            return None;
        }
        let total: u64 = rounds.iter().map(|r| r.trained_pixels).sum();
        let density = (0..width * height)
            .map(|i| {
                let sum: f64 = rounds
                    .iter()
                    .map(|r| f64::from(r.coverage.density[i]) * r.trained_pixels as f64)
                    .sum();
                (sum / total.max(1) as f64) as f32
            })
            .collect();
        Some(CoverageMap {
            width,
            height,
            density,
        })
    }
}

/// One class of the window-level diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowClass {
    pub class: String,
    /// Share of all trained pixels that carry this pseudo-label.
    pub trained_share: Option<f64>,
    /// Precision of those pseudo-labels against the window's ground truth.
    pub precision: Option<f64>,
}

/// The labels a round trains on, as recorded in `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowDiagnostics {
    /// Pixels of all generated examples, and of those the trained (not ignored) ones.
    pub examples_pixels: u64,
    pub trained_pixels: u64,
    /// Share of the examples' pixels set to ignore.
    pub ignored_share: Option<f64>,
    /// Precision of the trained pseudo-labels against the windows' ground truth.
    pub precision: Option<f64>,
    pub per_class: Vec<WindowClass>,
    /// Share of the trained pixels from the central quarter of the image (the middle
    /// half of its rows and of its columns; 0.25 when spread uniformly).
    pub central_quarter_share: Option<f64>,
    /// Share from the top and bottom quarter-bands of rows (0.5 when uniform).
    pub top_bottom_bands_share: Option<f64>,
    pub coverage: CoverageMap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_entropy_by_hand() {
        // Two pixels of 4 classes: uniform (H = ln 4) and (0.5, 0.5, 0, 0) (H = ln 2),
        // so the mean of H / ln 4 is (1 + 0.5) / 2.
        let probs = tch::Tensor::from_slice(&[0.25f32, 0.5, 0.25, 0.5, 0.25, 0.0, 0.25, 0.0])
            .view([4, 1, 2]);
        assert!((mean_normalized_entropy(&probs) - 0.75).abs() < 1e-6);
    }

    #[test]
    fn counts_by_hand() {
        let mut d = PseudoLabelCounts::new(3);
        // pixel: predicted, kept, truth
        // 0: 0 kept, truth 0 (correct kept)
        // 1: 0 kept, truth 1 (wrong kept: truth 1 -> predicted 0)
        // 2: 0 dropped, truth 0 (correct dropped)
        // 3: 2 dropped, truth 1 (wrong dropped)
        // 4: 1 kept, truth 255 (not counted)
        // 5: 2 kept, truth 2 (correct kept)
        d.add_confident(
            &[0, 0, 0, 2, 1, 2],
            &[true, true, false, false, true, true],
            &[0, 1, 0, 1, 255, 2],
        );
        d.add_other(&[1, 1, 0], &[1, 0, 255]);
        let s = d.summary(Premise::default());
        assert_eq!(s.per_class[0].counts.predicted, 3);
        assert_eq!(s.per_class[0].kept_share, Some(2.0 / 3.0));
        assert_eq!(s.per_class[0].kept_precision, Some(0.5));
        assert_eq!(s.per_class[0].dropped_precision, Some(1.0));
        assert_eq!(s.per_class[1].counts.predicted, 0);
        assert_eq!(s.per_class[1].kept_share, None);
        assert_eq!(s.per_class[2].dropped_precision, Some(0.0));
        // 5 labelled pixels, 3 kept of which 2 correct; 2 dropped of which 1 correct.
        assert_eq!(s.kept_share, Some(3.0 / 5.0));
        assert_eq!(s.kept_precision, Some(2.0 / 3.0));
        assert_eq!(s.dropped_precision, Some(0.5));
        // Confident images: 3 of 5 labelled pixels correct; others: 1 of 2.
        assert_eq!(s.confident_accuracy, Some(0.6));
        assert_eq!(s.others_accuracy, Some(0.5));
        assert_eq!(s.confusions.len(), 1);
        assert_eq!(
            (
                s.confusions[0].truth.as_str(),
                s.confusions[0].predicted.as_str()
            ),
            ("sidewalk", "road")
        );
        assert_eq!(s.confusions[0].pixels, 1);
        assert!((s.confusions[0].share_of_kept - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn mean_of_nothing_is_none() {
        let mut m = Mean::default();
        assert_eq!(m.get(), None);
        m.add(0.25);
        m.add(0.75);
        assert_eq!(m.get(), Some(0.5));
    }

    #[test]
    fn window_counts_by_hand() {
        // A 2x4 image, 2 classes. One example of 2x2 pixels from the window at rows
        // 0..2, columns 2..4 (nearest source rows [0, 1], columns [2, 3]).
        let mut w = WindowCounts::new(2, 2, 4);
        // pixel: pseudo, truth
        // (0,0): 0, 0 correct      -> source (0, 2)
        // (0,1): 255 ignored       -> source (0, 3)
        // (1,0): 1, 0 wrong        -> source (1, 2)
        // (1,1): 1, 255 unlabelled -> source (1, 3)
        w.add_window(&[0, 255, 1, 1], &[0, 0, 0, 255], &[0, 1], &[2, 3]);
        // A second example: the same window zoomed, every pixel from source (0, 2).
        w.add_window(&[0, 0], &[0, 1], &[0], &[2, 2]);
        let s = w.summary();
        assert_eq!((s.examples_pixels, s.trained_pixels), (6, 5));
        assert_eq!(s.ignored_share, Some(1.0 / 6.0));
        // Labelled trained pixels: class 0: 3 (2 correct), class 1: 1 (0 correct).
        assert_eq!(s.precision, Some(2.0 / 4.0));
        assert_eq!(s.per_class[0].precision, Some(2.0 / 3.0));
        assert_eq!(s.per_class[1].precision, Some(0.0));
        assert_eq!(s.per_class[0].trained_share, Some(3.0 / 5.0));
        // Coverage: (0,2) 3 pixels, (1,2) 1, (1,3) 1; uniform is 5 / 8 per position.
        let d = &s.coverage.density;
        assert_eq!((s.coverage.width, s.coverage.height), (4, 2));
        assert_eq!(d[2], (3.0 / (5.0 / 8.0)) as f32);
        assert_eq!(d[6], (1.0 / (5.0 / 8.0)) as f32);
        assert_eq!(d[0], 0.0);
        // Rows: h / 4 = 0, so no row is in a quarter-band; columns 1..3 are central.
        assert_eq!(s.top_bottom_bands_share, Some(0.0));
        assert_eq!(s.central_quarter_share, Some(4.0 / 5.0));
    }

    #[test]
    fn coverage_bins_average_their_positions() {
        // 4x8 image into at most 4x2 bins: each bin 2x2 positions.
        let mut w = WindowCounts::new(1, 4, 8);
        let rows: Vec<i64> = (0..4).collect();
        let cols: Vec<i64> = (0..8).collect();
        // Every position once, plus position (0, 0) three more times.
        w.add_window(&[0; 32], &[255; 32], &rows, &cols);
        w.add_window(&[0; 3], &[255; 3], &[0], &[0, 0, 0]);
        let m = w.coverage_map(4, 2);
        assert_eq!((m.width, m.height), (4, 2));
        let uniform = 35.0 / 32.0;
        assert_eq!(
            m.density[0],
            ((1.0 + 1.0 + 1.0 + 4.0) / 4.0 / uniform) as f32
        );
        assert_eq!(m.density[1], (1.0 / uniform) as f32);
    }
}
