//! Evaluations: the Cityscapes protocol over two folder trees, and [`Evaluation`], the
//! record every evaluation of the project is written as.
//!
//! Folders ([`folder_confusion`], `lse eval`, `lse bench --images`): every
//! ground-truth file (`*_gtFine_labelIds.png`, or `*_gtFine_labelTrainIds.png` with
//! [`Ids::Train`]) is matched to exactly one prediction PNG anywhere under the
//! prediction folder whose name contains its `<city>_<seq>_<frame>` prefix, as the
//! official `evalPixelLevelSemanticLabeling.py` does. One confusion matrix is
//! accumulated over all pixels whose ground truth is not ignored.
//!
//! [`Evaluation`] is what `lse eval --json` prints, what the trainer records after a
//! round and at the end of a run (`run.json`'s `evaluation` and `initial_evaluation`,
//! the checkpoint's and so the model's `evaluation` metadata), what `lse-train eval
//! --json` prints and what a published model's `eval.json` holds. Two shapes have
//! always been written and both are kept field for field: a folder evaluation
//! ([`Evaluation::of_folders`]) names its folders and ids and lists `classes` with
//! their pixel counts; a dataset evaluation ([`Evaluation::of_split`]) names its split
//! and lists `per_class` names and IoUs. Fields a shape does not have are left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::datasets::{DatasetError, cityscapes_key, walk_files};
use crate::imageio::{self, ImageError};
use crate::labels::{self, ClassSubset};
use crate::metrics::{self, ClassIou, ConfusionMatrix, MetricsError, Report};

/// Which ids the PNGs of a folder evaluation hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ids {
    /// Cityscapes label ids (7 road ... 33 bicycle), the official results format.
    #[default]
    Label,
    /// Train ids (0..18, 255 ignore).
    Train,
}

crate::choice!(Ids, "ids" {
    Label => "label", "Cityscapes label ids (7 road ... 33 bicycle), the official results format";
    Train => "train", "train ids (0..18, 255 ignore)";
});

impl Ids {
    /// Lookup table from the ids in the files to train ids.
    pub fn to_train_lut(self) -> [u8; 256] {
        match self {
            Ids::Label => labels::label_to_train_lut(),
            Ids::Train => {
                let mut lut = [labels::IGNORE; 256];
                for (t, v) in lut.iter_mut().enumerate().take(labels::NUM_CLASSES) {
                    *v = t as u8;
                }
                lut
            }
        }
    }

    /// The file-name suffix of the ground truth holding these ids.
    pub fn gt_suffix(self) -> &'static str {
        match self {
            Ids::Label => "_gtFine_labelIds.png",
            Ids::Train => "_gtFine_labelTrainIds.png",
        }
    }
}

/// Errors of a folder evaluation; each names the folder, file or frame.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("reading {what} {dir}")]
    Walk {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: DatasetError,
    },
    #[error("no ground-truth files *{suffix} under {dir}")]
    NoGroundTruth { dir: PathBuf, suffix: &'static str },
    #[error("ground-truth file {0} is not named <city>_<seq>_<frame>_...")]
    BadName(PathBuf),
    #[error("{count} frame(s) without exactly one prediction under {dir}: {list}")]
    Unmatched {
        dir: PathBuf,
        count: usize,
        list: String,
    },
    #[error("frame {frame}")]
    Image {
        frame: String,
        #[source]
        source: ImageError,
    },
    #[error(
        "frame {frame}: prediction {} is {}x{} but the ground truth {} is {}x{}",
        pred.display(), pred_size.0, pred_size.1, gt.display(), gt_size.0, gt_size.1
    )]
    Size {
        frame: String,
        pred: PathBuf,
        pred_size: (u32, u32),
        gt: PathBuf,
        gt_size: (u32, u32),
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// A ground-truth file and its prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramePair {
    /// The frame's `<city>_<seq>_<frame>` key.
    pub key: String,
    pub pred: PathBuf,
    pub gt: PathBuf,
}

/// Every prediction PNG under `pred_dir`, by each window of three `_`-separated
/// fields of its stem, so that a name containing `<city>_<seq>_<frame>` anywhere is
/// found.
fn index_predictions(preds: &[PathBuf]) -> BTreeMap<String, Vec<&PathBuf>> {
    let mut index: BTreeMap<String, Vec<&PathBuf>> = BTreeMap::new();
    for p in preds {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fields: Vec<&str> = stem.split('_').collect();
        let mut keys: Vec<String> = fields.windows(3).map(|w| w.join("_")).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            index.entry(k).or_default().push(p);
        }
    }
    index
}

/// Pairs each ground-truth file with its single prediction.
pub fn match_files(pred_dir: &Path, gt_dir: &Path, ids: Ids) -> Result<Vec<FramePair>, EvalError> {
    let suffix = ids.gt_suffix();
    let walk = |what, dir: &Path, keep: &dyn Fn(&Path) -> bool| {
        walk_files(dir, keep).map_err(|source| EvalError::Walk {
            what,
            dir: dir.to_path_buf(),
            source,
        })
    };
    let gts = walk("ground truth", gt_dir, &|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
    })?;
    if gts.is_empty() {
        return Err(EvalError::NoGroundTruth {
            dir: gt_dir.to_path_buf(),
            suffix,
        });
    }
    let preds = walk("predictions", pred_dir, &|p| {
        p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))
    })?;
    let index = index_predictions(&preds);
    let mut pairs = Vec::with_capacity(gts.len());
    let mut problems = Vec::new();
    for g in gts {
        let name = g
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = cityscapes_key(&name).ok_or_else(|| EvalError::BadName(g.clone()))?;
        match index.get(&key).map(Vec::as_slice) {
            Some([one]) => pairs.push(FramePair {
                key,
                pred: (*one).clone(),
                gt: g,
            }),
            None | Some([]) => problems.push(format!("{key} (no prediction)")),
            Some(many) => problems.push(format!(
                "{key} ({} predictions: {})",
                many.len(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if !problems.is_empty() {
        let count = problems.len();
        let mut list = problems.into_iter().take(10).collect::<Vec<_>>().join("; ");
        if count > 10 {
            list.push_str("; ...");
        }
        return Err(EvalError::Unmatched {
            dir: pred_dir.to_path_buf(),
            count,
            list,
        });
    }
    Ok(pairs)
}

/// One frame's confusion matrix.
fn frame_confusion(pair: &FramePair, lut: &[u8; 256]) -> Result<ConfusionMatrix, EvalError> {
    let read = |p: &Path| {
        imageio::read_gray(p).map_err(|source| EvalError::Image {
            frame: pair.key.clone(),
            source,
        })
    };
    let gt = read(&pair.gt)?;
    let pred = read(&pair.pred)?;
    if gt.dimensions() != pred.dimensions() {
        return Err(EvalError::Size {
            frame: pair.key.clone(),
            pred: pair.pred.clone(),
            pred_size: pred.dimensions(),
            gt: pair.gt.clone(),
            gt_size: gt.dimensions(),
        });
    }
    let mut cm = ConfusionMatrix::default();
    metrics::add_mapped(&mut cm, gt.as_raw(), pred.as_raw(), lut)?;
    Ok(cm)
}

/// The confusion matrix of the predictions under `pred` against the ground truth
/// under `gt` (frames read in parallel), and the number of frames.
pub fn folder_confusion(
    pred: &Path,
    gt: &Path,
    ids: Ids,
) -> Result<(ConfusionMatrix, usize), EvalError> {
    let pairs = match_files(pred, gt, ids)?;
    let lut = ids.to_train_lut();
    let cm = pairs
        .par_iter()
        .map(|pair| frame_confusion(pair, &lut))
        .try_reduce(ConfusionMatrix::default, |mut a, b| {
            a.merge(&b)?;
            Ok(a)
        })?;
    Ok((cm, pairs.len()))
}

/// The class subset of an evaluation, spelt as its writer has always spelt it: a
/// folder evaluation writes the [`ClassSubset`]'s name (`"19"`), a dataset evaluation
/// the number of classes (`19`). Either spelling reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsetSpelling {
    Name(ClassSubset),
    Count(ClassSubset),
}

impl SubsetSpelling {
    pub fn subset(self) -> ClassSubset {
        match self {
            SubsetSpelling::Name(s) | SubsetSpelling::Count(s) => s,
        }
    }
}

impl Serialize for SubsetSpelling {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            SubsetSpelling::Name(subset) => subset.serialize(s),
            SubsetSpelling::Count(subset) => s.serialize_u64(subset.count() as u64),
        }
    }
}

impl<'de> Deserialize<'de> for SubsetSpelling {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Name(ClassSubset),
            Count(u64),
        }
        match Written::deserialize(d)? {
            Written::Name(s) => Ok(SubsetSpelling::Name(s)),
            Written::Count(n) => usize::try_from(n)
                .ok()
                .and_then(ClassSubset::from_count)
                .map(SubsetSpelling::Count)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("subset {n}: expected 19, 16 or 13"))
                }),
        }
    }
}

/// A class's IoU as a dataset evaluation lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// The class name.
    pub class: String,
    /// `None` (JSON `null`) when the class neither occurs nor is predicted.
    pub iou: Option<f64>,
}

/// An evaluation of a model (see the module documentation for its two shapes). All
/// values are fractions in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Folder evaluation: the prediction folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pred: Option<PathBuf>,
    /// Folder evaluation: the ground-truth folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<PathBuf>,
    /// Folder evaluation: the ids the PNGs hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Ids>,
    /// Dataset evaluation: the split evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Images evaluated.
    pub images: usize,
    /// The classes `miou` averages over.
    pub subset: SubsetSpelling,
    /// Folder evaluation: per class, IoU and pixel counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<ClassIou>>,
    /// Dataset evaluation: per class, name and IoU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<Vec<ClassScore>>,
    pub miou: Option<f64>,
    /// Dataset evaluation over SYNTHIA's 16 classes: the mIoU over its 13 (present,
    /// possibly `null`, exactly then).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub miou13: Option<Option<f64>>,
    /// Over all counted pixels (all classes, not only the subset's).
    pub pixel_accuracy: Option<f64>,
    /// Folder evaluation: pixels counted (ground truth not ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixels: Option<u64>,
    /// `lse-train eval`: the checkpoint evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    /// `lse-train eval`: the prediction size `[width, height]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
}

/// A field that is present (even as `null`) deserialises to `Some`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Evaluation {
    /// A folder evaluation (`lse eval`) of `images` frames.
    pub fn of_folders(pred: &Path, gt: &Path, ids: Ids, images: usize, report: Report) -> Self {
        Self {
            pred: Some(pred.to_path_buf()),
            gt: Some(gt.to_path_buf()),
            ids: Some(ids),
            split: None,
            images,
            subset: SubsetSpelling::Name(report.subset),
            classes: Some(report.classes),
            per_class: None,
            miou: report.miou,
            miou13: None,
            pixel_accuracy: report.pixel_accuracy,
            pixels: Some(report.pixels),
            checkpoint: None,
            size: None,
        }
    }

    /// A dataset evaluation (the trainer) of `images` images of `split`.
    pub fn of_split(cm: &ConfusionMatrix, subset: ClassSubset, split: &str, images: usize) -> Self {
        let report = cm.report(subset);
        let per_class = report
            .classes
            .iter()
            .map(|c| ClassScore {
                class: c.name.clone(),
                iou: c.iou,
            })
            .collect();
        Self {
            pred: None,
            gt: None,
            ids: None,
            split: Some(split.to_string()),
            images,
            subset: SubsetSpelling::Count(subset),
            classes: None,
            per_class: Some(per_class),
            miou: report.miou,
            miou13: (subset == ClassSubset::Synthia16).then(|| cm.miou(ClassSubset::Synthia13)),
            pixel_accuracy: report.pixel_accuracy,
            pixels: None,
            checkpoint: None,
            size: None,
        }
    }

    /// The class subset `miou` averages over.
    pub fn subset(&self) -> ClassSubset {
        self.subset.subset()
    }

    /// Each class's name and IoU, from whichever list the evaluation has.
    pub fn class_ious(&self) -> Vec<(&str, Option<f64>)> {
        match (&self.classes, &self.per_class) {
            (Some(c), _) => c.iter().map(|c| (c.name.as_str(), c.iou)).collect(),
            (None, Some(p)) => p.iter().map(|c| (c.class.as_str(), c.iou)).collect(),
            (None, None) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix() -> ConfusionMatrix {
        let mut cm = ConfusionMatrix::default();
        // Road right twice; wall (not among SYNTHIA's 13) once right, once as road.
        cm.add(&[0, 0, 3, 3], &[0, 0, 3, 0]).unwrap();
        cm
    }

    /// Serialising what was read gives back the same document: every field, with
    /// its type and its `null`s, survives.
    fn round_trip(text: &str) -> Evaluation {
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        let e: Evaluation = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(serde_json::to_value(&e).unwrap(), doc);
        e
    }

    #[test]
    fn lse_eval_json_written_before_reads_back_unchanged() {
        // `lse eval --json` of a tiny synthetic run, before the type existed.
        let e = round_trip(include_str!("../tests/fixtures/lse-eval.json"));
        assert_eq!(e.subset, SubsetSpelling::Name(ClassSubset::All19));
        assert_eq!(e.ids, Some(Ids::Label));
        assert_eq!(e.class_ious().len(), 19);
        assert!(e.miou.is_some() && e.pixels.is_some() && e.split.is_none());
    }

    #[test]
    fn both_shapes_are_written_as_before() {
        let cm = matrix();
        let folders = Evaluation::of_folders(
            Path::new("pred"),
            Path::new("gt"),
            Ids::Label,
            1,
            cm.report(ClassSubset::All19),
        );
        let v = serde_json::to_value(&folders).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "classes",
                "gt",
                "ids",
                "images",
                "miou",
                "pixel_accuracy",
                "pixels",
                "pred",
                "subset"
            ]
        );
        assert_eq!(v["subset"], "19");
        assert_eq!(v["classes"][3]["fn"], 1);

        let split = Evaluation::of_split(&cm, ClassSubset::Synthia16, "val", 1);
        let v = serde_json::to_value(&split).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "images",
                "miou",
                "miou13",
                "per_class",
                "pixel_accuracy",
                "split",
                "subset"
            ]
        );
        assert_eq!(v["subset"], 16);
        assert_eq!(v["per_class"][0]["class"], "road");
        // road 2/3 (one wall pixel predicted road), wall 1/2; SYNTHIA's 13 leave
        // wall out.
        assert_eq!(v["miou"], (2.0 / 3.0 + 0.5) / 2.0);
        assert_eq!(v["miou13"], 2.0 / 3.0);
        let back: Evaluation = serde_json::from_value(v).unwrap();
        assert_eq!(back, split);
        assert_eq!(back.class_ious()[0], ("road", Some(2.0 / 3.0)));
        // No 16-class evaluation, no miou13; an empty one writes it as null.
        let v19 = serde_json::to_value(Evaluation::of_split(&cm, ClassSubset::All19, "val", 1));
        assert!(v19.unwrap().get("miou13").is_none());
        let empty = ConfusionMatrix::default();
        let e = Evaluation::of_split(&empty, ClassSubset::Synthia16, "val", 0);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["miou13"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<Evaluation>(v).unwrap(), e);
    }

    #[test]
    fn a_subset_must_be_19_16_or_13() {
        let doc = |subset: &str| format!(r#"{{"images": 1, "subset": {subset}, "miou": null}}"#);
        let read = |subset: &str| serde_json::from_str::<Evaluation>(&doc(subset));
        assert_eq!(read("13").unwrap().subset(), ClassSubset::Synthia13);
        assert_eq!(read("\"16\"").unwrap().subset(), ClassSubset::Synthia16);
        let e = read("17").unwrap_err().to_string();
        assert!(e.contains("subset 17: expected 19, 16 or 13"), "{e}");
        assert!(read("\"17\"").is_err());
    }
}
