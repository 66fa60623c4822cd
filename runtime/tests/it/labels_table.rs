//! The label table against the official Cityscapes definitions
//! (cityscapesscripts/helpers/labels.py), typed in independently here.

use lse_runtime::labels;

/// (train id, label id, name, colour) of the 19 train classes.
const OFFICIAL: [(u8, u8, &str, [u8; 3]); 19] = [
    (0, 7, "road", [128, 64, 128]),
    (1, 8, "sidewalk", [244, 35, 232]),
    (2, 11, "building", [70, 70, 70]),
    (3, 12, "wall", [102, 102, 156]),
    (4, 13, "fence", [190, 153, 153]),
    (5, 17, "pole", [153, 153, 153]),
    (6, 19, "traffic light", [250, 170, 30]),
    (7, 20, "traffic sign", [220, 220, 0]),
    (8, 21, "vegetation", [107, 142, 35]),
    (9, 22, "terrain", [152, 251, 152]),
    (10, 23, "sky", [70, 130, 180]),
    (11, 24, "person", [220, 20, 60]),
    (12, 25, "rider", [255, 0, 0]),
    (13, 26, "car", [0, 0, 142]),
    (14, 27, "truck", [0, 0, 70]),
    (15, 28, "bus", [0, 60, 100]),
    (16, 31, "train", [0, 80, 100]),
    (17, 32, "motorcycle", [0, 0, 230]),
    (18, 33, "bicycle", [119, 11, 32]),
];

#[test]
fn nineteen_train_classes_match_the_official_table() {
    let ours = labels::train_classes();
    for (t, id, name, color) in OFFICIAL {
        let l = ours[t as usize];
        assert_eq!((l.train_id, l.id, l.name, l.color), (t, id, name, color));
    }
}

#[test]
fn lookup_tables_match_the_official_table() {
    let to_train = labels::label_to_train_lut();
    let to_label = labels::train_to_label_lut();
    let colors = labels::train_color_lut();
    for (t, id, _, color) in OFFICIAL {
        assert_eq!(to_train[id as usize], t, "label id {id}");
        assert_eq!(to_label[t as usize], id, "train id {t}");
        assert_eq!(colors[t as usize], color, "train id {t}");
    }
    // Every other label id is ignored.
    let train_ids: Vec<u8> = OFFICIAL.iter().map(|r| r.1).collect();
    for id in 0..=255u8 {
        if !train_ids.contains(&id) {
            assert_eq!(to_train[id as usize], labels::IGNORE, "label id {id}");
        }
    }
}

#[test]
fn subsets_are_the_synthia_protocol() {
    use labels::ClassSubset;
    assert_eq!(ClassSubset::All19.train_ids(), (0..19).collect::<Vec<u8>>());
    // 16: without terrain (9), truck (14), train (16).
    assert_eq!(
        ClassSubset::Synthia16.train_ids(),
        vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    );
    // 13: the 16 without wall (3), fence (4), pole (5).
    assert_eq!(
        ClassSubset::Synthia13.train_ids(),
        vec![0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    );
}
