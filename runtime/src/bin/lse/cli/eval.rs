//! `lse eval`: the Cityscapes evaluation protocol over two folder trees.
//!
//! Every ground-truth file (`*_gtFine_labelIds.png`, or `*_gtFine_labelTrainIds.png`
//! with `--ids train`) is matched to exactly one prediction PNG anywhere under the
//! prediction folder whose name contains its `<city>_<seq>_<frame>` prefix, as the
//! official `evalPixelLevelSemanticLabeling.py` does. One confusion matrix is
//! accumulated over all pixels whose ground truth is not ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;

use lse_runtime::datasets::{cityscapes_key, walk_files};
use lse_runtime::imageio;
use lse_runtime::labels::{self, ClassSubset};
use lse_runtime::metrics::{self, ConfusionMatrix, Report};

/// Which ids the PNGs hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ids {
    /// Cityscapes label ids (7 road ... 33 bicycle), the official results format.
    #[default]
    Label,
    /// Train ids (0..18, 255 ignore).
    Train,
}

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

    fn gt_suffix(self) -> &'static str {
        match self {
            Ids::Label => "_gtFine_labelIds.png",
            Ids::Train => "_gtFine_labelTrainIds.png",
        }
    }
}

/// Arguments of `lse eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of predictions (searched recursively for `<city>_<seq>_<frame>*.png`).
    #[arg(long)]
    pub pred: PathBuf,
    /// Ground-truth folder, e.g. `cityscapes/gtFine/val`.
    #[arg(long)]
    pub gt: PathBuf,
    /// Class subset of the mIoU: 19 (GTA5 source), 16 or 13 (SYNTHIA source).
    #[arg(long, default_value_t = 19, value_parser = parse_subset_count)]
    pub classes: usize,
    /// Ids held by the prediction and ground-truth PNGs.
    #[arg(long, value_enum, default_value_t = Ids::Label)]
    pub ids: Ids,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_subset_count(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number (expected 19, 16 or 13)"))?;
    ClassSubset::from_count(n)
        .map(|_| n)
        .ok_or_else(|| format!("{n} classes: expected 19, 16 or 13"))
}

/// The result of `lse eval`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    pub pred: PathBuf,
    pub gt: PathBuf,
    pub ids: Ids,
    pub images: usize,
    #[serde(flatten)]
    pub report: Report,
}

/// Errors of matching files; each names the frame.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
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
}

/// Pairs each ground-truth file with its single prediction.
pub fn match_files(
    pred_dir: &Path,
    gt_dir: &Path,
    ids: Ids,
) -> anyhow::Result<Vec<(String, PathBuf, PathBuf)>> {
    let suffix = ids.gt_suffix();
    let gts = walk_files(gt_dir, &|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
    })
    .with_context(|| format!("reading ground truth {}", gt_dir.display()))?;
    if gts.is_empty() {
        return Err(MatchError::NoGroundTruth {
            dir: gt_dir.to_path_buf(),
            suffix,
        }
        .into());
    }
    let preds = walk_files(pred_dir, &|p| {
        p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))
    })
    .with_context(|| format!("reading predictions {}", pred_dir.display()))?;
    // Index every window of three `_`-separated fields of each prediction's stem, so
    // that a name containing `<city>_<seq>_<frame>` anywhere is found.
    let mut index: BTreeMap<String, Vec<&PathBuf>> = BTreeMap::new();
    for p in &preds {
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
    let mut pairs = Vec::with_capacity(gts.len());
    let mut problems = Vec::new();
    for g in gts {
        let name = g
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = cityscapes_key(&name).ok_or_else(|| MatchError::BadName(g.clone()))?;
        match index.get(&key).map(Vec::as_slice) {
            Some([one]) => pairs.push((key, (*one).clone(), g)),
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
        return Err(MatchError::Unmatched {
            dir: pred_dir.to_path_buf(),
            count,
            list,
        }
        .into());
    }
    Ok(pairs)
}

/// Evaluates a prediction folder against a ground-truth folder.
pub fn evaluate(
    pred: &Path,
    gt: &Path,
    ids: Ids,
    subset: ClassSubset,
) -> anyhow::Result<EvalResult> {
    let pairs = match_files(pred, gt, ids)?;
    let lut = ids.to_train_lut();
    let cm = pairs
        .par_iter()
        .map(|(key, p, g)| -> anyhow::Result<ConfusionMatrix> {
            let gt_img = imageio::read_gray(g).with_context(|| format!("frame {key}"))?;
            let pred_img = imageio::read_gray(p).with_context(|| format!("frame {key}"))?;
            if gt_img.dimensions() != pred_img.dimensions() {
                anyhow::bail!(
                    "frame {key}: prediction {} is {}x{} but the ground truth {} is {}x{}",
                    p.display(),
                    pred_img.width(),
                    pred_img.height(),
                    g.display(),
                    gt_img.width(),
                    gt_img.height()
                );
            }
            let mut cm = ConfusionMatrix::default();
            metrics::add_mapped(&mut cm, gt_img.as_raw(), pred_img.as_raw(), &lut)?;
            Ok(cm)
        })
        .try_reduce(ConfusionMatrix::default, |mut a, b| {
            a.merge(&b)?;
            Ok(a)
        })?;
    Ok(EvalResult {
        pred: pred.to_path_buf(),
        gt: gt.to_path_buf(),
        ids,
        images: pairs.len(),
        report: cm.report(subset),
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let subset = ClassSubset::from_count(args.classes)
        .with_context(|| format!("{} classes: expected 19, 16 or 13", args.classes))?;
    let res = evaluate(&args.pred, &args.gt, args.ids, subset)?;
    if args.json {
        crate::cli::print_json(&res)
    } else {
        println!(
            "{} images, {} evaluated pixels ({} ids)\n",
            res.images,
            res.report.pixels,
            match res.ids {
                Ids::Label => "label",
                Ids::Train => "train",
            }
        );
        print!("{}", res.report.table());
        Ok(())
    }
}
