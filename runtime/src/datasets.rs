//! Dataset layouts: Cityscapes, GTA5 and SYNTHIA-RAND-CITYSCAPES (read only).
//!
//! | kind         | images                                           | labels                                                  |
//! |--------------|--------------------------------------------------|---------------------------------------------------------|
//! | `cityscapes` | `leftImg8bit/<split>/<city>/<key>_leftImg8bit.png` | `gtFine/<split>/<city>/<key>_gtFine_labelIds.png` (label ids) |
//! | `gta5`       | `images/<name>.png`                              | `labels/<name>.png` (Cityscapes label ids)              |
//! | `synthia`    | `RGB/<name>.png`                                 | `GT/LABELS/<name>.png` (16-bit, class id in the red channel) |
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
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use image::{GrayImage, RgbImage};

use crate::imageio::{self, ImageError};
use crate::labels;

/// The dataset layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Cityscapes,
    Gta5,
    Synthia,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cityscapes => "cityscapes",
            Self::Gta5 => "gta5",
            Self::Synthia => "synthia",
        }
    }

    /// The size docs/method.md resizes this dataset's images to, `[width, height]`.
    pub fn default_size(self) -> [u32; 2] {
        match self {
            Self::Cityscapes => [1024, 512],
            Self::Gta5 => [1280, 720],
            Self::Synthia => [1280, 760],
        }
    }

    /// The largest label id of the dataset's own label space (larger ids are unknown).
    fn max_known_id(self) -> u16 {
        match self {
            // Cityscapes ids 0..=33 (GTA5 uses the same ids, plus 34 for the
            // license plate in some releases).
            Self::Cityscapes => 33,
            Self::Gta5 => 34,
            // SYNTHIA-RAND-CITYSCAPES: 0 void ... 22 lane marking.
            Self::Synthia => 22,
        }
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
        match s.to_ascii_lowercase().as_str() {
            "cityscapes" => Ok(Self::Cityscapes),
            "gta5" | "gta" => Ok(Self::Gta5),
            "synthia" => Ok(Self::Synthia),
            _ => Err(DatasetError::Spec {
                spec: s.to_string(),
                message: "unknown dataset kind (expected cityscapes, gta5 or synthia)".into(),
            }),
        }
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
        let kind = kind
            .parse()
            .map_err(|_| bad("unknown dataset kind (expected cityscapes, gta5 or synthia)"))?;
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
    BadName {
        path: PathBuf,
        expected: &'static str,
    },
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

/// The sample of image `rel` (relative to `image_dir`) of a `kind` dataset: its frame
/// key and, when the dataset has a `label_dir`, its label file (which must exist).
fn sample(
    kind: DatasetKind,
    image_dir: &Path,
    label_dir: Option<&Path>,
    rel: PathBuf,
) -> Result<Sample, DatasetError> {
    let image = image_dir.join(&rel);
    let file_name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (label_rel, key) = match kind {
        DatasetKind::Cityscapes => {
            let key = cityscapes_key(&file_name).ok_or_else(|| DatasetError::BadName {
                path: image.clone(),
                expected: "<city>_<seq>_<frame>_leftImg8bit.png",
            })?;
            let label_name = format!("{key}_gtFine_labelIds.png");
            (rel.with_file_name(label_name), key)
        }
        DatasetKind::Gta5 | DatasetKind::Synthia => {
            let key = rel.with_extension("").to_string_lossy().replace('\\', "/");
            (rel.with_extension("png"), key)
        }
    };
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
        let (image_dir, label_dir) = match kind {
            DatasetKind::Cityscapes => (
                root.join("leftImg8bit").join(split),
                root.join("gtFine").join(split),
            ),
            DatasetKind::Gta5 => (root.join("images"), root.join("labels")),
            DatasetKind::Synthia => (root.join("RGB"), root.join("GT").join("LABELS")),
        };
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
            .map(|rel| sample(kind, &image_dir, labels, rel))
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
        let (w, h, ids) = match self.kind {
            DatasetKind::Synthia => read_synthia_ids(path)?,
            DatasetKind::Cityscapes | DatasetKind::Gta5 => {
                let g = imageio::read_gray(path)?;
                let (w, h) = g.dimensions();
                (w, h, g.into_raw().into_iter().map(u16::from).collect())
            }
        };
        let lut = match self.kind {
            DatasetKind::Synthia => labels::synthia_to_train_lut(),
            _ => labels::label_to_train_lut(),
        };
        let max_known = self.kind.max_known_id();
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
}
