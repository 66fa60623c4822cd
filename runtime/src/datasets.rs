//! Dataset layouts: Cityscapes, GTA5 and SYNTHIA-RAND-CITYSCAPES (read only).
//!
//! | kind         | images                                           | labels                                                  |
//! |--------------|--------------------------------------------------|---------------------------------------------------------|
//! | `cityscapes` | `leftImg8bit/<split>/<city>/<key>_leftImg8bit.png` | `gtFine/<split>/<city>/<key>_gtFine_labelIds.png` (label ids) |
//! | `gta5`       | `images/<name>.png`                              | `labels/<name>.png` (Cityscapes label ids)              |
//! | `synthia`    | `RGB/<name>.png`                                 | `GT/LABELS/<name>.png` (16-bit, class id in the red channel) |
//!
//! Each kind's layout is one [`Layout`], found by [`DatasetKind::layout`]: its folders
//! and file names, how its label files are decoded and mapped to train ids, the class
//! subset a source of that kind is reported over, its default image size and its role
//! in an adaptation. The readers here, the synthetic writer (`crate::synth`) and the
//! trainer read these descriptions instead of matching on the kind.
//!
//! - The samples are the image folder's PNG/JPEG files found recursively, sorted by
//!   relative path, or the names of an optional list file (one path per line,
//!   relative to the image folder; blank lines and `#` comments skipped), as the
//!   reference's `train.txt` / `val.txt`.
//! - `split` only applies to Cityscapes; GTA5 and SYNTHIA have no split folders, so
//!   their subsets are selected with list files.
//! - Labels are optional as a whole (a Cityscapes split without `gtFine`, e.g. an
//!   unlabelled target); when the label folder exists every image must have one.
//! - Label ids are mapped to the 19 train ids with the tables of [`crate::labels`];
//!   ids outside the dataset's own id range are counted ([`Dataset::unknown_ids`])
//!   and reported once with a warning.
//!
//! Every error names the offending file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use image::{GrayImage, RgbImage};

use crate::imageio::{self, ImageError};
use crate::labels::{self, ClassSubset};

/// The dataset layouts; each kind is described by its [`Layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Cityscapes,
    Gta5,
    Synthia,
}

/// One line per kind: the kind and its layout. Defines [`DatasetKind::ALL`] and
/// [`DatasetKind::layout`] from the same list, so they cannot disagree, and a kind
/// without a line here does not compile (the `match` is exhaustive).
macro_rules! layouts {
    ($($kind:ident => $layout:ident),+ $(,)?) => {
        impl DatasetKind {
            /// Every kind, in the order messages list them.
            pub const ALL: &'static [Self] = &[$(Self::$kind),+];

            /// The description of this kind's layout.
            pub const fn layout(self) -> &'static Layout {
                match self {
                    $(Self::$kind => &$layout),+
                }
            }
        }
    };
}

layouts! {
    Cityscapes => CITYSCAPES,
    Gta5 => GTA5,
    Synthia => SYNTHIA,
}

const CITYSCAPES: Layout = Layout {
    name: "cityscapes",
    aliases: &[],
    image_dir: &["leftImg8bit"],
    label_dir: &["gtFine"],
    split_folders: true,
    files: FileNames {
        key: FrameKey::Cityscapes,
        image_suffix: "_leftImg8bit.png",
        label_suffix: "_gtFine_labelIds.png",
    },
    labels: LabelDecoding {
        read: read_gray_ids,
        to_train: labels::label_to_train_lut,
        // Cityscapes label ids 0..=33.
        max_known_id: 33,
    },
    subset: ClassSubset::All19,
    default_size: [1024, 512],
    role: Role::Target,
};

const GTA5: Layout = Layout {
    name: "gta5",
    aliases: &["gta"],
    image_dir: &["images"],
    label_dir: &["labels"],
    split_folders: false,
    files: FileNames {
        key: FrameKey::RelativeStem,
        image_suffix: ".png",
        label_suffix: ".png",
    },
    labels: LabelDecoding {
        read: read_gray_ids,
        to_train: labels::label_to_train_lut,
        // The Cityscapes ids, plus 34 for the license plate in some releases.
        max_known_id: 34,
    },
    subset: ClassSubset::All19,
    default_size: [1280, 720],
    role: Role::Source,
};

const SYNTHIA: Layout = Layout {
    name: "synthia",
    aliases: &[],
    image_dir: &["RGB"],
    label_dir: &["GT", "LABELS"],
    split_folders: false,
    files: FileNames {
        key: FrameKey::RelativeStem,
        image_suffix: ".png",
        label_suffix: ".png",
    },
    labels: LabelDecoding {
        read: read_synthia_ids,
        to_train: labels::synthia_to_train_lut,
        // SYNTHIA-RAND-CITYSCAPES: 0 void ... 22 lane marking.
        max_known_id: 22,
    },
    subset: ClassSubset::Synthia16,
    default_size: [1280, 760],
    role: Role::Source,
};

/// Everything that differs between dataset kinds, as data.
#[derive(Debug)]
pub struct Layout {
    /// The kind's name on command lines and in records (`gta5:DIR`).
    pub name: &'static str,
    /// Other names accepted on command lines.
    pub aliases: &'static [&'static str],
    /// The image folder under the dataset root, as path components.
    pub image_dir: &'static [&'static str],
    /// The label folder under the dataset root, as path components.
    pub label_dir: &'static [&'static str],
    /// Whether the image and label folders hold one folder per split (`train`,
    /// `val`, ...); without them the whole dataset is one set.
    pub split_folders: bool,
    pub files: FileNames,
    pub labels: LabelDecoding,
    /// The train classes results are reported over when this kind is the source: the
    /// classes it teaches (the others are left out of the ranking of LSE, too).
    pub subset: ClassSubset,
    /// The size docs/method.md resizes this kind's images to, `[width, height]`.
    pub default_size: [u32; 2],
    pub role: Role,
}

/// What a dataset kind is to a domain adaptation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A labelled (synthetic) source domain, the source of `adapt`.
    Source,
    /// The real target domain: adapted to, and where models are evaluated.
    Target,
}

/// How a layout names its files: an image is `<key><image_suffix>`, its label
/// `<key><label_suffix>` at the same relative path in the label folder.
#[derive(Debug)]
pub struct FileNames {
    pub key: FrameKey,
    /// How `lse synth` and the dataset's releases end an image's name (the readers
    /// take any PNG/JPEG file and find its key by [`FileNames::key`]).
    pub image_suffix: &'static str,
    /// How a label's name ends after the key.
    pub label_suffix: &'static str,
}

/// How a sample's key is found from its image's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKey {
    /// `<city>_<seq>_<frame>`: the first three `_`-separated fields of the file name
    /// ([`cityscapes_key`]); a name without them is an error.
    Cityscapes,
    /// The image's path relative to the image folder without its extension
    /// (`/`-separated); its label is named after the file's stem.
    RelativeStem,
}

/// A label file as read: `(width, height, the class id of every pixel)`.
pub type LabelIds = (u32, u32, Vec<u16>);

/// How a layout's label files are read and mapped to train ids.
#[derive(Debug)]
pub struct LabelDecoding {
    /// Reads the class id of every pixel.
    pub read: fn(&Path) -> Result<LabelIds, ImageError>,
    /// The table class id -> train id (ids outside it map to ignore).
    pub to_train: fn() -> [u8; 256],
    /// The largest id of the dataset's own label space (larger ids are unknown).
    pub max_known_id: u16,
}

impl Layout {
    /// The image folder of `split` (the split is used only with split folders).
    pub fn image_dir(&self, root: &Path, split: &str) -> PathBuf {
        self.folder(root, self.image_dir, split)
    }

    /// The label folder of `split` (the split is used only with split folders).
    pub fn label_dir(&self, root: &Path, split: &str) -> PathBuf {
        self.folder(root, self.label_dir, split)
    }

    fn folder(&self, root: &Path, parts: &[&str], split: &str) -> PathBuf {
        let mut dir = root.to_path_buf();
        dir.extend(parts);
        if self.split_folders {
            dir.push(split);
        }
        dir
    }

    /// The train ids a source of this kind does not teach (outside its subset).
    pub fn untaught_train_ids(&self) -> Vec<u8> {
        (0..labels::NUM_CLASSES as u8)
            .filter(|&c| !self.subset.contains(c))
            .collect()
    }
}

impl FileNames {
    /// The file name of the image of `key`.
    pub fn image_name(&self, key: &str) -> String {
        format!("{key}{}", self.image_suffix)
    }

    /// The file name of the label of `key`.
    pub fn label_name(&self, key: &str) -> String {
        format!("{key}{}", self.label_suffix)
    }

    /// The label path (relative to the label folder) and the key of the image at
    /// `rel` (relative to the image folder); `None` if its name has no key.
    pub fn label_of(&self, rel: &Path) -> Option<(PathBuf, String)> {
        match self.key {
            FrameKey::Cityscapes => {
                let file_name = rel
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let key = cityscapes_key(&file_name)?;
                Some((rel.with_file_name(self.label_name(&key)), key))
            }
            FrameKey::RelativeStem => {
                let mut label: OsString = rel.file_stem().unwrap_or_default().into();
                label.push(self.label_suffix);
                let key = rel.with_extension("").to_string_lossy().replace('\\', "/");
                Some((rel.with_file_name(label), key))
            }
        }
    }

    /// What an image's name must look like, for errors.
    fn image_pattern(&self) -> String {
        match self.key {
            FrameKey::Cityscapes => self.image_name("<city>_<seq>_<frame>"),
            FrameKey::RelativeStem => self.image_name("<name>"),
        }
    }
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: Vec<String>) -> String {
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        self.layout().name
    }

    /// The kinds' names for messages: `cityscapes, gta5 or synthia`.
    pub fn names() -> String {
        or_list(Self::ALL.iter().map(|k| k.name().to_string()).collect())
    }

    fn unknown() -> String {
        format!("unknown dataset kind (expected {})", Self::names())
    }
}

impl Role {
    /// The kinds that play this role as `KIND:DIR` specs, for messages and help:
    /// `gta5:DIR or synthia:DIR`.
    pub fn specs(self) -> String {
        let kinds = DatasetKind::ALL.iter().filter(|k| k.layout().role == self);
        or_list(kinds.map(|k| format!("{k}:DIR")).collect())
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DatasetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.to_ascii_lowercase();
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.name() == name || k.layout().aliases.contains(&name.as_str()))
            .ok_or_else(|| DatasetError::Spec {
                spec: s.to_string(),
                message: Self::unknown(),
            })
    }
}

/// A dataset on disk as given on command lines: `gta5:DIR`, `synthia:DIR`,
/// `cityscapes:DIR`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetSpec {
    pub kind: DatasetKind,
    pub root: PathBuf,
}

impl FromStr for DatasetSpec {
    type Err = DatasetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |message: &str| DatasetError::Spec {
            spec: s.to_string(),
            message: message.to_string(),
        };
        let (kind, root) = s
            .split_once(':')
            .ok_or_else(|| bad("expected KIND:DIR, e.g. gta5:/data/gta5"))?;
        if root.is_empty() {
            return Err(bad("the folder is empty"));
        }
        let kind = kind.parse().map_err(|_| bad(&DatasetKind::unknown()))?;
        Ok(Self {
            kind,
            root: PathBuf::from(root),
        })
    }
}

impl std::fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.root.display())
    }
}

/// Errors of reading datasets; each names the file or folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("invalid dataset `{spec}`: {message}")]
    Spec { spec: String, message: String },
    #[error("{kind} dataset: folder {path} does not exist")]
    MissingDir { kind: DatasetKind, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{kind} dataset at {path} has no images")]
    Empty { kind: DatasetKind, path: PathBuf },
    #[error("list file {list} line {line}: {message}")]
    List {
        list: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path} is not named {expected}")]
    BadName { path: PathBuf, expected: String },
    #[error("image {image} has no label (expected {expected})")]
    NoLabel { image: PathBuf, expected: PathBuf },
    #[error("image {image} is {image_size:?} (w, h) but its label {label} is {label_size:?}")]
    SizeMismatch {
        image: PathBuf,
        label: PathBuf,
        image_size: (u32, u32),
        label_size: (u32, u32),
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("sample index {index} out of range (dataset has {len} samples)")]
    Index { index: usize, len: usize },
}

/// One sample: an image, its label if the dataset has labels, and a frame key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub image: PathBuf,
    pub label: Option<PathBuf>,
    /// Unique name of the frame: `<city>_<seq>_<frame>` for Cityscapes, the file stem
    /// (with sub-folders joined by `/`) otherwise.
    pub key: String,
}

/// An opened dataset: a sorted list of samples and the label mapping of its kind.
#[derive(Debug)]
pub struct Dataset {
    kind: DatasetKind,
    root: PathBuf,
    samples: Vec<Sample>,
    unknown: Mutex<BTreeMap<u16, u64>>,
    warned: AtomicBool,
}

const IMAGE_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// All files under `dir` (recursively) for which `keep` holds, sorted by path.
/// Hidden files (names starting with `.`, e.g. temporary files) are skipped.
pub fn walk_files(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let io = |source| DatasetError::Io {
            path: d.clone(),
            source,
        };
        for entry in std::fs::read_dir(&d).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = entry.file_type().map_err(io)?;
            let is_dir = ft.is_dir() || (ft.is_symlink() && path.is_dir());
            if is_dir {
                stack.push(path);
            } else if keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a list file: one relative path per line, blank lines and `#` comments
/// skipped. Returns `(line number, path)` pairs.
pub fn read_list(list: &Path) -> Result<Vec<(usize, PathBuf)>, DatasetError> {
    let text = std::fs::read_to_string(list).map_err(|source| DatasetError::Io {
        path: list.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p = PathBuf::from(line);
        if p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(DatasetError::List {
                list: list.to_path_buf(),
                line: i + 1,
                message: format!("`{line}` must be a path relative to the image folder"),
            });
        }
        out.push((i + 1, p));
    }
    Ok(out)
}

/// The Cityscapes frame key `<city>_<seq>_<frame>` of a file name (its first three
/// `_`-separated fields), if it has at least four fields.
pub fn cityscapes_key(file_name: &str) -> Option<String> {
    let parts: Vec<&str> = file_name.splitn(4, '_').collect();
    (parts.len() == 4 && parts[..3].iter().all(|p| !p.is_empty())).then(|| parts[..3].join("_"))
}

/// The images (relative to `image_dir`) of a list file, each checked to exist, else
/// every image file under `image_dir`.
fn image_names(image_dir: &Path, list: Option<&Path>) -> Result<Vec<PathBuf>, DatasetError> {
    let Some(list) = list else {
        return Ok(walk_files(image_dir, &is_image)?
            .into_iter()
            .map(|p| {
                p.strip_prefix(image_dir)
                    .map(Path::to_path_buf)
                    .unwrap_or(p)
            })
            .collect());
    };
    let names = read_list(list)?;
    let mut out = Vec::with_capacity(names.len());
    for (line, rel) in names {
        let full = image_dir.join(&rel);
        if !full.is_file() {
            return Err(DatasetError::List {
                list: list.to_path_buf(),
                line,
                message: format!("image {} does not exist", full.display()),
            });
        }
        out.push(rel);
    }
    Ok(out)
}

/// The sample of image `rel` (relative to `image_dir`) of a dataset named as in
/// `files`: its frame key and, when the dataset has a `label_dir`, its label file
/// (which must exist).
fn sample(
    files: &FileNames,
    image_dir: &Path,
    label_dir: Option<&Path>,
    rel: PathBuf,
) -> Result<Sample, DatasetError> {
    let image = image_dir.join(&rel);
    let (label_rel, key) = files.label_of(&rel).ok_or_else(|| DatasetError::BadName {
        path: image.clone(),
        expected: files.image_pattern(),
    })?;
    let label = match label_dir {
        Some(dir) => {
            let expected = dir.join(label_rel);
            if !expected.is_file() {
                return Err(DatasetError::NoLabel { image, expected });
            }
            Some(expected)
        }
        None => None,
    };
    Ok(Sample { image, label, key })
}

impl Dataset {
    /// Opens the dataset of `kind` at `root`. `split` (e.g. `"train"`, `"val"`) selects
    /// the Cityscapes split folder and is not used by GTA5 and SYNTHIA; `list` selects
    /// a subset by a list file.
    pub fn open(
        kind: DatasetKind,
        root: &Path,
        split: &str,
        list: Option<&Path>,
    ) -> Result<Self, DatasetError> {
        let layout = kind.layout();
        let (image_dir, label_dir) = (layout.image_dir(root, split), layout.label_dir(root, split));
        if !image_dir.is_dir() {
            return Err(DatasetError::MissingDir {
                kind,
                path: image_dir,
            });
        }
        let has_labels = label_dir.is_dir();
        let rel_images = image_names(&image_dir, list)?;
        if rel_images.is_empty() {
            return Err(DatasetError::Empty {
                kind,
                path: list.map_or(image_dir.clone(), Path::to_path_buf),
            });
        }
        let labels = has_labels.then_some(label_dir.as_path());
        let samples = rel_images
            .into_iter()
            .map(|rel| sample(&layout.files, &image_dir, labels, rel))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            kind,
            root: root.to_path_buf(),
            samples,
            unknown: Mutex::new(BTreeMap::new()),
            warned: AtomicBool::new(false),
        })
    }

    /// Opens a [`DatasetSpec`].
    pub fn open_spec(
        spec: &DatasetSpec,
        split: &str,
        list: Option<&Path>,
    ) -> Result<Self, DatasetError> {
        Self::open(spec.kind, &spec.root, split, list)
    }

    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Whether the samples have labels.
    pub fn has_labels(&self) -> bool {
        self.samples.first().is_some_and(|s| s.label.is_some())
    }

    fn sample(&self, i: usize) -> Result<&Sample, DatasetError> {
        self.samples.get(i).ok_or(DatasetError::Index {
            index: i,
            len: self.samples.len(),
        })
    }

    /// Checks every sample's image and label headers: readable, same size. Reads only
    /// headers, in parallel.
    pub fn check(&self) -> Result<(), DatasetError> {
        use rayon::prelude::*;
        self.samples.par_iter().try_for_each(|s| {
            let isz = imageio::dimensions(&s.image)?;
            if let Some(l) = &s.label {
                let lsz = imageio::dimensions(l)?;
                if lsz != isz {
                    return Err(DatasetError::SizeMismatch {
                        image: s.image.clone(),
                        label: l.clone(),
                        image_size: isz,
                        label_size: lsz,
                    });
                }
            }
            Ok(())
        })
    }

    /// The image of sample `i` at its original size.
    pub fn load_image(&self, i: usize) -> Result<RgbImage, DatasetError> {
        Ok(imageio::read_rgb(&self.sample(i)?.image)?)
    }

    /// Image and train-id label of sample `i` at their original size (the label is
    /// `None` when the dataset has no labels). A label whose size differs from the
    /// image's is an error.
    pub fn load_sample_original(
        &self,
        i: usize,
    ) -> Result<(RgbImage, Option<GrayImage>), DatasetError> {
        let s = self.sample(i)?;
        let img = imageio::read_rgb(&s.image)?;
        let Some(label_path) = &s.label else {
            return Ok((img, None));
        };
        let label = self.read_train_ids(label_path)?;
        if label.dimensions() != img.dimensions() {
            return Err(DatasetError::SizeMismatch {
                image: s.image.clone(),
                label: label_path.clone(),
                image_size: img.dimensions(),
                label_size: label.dimensions(),
            });
        }
        Ok((img, Some(label)))
    }

    /// Image (bicubic) and train-id label (nearest) of sample `i`, resized to
    /// `size = [width, height]`.
    pub fn load_sample(
        &self,
        i: usize,
        size: [u32; 2],
    ) -> Result<(RgbImage, Option<GrayImage>), DatasetError> {
        let (img, label) = self.load_sample_original(i)?;
        let img = imageio::resize_rgb(&img, size[0], size[1])?;
        let label = label
            .map(|l| imageio::resize_labels(&l, size[0], size[1]))
            .transpose()?;
        Ok((img, label))
    }

    /// Reads a label file of this dataset's kind and maps it to train ids.
    pub fn read_train_ids(&self, path: &Path) -> Result<GrayImage, DatasetError> {
        let decoding = &self.kind.layout().labels;
        let (w, h, ids) = (decoding.read)(path)?;
        let lut = (decoding.to_train)();
        let max_known = decoding.max_known_id;
        let mut unknown: BTreeMap<u16, u64> = BTreeMap::new();
        let out: Vec<u8> = ids
            .iter()
            .map(|&id| {
                if id > max_known {
                    *unknown.entry(id).or_default() += 1;
                    labels::IGNORE
                } else {
                    lut[id as usize]
                }
            })
            .collect();
        if !unknown.is_empty() {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    file = %path.display(),
                    ids = ?unknown.keys().collect::<Vec<_>>(),
                    "unknown {} label ids mapped to ignore (reported once; totals in the dataset's unknown-id count)",
                    self.kind
                );
            }
            let mut all = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
            for (id, n) in unknown {
                *all.entry(id).or_default() += n;
            }
        }
        Ok(GrayImage::from_raw(w, h, out).expect("buffer size matches"))
    }

    /// Pixels with unknown label ids seen so far, per id (they were mapped to ignore).
    pub fn unknown_ids(&self) -> BTreeMap<u16, u64> {
        self.unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Reads an 8-bit grey label PNG (Cityscapes label ids) and returns the id of every
/// pixel.
pub fn read_gray_ids(path: &Path) -> Result<LabelIds, ImageError> {
    let g = imageio::read_gray(path)?;
    let (w, h) = g.dimensions();
    Ok((w, h, g.into_raw().into_iter().map(u16::from).collect()))
}

/// Reads a SYNTHIA label PNG (8- or 16-bit, grey or RGB(A)) and returns the class id
/// of every pixel: the first (red, or grey) channel, at full 16-bit precision.
pub fn read_synthia_ids(path: &Path) -> Result<(u32, u32, Vec<u16>), ImageError> {
    let dec_err = |message: String| ImageError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|error| ImageError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| dec_err(e.to_string()))?;
    let (color, depth) = reader.output_color_type();
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(dec_err("palette label PNGs are not SYNTHIA labels".into()));
        }
    };
    let bytes_per_sample = match depth {
        png::BitDepth::Sixteen => 2,
        png::BitDepth::Eight => 1,
        other => return Err(dec_err(format!("unsupported bit depth {other:?}"))),
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| dec_err("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| dec_err(e.to_string()))?;
    let (w, h) = (info.width, info.height);
    let stride = info.line_size;
    let px = channels * bytes_per_sample;
    let mut ids = Vec::with_capacity((w * h) as usize);
    for y in 0..h as usize {
        let row = &buf[y * stride..y * stride + w as usize * px];
        for p in row.chunks_exact(px) {
            ids.push(if bytes_per_sample == 2 {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                u16::from(p[0])
            });
        }
    }
    Ok((w, h, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s: DatasetSpec = "gta5:/data/g".parse().unwrap();
        assert_eq!(s.kind, DatasetKind::Gta5);
        assert_eq!(s.root, PathBuf::from("/data/g"));
        assert!("foo:/x".parse::<DatasetSpec>().is_err());
        assert!("cityscapes".parse::<DatasetSpec>().is_err());
        assert!("synthia:".parse::<DatasetSpec>().is_err());
        assert_eq!(s.to_string(), "gta5:/data/g");
    }

    #[test]
    fn keys() {
        assert_eq!(
            cityscapes_key("frankfurt_000000_000294_leftImg8bit.png").as_deref(),
            Some("frankfurt_000000_000294")
        );
        assert_eq!(cityscapes_key("a_b.png"), None);
    }

    #[test]
    fn kinds_are_named_by_their_layouts() {
        assert_eq!(DatasetKind::names(), "cityscapes, gta5 or synthia");
        for &k in DatasetKind::ALL {
            assert_eq!(k.name().parse::<DatasetKind>().unwrap(), k);
            assert_eq!(k.name().to_uppercase().parse::<DatasetKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(
                json,
                format!("\"{}\"", k.name()),
                "serde and layout names agree"
            );
        }
        assert_eq!("gta".parse::<DatasetKind>().unwrap(), DatasetKind::Gta5);
        let e = "kitti:/x".parse::<DatasetSpec>().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid dataset `kitti:/x`: unknown dataset kind (expected cityscapes, gta5 or synthia)"
        );
        assert_eq!(Role::Source.specs(), "gta5:DIR or synthia:DIR");
        assert_eq!(Role::Target.specs(), "cityscapes:DIR");
    }

    #[test]
    fn layouts_name_folders_and_files() {
        let cs = DatasetKind::Cityscapes.layout();
        let root = Path::new("r");
        assert_eq!(cs.image_dir(root, "val"), Path::new("r/leftImg8bit/val"));
        assert_eq!(cs.label_dir(root, "val"), Path::new("r/gtFine/val"));
        let (label, key) = cs
            .files
            .label_of(Path::new("aa/aa_000001_000019_leftImg8bit.png"))
            .unwrap();
        assert_eq!(label, Path::new("aa/aa_000001_000019_gtFine_labelIds.png"));
        assert_eq!(key, "aa_000001_000019");
        assert_eq!(cs.files.label_of(Path::new("aa/bad.png")), None);
        let syn = DatasetKind::Synthia.layout();
        assert_eq!(syn.label_dir(root, "val"), Path::new("r/GT/LABELS"));
        let (label, key) = syn.files.label_of(Path::new("a/0001.jpg")).unwrap();
        assert_eq!(
            (label.as_path(), key.as_str()),
            (Path::new("a/0001.png"), "a/0001")
        );
    }

    #[test]
    fn untaught_classes_come_from_the_subset() {
        let synthia = DatasetKind::Synthia.layout().untaught_train_ids();
        assert_eq!(synthia, labels::SYNTHIA_UNTAUGHT);
        assert!(DatasetKind::Gta5.layout().untaught_train_ids().is_empty());
    }
}
