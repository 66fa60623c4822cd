//! Checkpoints (safetensors with metadata) and weight import.
//!
//! Our checkpoints are safetensors files whose metadata records the architecture,
//! width, classes and initialisation (keys `lse.*`), so a checkpoint of another
//! width is refused with a clear message instead of a shape error deep in libtorch.
//! Other named tensors (optimiser state, ...) may live in the same file under their
//! own prefixes; [`load_network`] only reads the network's parameters.
//!
//! Imports: a reference-layout FCN8s state dict (`conv1_1.weight`, ...) or a
//! torchvision-layout ImageNet VGG16 (`features.N.*`, `classifier.0/3.*`, the latter
//! reshaped onto fc6/fc7), from `.pth`/`.pt` (either `torch.save` format, see
//! [`crate::pth`]) or `.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor, nn};

use crate::fcn8s::{Fcn8sConfig, Fcn8sSpec, InitScheme};

/// Errors of reading and writing checkpoints; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read checkpoint {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write checkpoint {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path} is not an LSE checkpoint: {message}")]
    NotOurs { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, the network expects {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error(
        "checkpoint {path} is a width-{found} network with {found_classes} classes, \
         but width {expected} with {expected_classes} classes was asked for"
    )]
    Mismatch {
        path: PathBuf,
        found: f64,
        found_classes: i64,
        expected: f64,
        expected_classes: i64,
    },
    #[error(transparent)]
    Pth(#[from] crate::pth::PthError),
}

/// What a checkpoint's metadata records.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    pub config: Fcn8sConfig,
    pub init: InitScheme,
    /// Further `lse.*` keys (method, source, run settings, ...).
    pub extra: BTreeMap<String, String>,
}

impl CheckpointMeta {
    pub fn new(config: Fcn8sConfig, init: InitScheme) -> Self {
        Self {
            config,
            init,
            extra: BTreeMap::new(),
        }
    }

    fn to_map(&self) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = self
            .extra
            .iter()
            .map(|(k, v)| (format!("lse.{k}"), v.clone()))
            .collect();
        m.insert("lse.architecture".into(), "vgg16-fcn8s".into());
        m.insert("lse.width".into(), self.config.width.to_string());
        m.insert("lse.classes".into(), self.config.classes.to_string());
        m.insert(
            "lse.init".into(),
            serde_json::to_value(self.init)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        );
        m.insert("lse.version".into(), lse_runtime::VERSION.into());
        m
    }

    fn from_map(path: &Path, m: &HashMap<String, String>) -> Result<Self, CheckpointError> {
        let not_ours = |message: String| CheckpointError::NotOurs {
            path: path.to_path_buf(),
            message,
        };
        let get = |k: &str| {
            m.get(k)
                .ok_or_else(|| not_ours(format!("metadata key `{k}` missing")))
        };
        let arch = get("lse.architecture")?;
        if arch != "vgg16-fcn8s" {
            return Err(not_ours(format!("architecture `{arch}`")));
        }
        let width: f64 = get("lse.width")?
            .parse()
            .map_err(|e| not_ours(format!("lse.width: {e}")))?;
        let classes: i64 = get("lse.classes")?
            .parse()
            .map_err(|e| not_ours(format!("lse.classes: {e}")))?;
        if width <= 0.0 || width > 4.0 || width.is_nan() || !(1..=255).contains(&classes) {
            return Err(not_ours(format!("width {width}, classes {classes}")));
        }
        let init = m
            .get("lse.init")
            .and_then(|s| serde_json::from_value(serde_json::Value::String(s.clone())).ok())
            .unwrap_or_default();
        let extra = m
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("lse.")?.to_string(), v.clone())))
            .filter(|(k, _)| {
                !["architecture", "width", "classes", "init", "version"].contains(&k.as_str())
            })
            .collect();
        Ok(Self {
            config: Fcn8sConfig { width, classes },
            init,
            extra,
        })
    }
}

fn kind_to_dtype(k: Kind) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as D;
    Some(match k {
        Kind::Float => D::F32,
        Kind::Double => D::F64,
        Kind::Half => D::F16,
        Kind::BFloat16 => D::BF16,
        Kind::Int64 => D::I64,
        Kind::Int => D::I32,
        Kind::Uint8 => D::U8,
        Kind::Int8 => D::I8,
        Kind::Bool => D::BOOL,
        _ => return None,
    })
}

fn dtype_to_kind(d: safetensors::Dtype) -> Option<Kind> {
    use safetensors::Dtype as D;
    Some(match d {
        D::F32 => Kind::Float,
        D::F64 => Kind::Double,
        D::F16 => Kind::Half,
        D::BF16 => Kind::BFloat16,
        D::I64 => Kind::Int64,
        D::I32 => Kind::Int,
        D::U8 => Kind::Uint8,
        D::I8 => Kind::Int8,
        D::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Raw little-endian bytes of a tensor (moved to the CPU, made contiguous).
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.to_device(Device::Cpu).contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut buf = vec![0u8; n];
    t.copy_data_u8(&mut buf, t.numel());
    buf
}

/// Writes named tensors and metadata as one safetensors file, atomically.
pub fn save(
    path: &Path,
    meta: &CheckpointMeta,
    tensors: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let werr = |message: String| CheckpointError::Write {
        path: path.to_path_buf(),
        message,
    };
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = kind_to_dtype(t.kind()).ok_or_else(|| {
            werr(format!(
                "tensor `{name}` has unsupported kind {:?}",
                t.kind()
            ))
        })?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype, shape, tensor_bytes(t)));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| werr(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let bytes =
        safetensors::serialize(views, Some(meta.to_map())).map_err(|e| werr(e.to_string()))?;
    lse_runtime::imageio::write_atomic(path, &bytes).map_err(|e| werr(e.to_string()))
}

/// A file's metadata and its named tensors.
pub type NamedTensors = (HashMap<String, String>, Vec<(String, Tensor)>);

/// Reads every tensor of a safetensors file (CPU) and its metadata.
pub fn read_safetensors(path: &Path) -> Result<NamedTensors, CheckpointError> {
    if !path.is_file() {
        return Err(CheckpointError::Missing {
            path: path.to_path_buf(),
        });
    }
    let rerr = |message: String| CheckpointError::Read {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| rerr(e.to_string()))?;
    let (_, md) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| rerr(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| rerr(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = dtype_to_kind(view.dtype()).ok_or_else(|| {
            rerr(format!(
                "tensor `{name}` has unsupported dtype {:?}",
                view.dtype()
            ))
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t =
            Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| rerr(e.to_string()))?;
        out.push((name, t));
    }
    let meta = md.metadata().clone().unwrap_or_default();
    Ok((meta, out))
}

/// Reads the metadata of one of our checkpoints from the file's header only (the
/// tensors, hundreds of MB for the full-width network, are not read).
pub fn read_meta(path: &Path) -> Result<CheckpointMeta, CheckpointError> {
    use std::io::Read;
    if !path.is_file() {
        return Err(CheckpointError::Missing {
            path: path.to_path_buf(),
        });
    }
    let rerr = |message: String| CheckpointError::Read {
        path: path.to_path_buf(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| rerr(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| rerr(format!("no safetensors header: {e}")))?;
    let len = u64::from_le_bytes(len);
    let file_len = f.metadata().map_err(|e| rerr(e.to_string()))?.len();
    if len == 0 || len > 100 << 20 || len + 8 > file_len {
        return Err(rerr(format!("invalid safetensors header length {len}")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| rerr(e.to_string()))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| rerr(format!("invalid header: {e}")))?;
    let md: HashMap<String, String> = header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    CheckpointMeta::from_map(path, &md)
}

/// Saves the network's parameters (every variable of `vs`) as our checkpoint.
pub fn save_network(
    path: &Path,
    vs: &nn::VarStore,
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    save(path, meta, &named)
}

/// Copies named tensors into the network's variables: every variable the spec
/// names must be present with the right shape (the error names the first that is
/// not). Tensors outside the network are ignored.
pub fn copy_into(
    vs: &mut nn::VarStore,
    source: &Path,
    tensors: &HashMap<String, Tensor>,
    skip_frozen: bool,
) -> Result<(), CheckpointError> {
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        if skip_frozen && name.starts_with("upscore") {
            continue;
        }
        let var = &vars[name];
        let t = tensors
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: source.to_path_buf(),
                name: name.clone(),
            })?;
        if t.size() != var.size() {
            return Err(CheckpointError::Shape {
                path: source.to_path_buf(),
                name: name.clone(),
                found: t.size(),
                expected: var.size(),
            });
        }
        let mut v = var.shallow_clone();
        tch::no_grad(|| v.copy_(&t.to_kind(var.kind()).to_device(var.device())));
    }
    Ok(())
}

/// Loads one of our checkpoints into `vs`, checking width and classes.
pub fn load_network(
    vs: &mut nn::VarStore,
    path: &Path,
    expected: Fcn8sConfig,
) -> Result<CheckpointMeta, CheckpointError> {
    let (md, tensors) = read_safetensors(path)?;
    let meta = CheckpointMeta::from_map(path, &md)?;
    if (meta.config.width - expected.width).abs() > 1e-9 || meta.config.classes != expected.classes
    {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            found: meta.config.width,
            found_classes: meta.config.classes,
            expected: expected.width,
            expected_classes: expected.classes,
        });
    }
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    copy_into(vs, path, &map, false)?;
    Ok(meta)
}

/// Reads a state dict from `.pth`/`.pt` (zip or legacy `torch.save`) or `.safetensors`.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>, CheckpointError> {
    if !path.is_file() {
        return Err(CheckpointError::Missing {
            path: path.to_path_buf(),
        });
    }
    let is_st = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let v = if is_st {
        read_safetensors(path)?.1
    } else {
        crate::pth::load_state_dict(path)?
    };
    Ok(v.into_iter().collect())
}

/// Imports a reference-layout FCN8s state dict (`conv1_1.weight`, ... ; the
/// `upscore*` kernels are optional: ours are the fixed bilinear ones anyway, and
/// when present they must have the right shape).
pub fn import_fcn8s(vs: &mut nn::VarStore, path: &Path) -> Result<(), CheckpointError> {
    let sd = read_state_dict(path)?;
    let vars = vs.variables();
    for (name, var) in vars.iter().filter(|(n, _)| n.starts_with("upscore")) {
        if let Some(t) = sd.get(name)
            && t.size() != var.size()
        {
            return Err(CheckpointError::Shape {
                path: path.to_path_buf(),
                name: name.clone(),
                found: t.size(),
                expected: var.size(),
            });
        }
    }
    copy_into(vs, path, &sd, true)
}

/// Imports torchvision-layout ImageNet VGG16 weights onto conv1_1..conv5_3 and,
/// reshaped, onto fc6 (`classifier.0`, 4096 x 25088 -> 4096 x 512 x 7 x 7) and fc7
/// (`classifier.3`, 4096 x 4096 -> 4096 x 4096 x 1 x 1). Score layers keep their
/// initialisation.
pub fn import_vgg16(
    vs: &mut nn::VarStore,
    spec: &Fcn8sSpec,
    path: &Path,
) -> Result<(), CheckpointError> {
    let sd = read_state_dict(path)?;
    const FEATURES: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
    let mut mapped: HashMap<String, Tensor> = HashMap::new();
    let convs: Vec<_> = spec.stages.iter().flatten().collect();
    let get = |name: &str| {
        sd.get(name).ok_or_else(|| CheckpointError::MissingTensor {
            path: path.to_path_buf(),
            name: name.to_string(),
        })
    };
    for (c, idx) in convs.iter().zip(FEATURES) {
        for p in ["weight", "bias"] {
            let t = get(&format!("features.{idx}.{p}"))?;
            mapped.insert(format!("{}.{p}", c.name), t.shallow_clone());
        }
    }
    for (fc, idx) in [(&spec.fc6, 0), (&spec.fc7, 3)] {
        let w = get(&format!("classifier.{idx}.weight"))?;
        let want = [fc.cout, fc.cin * fc.kernel * fc.kernel];
        if w.size() != want {
            return Err(CheckpointError::Shape {
                path: path.to_path_buf(),
                name: format!("classifier.{idx}.weight"),
                found: w.size(),
                expected: want.to_vec(),
            });
        }
        mapped.insert(
            format!("{}.weight", fc.name),
            w.view([fc.cout, fc.cin, fc.kernel, fc.kernel]),
        );
        mapped.insert(
            format!("{}.bias", fc.name),
            get(&format!("classifier.{idx}.bias"))?.shallow_clone(),
        );
    }
    // Only the backbone and fc layers come from VGG16.
    let vars = vs.variables();
    for (name, var) in vars.iter() {
        if let Some(t) = mapped.get(name) {
            if t.size() != var.size() {
                return Err(CheckpointError::Shape {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    found: t.size(),
                    expected: var.size(),
                });
            }
            let mut v = var.shallow_clone();
            tch::no_grad(|| v.copy_(&t.to_kind(var.kind()).to_device(var.device())));
        }
    }
    Ok(())
}
