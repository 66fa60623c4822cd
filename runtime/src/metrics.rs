//! The confusion matrix and (m)IoU of the Cityscapes protocol.
//!
//! One [`ConfusionMatrix`] is accumulated over all pixels of all images whose ground
//! truth is a train class (ignored pixels, train id 255, are skipped). Rows are the
//! ground truth, columns the prediction; predictions outside the class range (e.g. an
//! ignore prediction) land in one extra "other" column, so they count as false
//! negatives of the true class and as nobody's false positive, exactly as in the
//! official `evalPixelLevelSemanticLabeling.py`.
//!
//! `IoU_c = TP / (TP + FP + FN)`; a class with `TP + FP + FN = 0` (neither in the
//! ground truth nor predicted) has no IoU. The mIoU of a [`ClassSubset`] is the mean of
//! the defined IoUs of its classes; all values are fractions in `[0, 1]`.

use serde::{Deserialize, Serialize};

use crate::labels::{self, ClassSubset, IGNORE};

/// Errors of accumulating a confusion matrix.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("prediction has {pred} pixels but the ground truth has {gt}")]
    Length { pred: usize, gt: usize },
    #[error("cannot merge confusion matrices of {a} and {b} classes")]
    Classes { a: usize, b: usize },
}

/// A `C x (C + 1)` confusion matrix of pixel counts (ground truth x prediction, the
/// last column counting predictions outside `0..C`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

impl Default for ConfusionMatrix {
    fn default() -> Self {
        Self::new(labels::NUM_CLASSES)
    }
}

impl ConfusionMatrix {
    /// An empty matrix over `classes` train ids (`0..classes`, at most 255).
    pub fn new(classes: usize) -> Self {
        let classes = classes.min(255);
        Self {
            classes,
            counts: vec![0; classes * (classes + 1)],
        }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Adds one image: `gt` and `pred` are train-id maps of the same length. Pixels
    /// whose ground truth is not a class (255 or `>= classes`) are skipped.
    pub fn add(&mut self, gt: &[u8], pred: &[u8]) -> Result<(), MetricsError> {
        if gt.len() != pred.len() {
            return Err(MetricsError::Length {
                pred: pred.len(),
                gt: gt.len(),
            });
        }
        let c = self.classes;
        for (&g, &p) in gt.iter().zip(pred) {
            let g = g as usize;
            if g >= c {
                continue;
            }
            let p = (p as usize).min(c);
            self.counts[g * (c + 1) + p] += 1;
        }
        Ok(())
    }

    /// Adds another matrix's counts (for parallel accumulation).
    pub fn merge(&mut self, other: &Self) -> Result<(), MetricsError> {
        if other.classes != self.classes {
            return Err(MetricsError::Classes {
                a: self.classes,
                b: other.classes,
            });
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// Pixels of ground-truth class `gt` predicted as `pred` (`pred == classes` is
    /// the "other" column).
    pub fn get(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * (self.classes + 1) + pred]
    }

    /// All counted (non-ignored) pixels.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// True positives, false positives and false negatives of class `c`.
    pub fn tp_fp_fn(&self, c: usize) -> (u64, u64, u64) {
        let tp = self.get(c, c);
        let fp = (0..self.classes).map(|g| self.get(g, c)).sum::<u64>() - tp;
        let fn_ = (0..=self.classes).map(|p| self.get(c, p)).sum::<u64>() - tp;
        (tp, fp, fn_)
    }

    /// IoU of class `c`, `None` when it neither occurs nor is predicted.
    pub fn iou(&self, c: usize) -> Option<f64> {
        let (tp, fp, fn_) = self.tp_fp_fn(c);
        let denom = tp + fp + fn_;
        (denom > 0).then(|| tp as f64 / denom as f64)
    }

    /// Correct pixels over counted pixels, `None` when nothing was counted.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let total = self.total();
        let correct: u64 = (0..self.classes).map(|c| self.get(c, c)).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    /// Mean of the defined IoUs of the subset's classes.
    pub fn miou(&self, subset: ClassSubset) -> Option<f64> {
        let ious: Vec<f64> = subset
            .train_ids()
            .into_iter()
            .filter(|&c| (c as usize) < self.classes)
            .filter_map(|c| self.iou(c as usize))
            .collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }

    /// The full report over a subset of the Cityscapes train classes.
    pub fn report(&self, subset: ClassSubset) -> Report {
        let classes = subset
            .train_ids()
            .into_iter()
            .filter(|&c| (c as usize) < self.classes)
            .map(|c| {
                let (tp, fp, fn_) = self.tp_fp_fn(c as usize);
                ClassIou {
                    train_id: c,
                    name: labels::train_name(c).to_string(),
                    iou: self.iou(c as usize),
                    tp,
                    fp,
                    fn_,
                }
            })
            .collect();
        Report {
            subset,
            classes,
            miou: self.miou(subset),
            pixel_accuracy: self.pixel_accuracy(),
            pixels: self.total(),
        }
    }
}

/// Adds one image to `cm` after mapping both maps through `lut` (e.g. label id ->
/// train id); `gt` pixels that map to [`IGNORE`] are skipped.
pub fn add_mapped(
    cm: &mut ConfusionMatrix,
    gt: &[u8],
    pred: &[u8],
    lut: &[u8; 256],
) -> Result<(), MetricsError> {
    if gt.len() != pred.len() {
        return Err(MetricsError::Length {
            pred: pred.len(),
            gt: gt.len(),
        });
    }
    let c = cm.classes;
    for (&g, &p) in gt.iter().zip(pred) {
        let g = lut[g as usize];
        if g == IGNORE || g as usize >= c {
            continue;
        }
        let p = (lut[p as usize] as usize).min(c);
        cm.counts[g as usize * (c + 1) + p] += 1;
    }
    Ok(())
}

/// IoU of one class in a [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassIou {
    pub train_id: u8,
    pub name: String,
    /// `None` (JSON `null`) when the class neither occurs nor is predicted.
    pub iou: Option<f64>,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

/// Per-class IoU, mIoU and pixel accuracy over a class subset (fractions in `[0, 1]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub subset: ClassSubset,
    pub classes: Vec<ClassIou>,
    pub miou: Option<f64>,
    /// Over all counted pixels (all classes, not only the subset's).
    pub pixel_accuracy: Option<f64>,
    /// Pixels counted (ground truth not ignored).
    pub pixels: u64,
}

impl Report {
    /// A human-readable table (percentages).
    pub fn table(&self) -> String {
        let pct = |v: Option<f64>| {
            v.map_or_else(|| "   n/a".to_string(), |v| format!("{:6.2}", v * 100.0))
        };
        let mut s = String::new();
        s.push_str("class            IoU (%)\n");
        s.push_str("-----------------------\n");
        for c in &self.classes {
            s.push_str(&format!("{:<15} {}\n", c.name, pct(c.iou)));
        }
        s.push_str("-----------------------\n");
        s.push_str(&format!(
            "mIoU ({:>2} cls)   {}\n",
            self.subset.count(),
            pct(self.miou)
        ));
        s.push_str(&format!("pixel accuracy  {}\n", pct(self.pixel_accuracy)));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn hand_computed_ious() {
        // gt:   0 0 0 1 1 255 2
        // pred: 0 0 1 1 255 0 1
        let gt = [0u8, 0, 0, 1, 1, 255, 2];
        let pred = [0u8, 0, 1, 1, 255, 0, 1];
        let mut cm = ConfusionMatrix::new(19);
        cm.add(&gt, &pred).unwrap();
        // class 0: tp 2, fp 0 (the ignored pixel does not count), fn 1 -> 2/3
        assert!(close(cm.iou(0), 2.0 / 3.0));
        // class 1: tp 1, fp 2 (gt 0 and gt 2), fn 1 (predicted ignore) -> 1/4
        assert!(close(cm.iou(1), 0.25));
        // class 2: tp 0, fn 1 -> 0
        assert!(close(cm.iou(2), 0.0));
        assert_eq!(cm.iou(3), None);
        assert!(close(cm.miou(ClassSubset::All19), (2.0 / 3.0 + 0.25) / 3.0));
        assert!(close(cm.pixel_accuracy(), 3.0 / 6.0));
        assert_eq!(cm.total(), 6);
    }

    #[test]
    fn subsets_average_their_classes() {
        let gt = [3u8, 3, 0, 0];
        let pred = [3u8, 0, 0, 0];
        let mut cm = ConfusionMatrix::default();
        cm.add(&gt, &pred).unwrap();
        // class 0: 2/3; class 3 (wall): 1/2
        assert!(close(cm.miou(ClassSubset::All19), (2.0 / 3.0 + 0.5) / 2.0));
        assert!(close(cm.miou(ClassSubset::Synthia13), 2.0 / 3.0));
        let r = cm.report(ClassSubset::Synthia13);
        assert_eq!(r.classes.len(), 13);
        assert!(r.classes.iter().all(|c| c.train_id != 3));
    }

    #[test]
    fn merge_equals_joint_accumulation() {
        let (g1, p1) = ([0u8, 1, 2], [0u8, 2, 2]);
        let (g2, p2) = ([2u8, 2, 255], [1u8, 2, 7]);
        let mut a = ConfusionMatrix::default();
        a.add(&g1, &p1).unwrap();
        let mut b = ConfusionMatrix::default();
        b.add(&g2, &p2).unwrap();
        a.merge(&b).unwrap();
        let mut j = ConfusionMatrix::default();
        j.add(&[0, 1, 2, 2, 2, 255], &[0, 2, 2, 1, 2, 7]).unwrap();
        assert_eq!(a, j);
        assert!(a.add(&[0], &[0, 1]).is_err());
    }

    #[test]
    fn mapped_label_ids() {
        let lut = labels::label_to_train_lut();
        let mut cm = ConfusionMatrix::default();
        // road(7)->road, car(26)->road, unlabeled(0) gt skipped
        add_mapped(&mut cm, &[7, 26, 0], &[7, 7, 26], &lut).unwrap();
        assert!(close(cm.iou(0), 0.5));
        assert!(close(cm.iou(13), 0.0));
        assert_eq!(cm.total(), 2);
    }
}
