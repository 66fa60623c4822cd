//! `lse eval` against hand-computed IoUs and an independent numpy computation.

use crate::common;

use std::path::Path;

use common::{fails, gray_png, json, lse, ok, py_script, python};
use rand::{Rng, SeedableRng};

fn eval_json(pred: &Path, gt: &Path, classes: u32) -> serde_json::Value {
    json(&ok(lse()
        .args([
            "eval",
            "--json",
            "--classes",
            &classes.to_string(),
            "--pred",
        ])
        .arg(pred)
        .arg("--gt")
        .arg(gt)))
}

fn iou_of(report: &serde_json::Value, train_id: u64) -> Option<f64> {
    report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["train_id"] == train_id)
        .and_then(|c| c["iou"].as_f64())
}

fn close(v: Option<f64>, want: f64) -> bool {
    v.is_some_and(|v| (v - want).abs() < 1e-9)
}

/// Two frames whose IoUs are worked out by hand in the comments.
fn hand_case(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (gt, pred) = (root.join("gt"), root.join("pred"));
    // Frame a (4x2). Label ids -> train ids: 7 road 0, 8 sidewalk 1, 0 ignore,
    // 26 car 13, 11 building 2, 23 sky 10.
    gray_png(
        &gt.join("aa/aa_000000_000001_gtFine_labelIds.png"),
        4,
        2,
        &[7, 7, 8, 0, 26, 26, 11, 23],
    );
    gray_png(
        &pred.join("aa/aa_000000_000001_leftImg8bit.png"),
        4,
        2,
        &[7, 8, 8, 7, 26, 7, 11, 11],
    );
    // Frame b (3x1): wall 12, wall, terrain 22; predicted wall, car, terrain.
    gray_png(
        &gt.join("bb/bb_000000_000002_gtFine_labelIds.png"),
        3,
        1,
        &[12, 12, 22],
    );
    // The prediction lies in another sub-folder with a prefix: found by its key.
    gray_png(
        &pred.join("x/run1_bb_000000_000002.png"),
        3,
        1,
        &[12, 26, 22],
    );
    (gt, pred)
}

#[test]
fn hand_computed_ious_ignored_pixels_empty_classes_and_subsets() {
    let dir = tempfile::tempdir().unwrap();
    let (gt, pred) = hand_case(dir.path());
    let r = eval_json(&pred, &gt, 19);
    assert_eq!(r["images"], 2);
    // 10 pixels counted: the ignored one is skipped.
    assert_eq!(r["pixels"], 10);
    // road: tp 1, fp 1 (car predicted road; the ignored pixel predicted road does
    // not count), fn 1 -> 1/3
    assert!(close(iou_of(&r, 0), 1.0 / 3.0), "{r}");
    assert!(close(iou_of(&r, 1), 0.5));
    assert!(close(iou_of(&r, 2), 0.5));
    assert!(close(iou_of(&r, 3), 0.5));
    assert!(close(iou_of(&r, 9), 1.0));
    assert!(close(iou_of(&r, 10), 0.0));
    // car: tp 1, fn 1 (predicted road), fp 1 (wall predicted car) -> 1/3
    assert!(close(iou_of(&r, 13), 1.0 / 3.0));
    // classes neither present nor predicted have no IoU
    for empty in [4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18] {
        assert_eq!(iou_of(&r, empty), None, "class {empty}");
    }
    let m19 = (1.0 / 3.0 + 0.5 + 0.5 + 0.5 + 1.0 + 0.0 + 1.0 / 3.0) / 7.0;
    assert!(close(r["miou"].as_f64(), m19), "{}", r["miou"]);
    assert!(close(r["pixel_accuracy"].as_f64(), 0.6));

    let r16 = eval_json(&pred, &gt, 16);
    assert_eq!(r16["classes"].as_array().unwrap().len(), 16);
    let m16 = (1.0 / 3.0 + 0.5 + 0.5 + 0.5 + 0.0 + 1.0 / 3.0) / 6.0;
    assert!(close(r16["miou"].as_f64(), m16));
    let r13 = eval_json(&pred, &gt, 13);
    assert_eq!(r13["classes"].as_array().unwrap().len(), 13);
    let m13 = (1.0 / 3.0 + 0.5 + 0.5 + 0.0 + 1.0 / 3.0) / 5.0;
    assert!(close(r13["miou"].as_f64(), m13));

    // The table names the classes and the mIoU in percent.
    let text = String::from_utf8(
        ok(lse()
            .arg("eval")
            .arg("--pred")
            .arg(&pred)
            .arg("--gt")
            .arg(&gt))
        .stdout,
    )
    .unwrap();
    assert!(
        text.contains("terrain") && text.contains(&format!("{:.2}", m19 * 100.0)),
        "{text}"
    );
}

#[test]
fn train_ids_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (gt, pred) = (dir.path().join("gt"), dir.path().join("pred"));
    gray_png(
        &gt.join("c/c_1_2_gtFine_labelTrainIds.png"),
        3,
        1,
        &[0, 13, 255],
    );
    gray_png(&pred.join("c/c_1_2_leftImg8bit.png"), 3, 1, &[0, 0, 13]);
    let r = json(&ok(lse()
        .args(["eval", "--json", "--ids", "train", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(&gt)));
    assert!(close(iou_of(&r, 0), 0.5));
    assert!(close(iou_of(&r, 13), 0.0));
    assert_eq!(r["pixels"], 2);
}

#[test]
fn matches_numpy_on_random_maps() {
    let dir = tempfile::tempdir().unwrap();
    let (gt, pred) = (dir.path().join("gt"), dir.path().join("pred"));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // label ids 0..34 (ignored ones included); predictions biased toward the truth
    for i in 0..6 {
        let (w, h) = (40, 24);
        let g: Vec<u8> = (0..w * h).map(|_| rng.random_range(0..34)).collect();
        let p: Vec<u8> = g
            .iter()
            .map(|&v| {
                if rng.random_bool(0.6) {
                    v
                } else {
                    rng.random_range(0..34)
                }
            })
            .collect();
        let city = ["x", "y"][i % 2];
        gray_png(
            &gt.join(format!("{city}/{city}_{i:06}_000019_gtFine_labelIds.png")),
            w,
            h,
            &g,
        );
        gray_png(
            &pred.join(format!("{city}/{city}_{i:06}_000019_leftImg8bit.png")),
            w,
            h,
            &p,
        );
    }
    let reference = json(&ok(python()
        .arg(py_script("eval_ref.py"))
        .arg(&gt)
        .arg(&pred)));
    for classes in [19u32, 16, 13] {
        let ours = eval_json(&pred, &gt, classes);
        let want = &reference[classes.to_string()];
        let got_ious: Vec<Option<f64>> = ours["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["iou"].as_f64())
            .collect();
        let want_ious: Vec<Option<f64>> = want["iou"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64())
            .collect();
        assert_eq!(got_ious.len(), want_ious.len());
        for (g, w) in got_ious.iter().zip(&want_ious) {
            match (g, w) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{g} vs {w}"),
                _ => assert_eq!(g, w),
            }
        }
        assert!((ours["miou"].as_f64().unwrap() - want["miou"].as_f64().unwrap()).abs() < 1e-9);
        assert!(
            (ours["pixel_accuracy"].as_f64().unwrap() - reference["acc"].as_f64().unwrap()).abs()
                < 1e-9
        );
    }
}

#[test]
fn matching_and_size_errors_name_the_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (gt, pred) = hand_case(dir.path());
    let eval_error = || {
        fails(
            lse()
                .arg("eval")
                .arg("--pred")
                .arg(&pred)
                .arg("--gt")
                .arg(&gt),
        )
    };
    // A missing prediction.
    std::fs::remove_file(pred.join("x/run1_bb_000000_000002.png")).unwrap();
    let err = eval_error();
    assert!(
        err.contains("bb_000000_000002") && err.contains("no prediction"),
        "{err}"
    );
    // Two predictions for one frame.
    gray_png(&pred.join("x/bb_000000_000002_a.png"), 3, 1, &[0, 0, 0]);
    gray_png(&pred.join("y/bb_000000_000002_b.png"), 3, 1, &[0, 0, 0]);
    let err = eval_error();
    assert!(
        err.contains("bb_000000_000002") && err.contains("2 predictions"),
        "{err}"
    );
    // A prediction of the wrong size.
    std::fs::remove_file(pred.join("y/bb_000000_000002_b.png")).unwrap();
    gray_png(&pred.join("x/bb_000000_000002_a.png"), 2, 1, &[0, 0]);
    let err = eval_error();
    assert!(
        err.contains("bb_000000_000002") && err.contains("2x1") && err.contains("3x1"),
        "{err}"
    );
    // No ground truth at all, and an invalid class count.
    let err = fails(
        lse()
            .arg("eval")
            .arg("--pred")
            .arg(&pred)
            .arg("--gt")
            .arg(&pred),
    );
    assert!(err.contains("no ground-truth files"), "{err}");
    let err = fails(
        lse()
            .args(["eval", "--classes", "17", "--pred"])
            .arg(&pred)
            .arg("--gt")
            .arg(&gt),
    );
    assert!(err.contains("17"), "{err}");
}
