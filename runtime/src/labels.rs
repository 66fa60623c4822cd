//! The Cityscapes label table: label ids, train ids, names and colours exactly as in
//! the official `cityscapesscripts/helpers/labels.py`, and the 19/16/13-class subsets
//! used to report results for GTA5 and SYNTHIA sources.
//!
//! This is the only place in the project that knows these numbers.

use serde::{Deserialize, Serialize};

/// The ignore value of train-id maps (and of pseudo-labels).
pub const IGNORE: u8 = 255;
/// Number of Cityscapes train classes.
pub const NUM_CLASSES: usize = 19;

/// One row of the official label table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    pub name: &'static str,
    pub id: u8,
    /// 255 for labels that are not trained on.
    pub train_id: u8,
    pub color: [u8; 3],
}

const fn l(name: &'static str, id: u8, train_id: u8, color: [u8; 3]) -> Label {
    Label {
        name,
        id,
        train_id,
        color,
    }
}

/// All 35 Cityscapes labels (ids 0..=33 and the license plate, -1 in the original,
/// which never occurs in label PNGs and is left out).
pub const LABELS: [Label; 34] = [
    l("unlabeled", 0, 255, [0, 0, 0]),
    l("ego vehicle", 1, 255, [0, 0, 0]),
    l("rectification border", 2, 255, [0, 0, 0]),
    l("out of roi", 3, 255, [0, 0, 0]),
    l("static", 4, 255, [0, 0, 0]),
    l("dynamic", 5, 255, [111, 74, 0]),
    l("ground", 6, 255, [81, 0, 81]),
    l("road", 7, 0, [128, 64, 128]),
    l("sidewalk", 8, 1, [244, 35, 232]),
    l("parking", 9, 255, [250, 170, 160]),
    l("rail track", 10, 255, [230, 150, 140]),
    l("building", 11, 2, [70, 70, 70]),
    l("wall", 12, 3, [102, 102, 156]),
    l("fence", 13, 4, [190, 153, 153]),
    l("guard rail", 14, 255, [180, 165, 180]),
    l("bridge", 15, 255, [150, 100, 100]),
    l("tunnel", 16, 255, [150, 120, 90]),
    l("pole", 17, 5, [153, 153, 153]),
    l("polegroup", 18, 255, [153, 153, 153]),
    l("traffic light", 19, 6, [250, 170, 30]),
    l("traffic sign", 20, 7, [220, 220, 0]),
    l("vegetation", 21, 8, [107, 142, 35]),
    l("terrain", 22, 9, [152, 251, 152]),
    l("sky", 23, 10, [70, 130, 180]),
    l("person", 24, 11, [220, 20, 60]),
    l("rider", 25, 12, [255, 0, 0]),
    l("car", 26, 13, [0, 0, 142]),
    l("truck", 27, 14, [0, 0, 70]),
    l("bus", 28, 15, [0, 60, 100]),
    l("caravan", 29, 255, [0, 0, 90]),
    l("trailer", 30, 255, [0, 0, 110]),
    l("train", 31, 16, [0, 80, 100]),
    l("motorcycle", 32, 17, [0, 0, 230]),
    l("bicycle", 33, 18, [119, 11, 32]),
];

/// The 19 train classes in train-id order.
pub fn train_classes() -> [Label; NUM_CLASSES] {
    let mut out = [LABELS[0]; NUM_CLASSES];
    for lab in LABELS.iter().filter(|l| l.train_id != IGNORE) {
        out[lab.train_id as usize] = *lab;
    }
    out
}

/// The train id of the train class called `name` in [`LABELS`], usable in constants
/// (`const CAR: u8 = train_id("car");`), so code names the class it means; a name that
/// is not a train class fails to compile there.
pub const fn train_id(name: &str) -> u8 {
    let mut i = 0;
    while i < LABELS.len() {
        if LABELS[i].train_id != IGNORE && same_bytes(LABELS[i].name, name) {
            return LABELS[i].train_id;
        }
        i += 1;
    }
    panic!("not the name of a train class in the label table")
}

/// `a == b`, usable in constants.
const fn same_bytes(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Name of a train id (`"ignore"` for 255 and unknown ids).
pub fn train_name(train_id: u8) -> &'static str {
    LABELS
        .iter()
        .find(|l| l.train_id == train_id)
        .map_or("ignore", |l| l.name)
}

/// Lookup table label id -> train id (every id outside the table maps to 255).
pub fn label_to_train_lut() -> [u8; 256] {
    let mut lut = [IGNORE; 256];
    for lab in &LABELS {
        lut[lab.id as usize] = lab.train_id;
    }
    lut
}

/// Lookup table train id -> label id (255 and unknown train ids map to 0, "unlabeled").
pub fn train_to_label_lut() -> [u8; 256] {
    let mut lut = [0u8; 256];
    for lab in LABELS.iter().filter(|l| l.train_id != IGNORE) {
        lut[lab.train_id as usize] = lab.id;
    }
    lut
}

/// Lookup table train id -> colour (ignore is black).
pub fn train_color_lut() -> [[u8; 3]; 256] {
    let mut lut = [[0u8; 3]; 256];
    for lab in LABELS.iter().filter(|l| l.train_id != IGNORE) {
        lut[lab.train_id as usize] = lab.color;
    }
    lut
}

/// SYNTHIA-RAND-CITYSCAPES class id (red channel of its 16-bit label PNGs) -> train
/// id, as in the reference implementation. Every other id maps to 255.
pub fn synthia_to_train_lut() -> [u8; 256] {
    const MAP: [(u8, u8); 19] = [
        (3, 0),   // road
        (4, 1),   // sidewalk
        (2, 2),   // building
        (21, 3),  // wall
        (5, 4),   // fence
        (7, 5),   // pole
        (15, 6),  // traffic light
        (9, 7),   // traffic sign
        (6, 8),   // vegetation
        (16, 9),  // terrain
        (1, 10),  // sky
        (10, 11), // person
        (17, 12), // rider
        (8, 13),  // car
        (18, 14), // truck
        (19, 15), // bus
        (20, 16), // train
        (12, 17), // motorcycle
        (11, 18), // bicycle
    ];
    let mut lut = [IGNORE; 256];
    for (s, t) in MAP {
        lut[s as usize] = t;
    }
    lut
}

/// Train ids a SYNTHIA source does not teach: terrain, truck, train. They are left out
/// of the 16- and 13-class results, and LSE ignores their pixels in the mask.
pub const SYNTHIA_UNTAUGHT: [u8; 3] = [9, 14, 16];

/// The class subsets results are reported over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ClassSubset {
    /// All 19 classes (GTA5 source).
    #[default]
    #[serde(rename = "19")]
    All19,
    /// SYNTHIA's 16: without terrain, truck, train.
    #[serde(rename = "16")]
    Synthia16,
    /// SYNTHIA's 13: the 16 without wall, fence, pole.
    #[serde(rename = "13")]
    Synthia13,
}

impl ClassSubset {
    /// Parses "19", "16" or "13".
    pub fn from_count(n: usize) -> Option<Self> {
        match n {
            19 => Some(Self::All19),
            16 => Some(Self::Synthia16),
            13 => Some(Self::Synthia13),
            _ => None,
        }
    }

    pub fn count(self) -> usize {
        self.train_ids().len()
    }

    /// The train ids in this subset, ascending.
    pub fn train_ids(self) -> Vec<u8> {
        let excluded: &[u8] = match self {
            Self::All19 => &[],
            Self::Synthia16 => &SYNTHIA_UNTAUGHT,
            Self::Synthia13 => &[
                3,
                4,
                5,
                SYNTHIA_UNTAUGHT[0],
                SYNTHIA_UNTAUGHT[1],
                SYNTHIA_UNTAUGHT[2],
            ],
        };
        (0..NUM_CLASSES as u8)
            .filter(|c| !excluded.contains(c))
            .collect()
    }

    pub fn contains(self, train_id: u8) -> bool {
        self.train_ids().contains(&train_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nineteen_train_classes_in_order() {
        let names: Vec<_> = train_classes().iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            [
                "road",
                "sidewalk",
                "building",
                "wall",
                "fence",
                "pole",
                "traffic light",
                "traffic sign",
                "vegetation",
                "terrain",
                "sky",
                "person",
                "rider",
                "car",
                "truck",
                "bus",
                "train",
                "motorcycle",
                "bicycle"
            ]
        );
    }

    #[test]
    fn train_ids_by_name() {
        for (t, lab) in train_classes().iter().enumerate() {
            assert_eq!(usize::from(train_id(lab.name)), t);
        }
    }

    #[test]
    fn luts_round_trip() {
        let to_train = label_to_train_lut();
        let to_label = train_to_label_lut();
        for t in 0..19u8 {
            assert_eq!(to_train[to_label[t as usize] as usize], t);
        }
        assert_eq!(to_train[0], IGNORE);
        assert_eq!(to_train[34], IGNORE);
        assert_eq!(to_train[200], IGNORE);
    }

    #[test]
    fn synthia_maps_to_every_class_once() {
        let lut = synthia_to_train_lut();
        let mut seen: Vec<u8> = lut.iter().copied().filter(|&t| t != IGNORE).collect();
        seen.sort();
        assert_eq!(seen, (0..19).collect::<Vec<u8>>());
        assert_eq!(lut[3], 0);
        assert_eq!(lut[1], 10);
    }

    #[test]
    fn subsets() {
        assert_eq!(ClassSubset::All19.count(), 19);
        assert_eq!(ClassSubset::Synthia16.count(), 16);
        assert_eq!(ClassSubset::Synthia13.count(), 13);
        assert!(!ClassSubset::Synthia13.contains(5));
        assert!(ClassSubset::Synthia16.contains(5));
    }
}
