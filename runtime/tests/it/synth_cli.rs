//! `lse synth`: determinism, layout and sanity of the generated domains.

use crate::common;

use common::{fails, lse, ok, tree_bytes};
use lse_runtime::datasets::{Dataset, DatasetKind};
use lse_runtime::labels;

fn synth(out: &std::path::Path, seed: u64) {
    ok(lse()
        .args([
            "synth", "--train", "4", "--val", "3", "--size", "160x80", "--seed",
        ])
        .arg(seed.to_string())
        .arg("--out")
        .arg(out));
}

#[test]
fn same_seed_same_bytes_other_seed_other_images() {
    let d = tempfile::tempdir().unwrap();
    synth(&d.path().join("a"), 3);
    synth(&d.path().join("b"), 3);
    let (a, b) = (
        tree_bytes(&d.path().join("a")),
        tree_bytes(&d.path().join("b")),
    );
    assert_eq!(a.len(), 2 * (4 + 4) + 2 * 3 + 1, "{:?}", a.keys());
    assert!(a == b, "same seed must give byte-identical output");
    synth(&d.path().join("c"), 4);
    let c = tree_bytes(&d.path().join("c"));
    let differing = a.iter().filter(|(k, v)| c.get(*k) != Some(v)).count();
    assert!(
        differing >= 20,
        "another seed changes the images ({differing} differ)"
    );
    // Regenerating in place with the same settings is fine; other settings are refused.
    synth(&d.path().join("a"), 3);
    let err = fails(
        lse()
            .args([
                "synth", "--train", "2", "--val", "1", "--size", "160x80", "--out",
            ])
            .arg(d.path().join("a")),
    );
    assert!(err.contains("with these settings"), "{err}");
}

#[test]
fn layouts_open_and_every_promised_class_appears_in_each_split() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("syn");
    synth(&out, 11);
    let splits = [
        Dataset::open(DatasetKind::Gta5, &out.join("source"), "train", None).unwrap(),
        Dataset::open(DatasetKind::Cityscapes, &out.join("target"), "train", None).unwrap(),
        Dataset::open(DatasetKind::Cityscapes, &out.join("target"), "val", None).unwrap(),
    ];
    assert_eq!(
        splits.iter().map(Dataset::len).collect::<Vec<_>>(),
        [4, 4, 3]
    );
    // road, sidewalk, building, wall, fence, pole, traffic light, traffic sign,
    // vegetation, terrain, sky, person, rider, car, bicycle
    let promised = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 18];
    for ds in &splits {
        ds.check().unwrap();
        let mut seen = [0u64; 256];
        for i in 0..ds.len() {
            let (img, lab) = ds.load_sample_original(i).unwrap();
            assert_eq!(img.dimensions(), (160, 80));
            for &p in lab.unwrap().as_raw() {
                seen[p as usize] += 1;
            }
        }
        for c in promised {
            assert!(
                seen[c as usize] > 0,
                "{:?}: no {}",
                ds.root(),
                labels::train_name(c)
            );
        }
        assert_eq!(seen[labels::IGNORE as usize], 0, "every pixel is labelled");
        assert!(ds.unknown_ids().is_empty());
    }
    // Plausible layout: sky only in the upper part, road mostly in the lower part.
    let ds = &splits[2];
    let (_, lab) = ds.load_sample_original(0).unwrap();
    let lab = lab.unwrap();
    let rows_with = |c: u8| -> Vec<u32> {
        (0..80)
            .filter(|&y| (0..160).any(|x| lab.get_pixel(x, y)[0] == c))
            .collect()
    };
    assert!(
        rows_with(10).iter().all(|&y| y < 45),
        "sky rows {:?}",
        rows_with(10)
    );
    assert!(
        rows_with(0).iter().all(|&y| y >= 30),
        "road rows {:?}",
        rows_with(0)
    );
    // The target is textured and noisy: pixels spread more around their class's
    // mean colour than in the flat source.
    let spread = |ds: &Dataset| {
        let (img, lab) = ds.load_sample_original(0).unwrap();
        let lab = lab.unwrap();
        let mut sum = vec![[0f64; 3]; 256];
        let mut n = vec![0f64; 256];
        for (p, l) in img.pixels().zip(lab.as_raw()) {
            for k in 0..3 {
                sum[*l as usize][k] += p[k] as f64;
            }
            n[*l as usize] += 1.0;
        }
        let mut dev = 0.0;
        for (p, l) in img.pixels().zip(lab.as_raw()) {
            let l = *l as usize;
            for k in 0..3 {
                dev += (p[k] as f64 - sum[l][k] / n[l]).abs();
            }
        }
        dev / (3.0 * n.iter().sum::<f64>())
    };
    let (src, tgt) = (spread(&splits[0]), spread(&splits[2]));
    assert!(tgt > 1.5 * src, "target spread {tgt:.2} vs source {src:.2}");
}

#[test]
fn bad_sizes_are_refused() {
    let d = tempfile::tempdir().unwrap();
    for size in ["0x10", "abc", "16x8"] {
        let err = fails(
            lse()
                .args(["synth", "--size", size, "--out"])
                .arg(d.path().join(size)),
        );
        assert!(err.contains(size) || err.contains("16x8"), "{size}: {err}");
    }
}
