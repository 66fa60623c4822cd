//! Dataset layout readers on small generated trees, including every error case.

use crate::common;

use std::path::Path;

use common::{gray_png, rgb_png};
use lse_runtime::datasets::{Dataset, DatasetError, DatasetKind, DatasetSpec};

/// Writes a 16-bit RGB PNG whose red channel holds `ids` (green/blue filled with noise
/// that must be ignored).
fn synthia_label(path: &Path, w: u32, h: u32, ids: &[u16]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Sixteen);
    let mut wr = enc.write_header().unwrap();
    let mut data = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        data.extend_from_slice(&id.to_be_bytes());
        data.extend_from_slice(&(1000 + i as u16).to_be_bytes());
        data.extend_from_slice(&0xFFFFu16.to_be_bytes());
    }
    wr.write_image_data(&data).unwrap();
}

#[test]
fn cityscapes_layout() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    for (city, frame) in [("bb", 2), ("aa", 1), ("aa", 3)] {
        let key = format!("{city}_000000_{frame:06}");
        rgb_png(
            &root.join(format!("leftImg8bit/val/{city}/{key}_leftImg8bit.png")),
            4,
            2,
            [10, 20, 30],
        );
        gray_png(
            &root.join(format!("gtFine/val/{city}/{key}_gtFine_labelIds.png")),
            4,
            2,
            &[7, 8, 26, 0, 33, 23, 11, 1],
        );
    }
    let ds = Dataset::open(DatasetKind::Cityscapes, root, "val", None).unwrap();
    assert_eq!(ds.len(), 3);
    let keys: Vec<&str> = ds.samples().iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        ["aa_000000_000001", "aa_000000_000003", "bb_000000_000002"]
    );
    ds.check().unwrap();
    let (img, lab) = ds.load_sample_original(0).unwrap();
    assert_eq!(img.dimensions(), (4, 2));
    assert_eq!(lab.unwrap().as_raw(), &vec![0, 1, 13, 255, 18, 10, 2, 255]);
    let (img, lab) = ds.load_sample(0, [8, 4]).unwrap();
    assert_eq!(img.dimensions(), (8, 4));
    let lab = lab.unwrap();
    assert_eq!(lab.dimensions(), (8, 4));
    assert_eq!(lab.get_pixel(0, 0)[0], 0);
    assert_eq!(lab.get_pixel(7, 3)[0], 255);
    assert!(ds.unknown_ids().is_empty());

    // A split without gtFine is an unlabelled set.
    rgb_png(
        &root.join("leftImg8bit/test/cc/cc_000000_000001_leftImg8bit.png"),
        4,
        2,
        [0, 0, 0],
    );
    let test = Dataset::open(DatasetKind::Cityscapes, root, "test", None).unwrap();
    assert!(!test.has_labels());
    assert!(test.load_sample(0, [4, 2]).unwrap().1.is_none());

    // A list file selects a subset, in its order.
    let list = root.join("val.txt");
    std::fs::write(
        &list,
        "# subset\nbb/bb_000000_000002_leftImg8bit.png\n\naa/aa_000000_000001_leftImg8bit.png\n",
    )
    .unwrap();
    let sub = Dataset::open(DatasetKind::Cityscapes, root, "val", Some(&list)).unwrap();
    let keys: Vec<&str> = sub.samples().iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["bb_000000_000002", "aa_000000_000001"]);
}

#[test]
fn gta5_layout_with_varying_sizes_and_unknown_ids() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    rgb_png(&root.join("images/00001.png"), 4, 2, [1, 2, 3]);
    gray_png(
        &root.join("labels/00001.png"),
        4,
        2,
        &[7, 7, 26, 26, 200, 201, 34, 0],
    );
    rgb_png(&root.join("images/00002.png"), 6, 3, [1, 2, 3]);
    gray_png(&root.join("labels/00002.png"), 6, 3, &[200; 18]);
    let spec: DatasetSpec = format!("gta5:{}", root.display()).parse().unwrap();
    let ds = Dataset::open_spec(&spec, "train", None).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.samples()[1].key, "00002");
    let (_, lab) = ds.load_sample_original(0).unwrap();
    assert_eq!(
        lab.unwrap().as_raw(),
        &vec![0, 0, 13, 13, 255, 255, 255, 255]
    );
    // Both images are resized to the same training size.
    let (img, lab) = ds.load_sample(1, [8, 4]).unwrap();
    assert_eq!(
        (img.dimensions(), lab.unwrap().dimensions()),
        ((8, 4), (8, 4))
    );
    // Unknown ids (200, 201) are counted; 34 (license plate) is known and ignored.
    let unknown = ds.unknown_ids();
    assert_eq!(unknown.get(&200), Some(&19));
    assert_eq!(unknown.get(&201), Some(&1));
    assert_eq!(unknown.get(&34), None);
}

#[test]
fn synthia_16_bit_labels_use_the_red_channel() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    rgb_png(&root.join("RGB/0000001.png"), 4, 2, [9, 9, 9]);
    // SYNTHIA ids: 3 road, 4 sidewalk, 2 building, 1 sky, 8 car, 0 void, 22 lane
    // marking (ignored), 300 unknown (only representable in 16 bits).
    synthia_label(
        &root.join("GT/LABELS/0000001.png"),
        4,
        2,
        &[3, 4, 2, 1, 8, 0, 22, 300],
    );
    let ds = Dataset::open(DatasetKind::Synthia, root, "train", None).unwrap();
    let (_, lab) = ds.load_sample_original(0).unwrap();
    assert_eq!(lab.unwrap().as_raw(), &vec![0, 1, 2, 10, 13, 255, 255, 255]);
    assert_eq!(ds.unknown_ids().get(&300), Some(&1));
    // image's 8-bit decoders would keep only the high byte: check the value is exact
    let (_, _, raw) =
        lse_runtime::datasets::read_synthia_ids(&root.join("GT/LABELS/0000001.png")).unwrap();
    assert_eq!(raw, vec![3, 4, 2, 1, 8, 0, 22, 300]);
}

#[test]
fn every_error_names_the_file() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();

    // Missing layout folder.
    let e = Dataset::open(DatasetKind::Gta5, root, "train", None).unwrap_err();
    assert!(matches!(e, DatasetError::MissingDir { .. }), "{e}");
    assert!(e.to_string().contains("images"), "{e}");

    // Empty dataset.
    std::fs::create_dir_all(root.join("images")).unwrap();
    let e = Dataset::open(DatasetKind::Gta5, root, "train", None).unwrap_err();
    assert!(
        matches!(e, DatasetError::Empty { .. }) && e.to_string().contains("images"),
        "{e}"
    );

    // Image without label.
    std::fs::create_dir_all(root.join("labels")).unwrap();
    rgb_png(&root.join("images/a.png"), 4, 2, [0, 0, 0]);
    let e = Dataset::open(DatasetKind::Gta5, root, "train", None).unwrap_err();
    assert!(matches!(e, DatasetError::NoLabel { .. }), "{e}");
    assert!(
        e.to_string().contains("a.png") && e.to_string().contains("labels"),
        "{e}"
    );

    // Size mismatch between image and label: found by check() and by loading.
    gray_png(&root.join("labels/a.png"), 3, 2, &[7; 6]);
    let ds = Dataset::open(DatasetKind::Gta5, root, "train", None).unwrap();
    for e in [
        ds.check().unwrap_err(),
        ds.load_sample(0, [4, 2]).unwrap_err(),
    ] {
        assert!(matches!(e, DatasetError::SizeMismatch { .. }), "{e}");
        assert!(
            e.to_string().contains("a.png") && e.to_string().contains("(3, 2)"),
            "{e}"
        );
    }

    // Unreadable (corrupt) image.
    gray_png(&root.join("labels/a.png"), 4, 2, &[7; 8]);
    std::fs::write(root.join("images/a.png"), b"not a png").unwrap();
    let ds = Dataset::open(DatasetKind::Gta5, root, "train", None).unwrap();
    let e = ds.load_sample(0, [4, 2]).unwrap_err();
    assert!(
        matches!(e, DatasetError::Image(_)) && e.to_string().contains("a.png"),
        "{e}"
    );
    assert!(ds.check().unwrap_err().to_string().contains("a.png"));

    // A list naming a missing image, and an absolute path.
    let list = root.join("list.txt");
    std::fs::write(&list, "a.png\nmissing.png\n").unwrap();
    let e = Dataset::open(DatasetKind::Gta5, root, "train", Some(&list)).unwrap_err();
    assert!(
        e.to_string().contains("line 2") && e.to_string().contains("missing.png"),
        "{e}"
    );
    std::fs::write(&list, "/etc/passwd\n").unwrap();
    let e = Dataset::open(DatasetKind::Gta5, root, "train", Some(&list)).unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
    std::fs::write(&list, "\n# nothing\n").unwrap();
    let e = Dataset::open(DatasetKind::Gta5, root, "train", Some(&list)).unwrap_err();
    assert!(
        matches!(e, DatasetError::Empty { .. }) && e.to_string().contains("list.txt"),
        "{e}"
    );

    // A Cityscapes image with a non-Cityscapes name.
    rgb_png(
        &root.join("cs/leftImg8bit/val/x/badname.png"),
        4,
        2,
        [0, 0, 0],
    );
    let e = Dataset::open(DatasetKind::Cityscapes, &root.join("cs"), "val", None).unwrap_err();
    assert!(e.to_string().contains("badname.png"), "{e}");

    // A SYNTHIA label that is not a PNG.
    rgb_png(&root.join("syn/RGB/1.png"), 4, 2, [0, 0, 0]);
    std::fs::create_dir_all(root.join("syn/GT/LABELS")).unwrap();
    std::fs::write(root.join("syn/GT/LABELS/1.png"), b"garbage").unwrap();
    let ds = Dataset::open(DatasetKind::Synthia, &root.join("syn"), "train", None).unwrap();
    let e = ds.load_sample(0, [4, 2]).unwrap_err();
    assert!(e.to_string().contains("LABELS/1.png"), "{e}");

    // Bad specs.
    for bad in ["mapillary:/x", "gta5", "gta5:"] {
        assert!(bad.parse::<DatasetSpec>().is_err(), "{bad}");
    }
    assert!(
        ds.load_sample(5, [4, 2])
            .unwrap_err()
            .to_string()
            .contains("out of range")
    );
}
