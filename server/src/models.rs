//! The served models: each one a name, its worker pool and its metadata, held in a
//! registry that requests look models up in by name.
//!
//! A request takes an `Arc` of the model it uses for its whole life, so replacing a
//! model in the registry never disturbs requests in flight: they finish on the old
//! pool, whose workers exit once the last request holding it has been answered (the
//! pool's queue closes when the pool is dropped).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use lse_runtime::contract::ModelMeta;
use lse_runtime::engine::Provider;
use serde::Serialize;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolOptions};

/// The name a model is served under when no name is asked for.
pub const DEFAULT_NAME: &str = "default";

/// The version every served model reports in the Open Inference Protocol (one version
/// per name: a reload replaces it).
pub const VERSION: &str = "1";

/// A stable identity of a model file: `<name>-<16 hex digits of FNV-1a 64 of its bytes>`,
/// where the name is the folder's name for `.../<name>/model.onnx`, else the file stem.
pub fn model_id(path: &Path) -> std::io::Result<(String, u64)> {
    let bytes = std::fs::read(path)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = if stem == "model" {
        path.canonicalize()
            .ok()
            .and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or(stem)
    } else {
        stem
    };
    Ok((format!("{name}-{h:016x}"), bytes.len() as u64))
}

/// What a served model is.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// `<folder name>-<first 16 hex digits of the file's FNV-1a hash>`.
    pub id: String,
    /// The file relative to the model folder's parent (`NAME/model.onnx`): answers never
    /// carry the server's absolute paths.
    pub path: String,
    pub file_bytes: u64,
    pub provider: Provider,
}

/// One loaded model.
pub struct Served {
    /// The name requests use (`?model=NAME`, `/v2/models/NAME`).
    pub name: String,
    pub info: ModelInfo,
    pub meta: ModelMeta,
    pub pool: Pool,
    /// Train id -> Cityscapes label id, from the model's metadata.
    pub label_lut: [u8; 256],
    /// Train id -> colour, from the model's metadata.
    pub color_lut: lse_runtime::palette::ColorLut,
}

impl Served {
    /// Loads `path` into a new worker pool (blocking: opens one session per worker).
    /// Warm-up then runs in the workers; [`Pool::ready`] tells when it is done. Errors
    /// name the model by `name` and [`shown_path`], never by its absolute path.
    pub fn load(
        name: &str,
        path: &Path,
        opts: &PoolOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let shown = shown_path(path);
        let (id, file_bytes) =
            model_id(path).map_err(|e| anyhow::anyhow!("cannot read model {shown}: {e}"))?;
        // The engine's error already says "cannot load model PATH: ...".
        let (pool, meta, provider) = Pool::start(path, opts, metrics)
            .map_err(|e| anyhow::anyhow!("{}", scrub(&e.to_string(), path, &shown)))?;
        Ok(Self {
            name: name.to_string(),
            info: ModelInfo {
                id,
                path: shown,
                file_bytes,
                provider,
            },
            label_lut: meta.label_lut(),
            color_lut: meta.color_lut(),
            meta,
            pool,
        })
    }
}

/// How answers name a model file: its folder's name and its own (`NAME/model.onnx`).
pub fn shown_path(path: &Path) -> String {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    let folder = path
        .parent()
        .and_then(Path::file_name)
        .map(|f| f.to_string_lossy().into_owned());
    match (folder, file) {
        (Some(d), Some(f)) => format!("{d}/{f}"),
        (None, Some(f)) => f,
        _ => "model".into(),
    }
}

/// `text` with the absolute path of a model file (and of its folder's parent) replaced
/// by the shown one, for errors that go out in answers.
pub fn scrub(text: &str, path: &Path, shown: &str) -> String {
    let mut out = text.replace(&*path.to_string_lossy(), shown);
    if let Some(root) = path.parent().and_then(Path::parent) {
        let root = root.to_string_lossy();
        if root.len() > 1 {
            out = out.replace(&*root, "<model-dir>");
        }
    }
    out
}

/// The models the server answers with, by name.
pub struct Registry {
    map: RwLock<BTreeMap<String, Arc<Served>>>,
    /// The name of the model requests without a name get.
    pub default: String,
    /// One lock per name, held while that model loads, so two loads of one name
    /// cannot race while loads of different names run side by side.
    loading: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Registry {
    /// The registry of `models`; the default is `default`, else the first name.
    pub fn new(models: Vec<Served>) -> Self {
        let map: BTreeMap<String, Arc<Served>> = models
            .into_iter()
            .map(|m| (m.name.clone(), Arc::new(m)))
            .collect();
        let default = if map.contains_key(DEFAULT_NAME) {
            DEFAULT_NAME.to_string()
        } else {
            map.keys()
                .next()
                .cloned()
                .unwrap_or_else(|| DEFAULT_NAME.into())
        };
        Self {
            map: RwLock::new(map),
            default,
            loading: Mutex::new(BTreeMap::new()),
        }
    }

    /// The model called `name`, or the default model when `name` is `None`.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<Served>, ApiError> {
        let name = name.unwrap_or(&self.default);
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = map.keys().map(String::as_str).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_model",
                format!(
                    "no model named `{}`: this server has {}",
                    name.chars().take(64).collect::<String>(),
                    known.join(", ")
                ),
            )
        })
    }

    /// Every model, in name order.
    pub fn all(&self) -> Vec<Arc<Served>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// Puts `model` in place of the one of the same name; returns the replaced one,
    /// resumed if it was paused, so that the requests it holds finish on it.
    pub fn replace(&self, model: Served) -> Option<Arc<Served>> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let old = map.insert(model.name.clone(), Arc::new(model));
        if let Some(o) = &old {
            o.pool.resume();
        }
        old
    }

    /// The lock that loads of `name` hold (loads of other names do not wait for it).
    pub fn load_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    /// Whether every model's workers have loaded and warmed up.
    pub fn ready(&self) -> bool {
        self.all().iter().all(|m| m.pool.ready())
    }
}

/// Where a model's file lies: `DIR/NAME/model.onnx`.
pub fn model_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name).join("model.onnx")
}

/// The longest model name, in bytes (a folder name on common file systems).
pub const MAX_NAME_BYTES: usize = 255;

/// The model folders of `dir` whose `model.onnx` passes [`resolve`], by name, with
/// their canonical file paths; folders that fail it are logged and left out.
pub fn scan(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read --model-dir {}: {e}", dir.display()))?;
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if !model_file(dir, &name).exists() {
                return None;
            }
            match resolve(dir, &name) {
                Ok(file) => Some((name, file)),
                Err(err) => {
                    tracing::warn!(error = %err, "left out of --model-dir");
                    None
                }
            }
        })
        .collect();
    found.sort();
    Ok(found)
}

/// A model name as a `--model-dir` folder: 1 to [`MAX_NAME_BYTES`] bytes, no path
/// separators or NUL, not `.` or `..`.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let reason = if name.len() > MAX_NAME_BYTES {
        format!(
            "a model name has at most {MAX_NAME_BYTES} bytes, got {}",
            name.len()
        )
    } else if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        format!(
            "`{}` is not a model folder name",
            name.chars().take(64).collect::<String>()
        )
    } else {
        return Ok(());
    };
    Err(ApiError::bad_request("bad_model_name", reason))
}

/// The sealed model file of `name` in `dir`: `DIR/NAME/model.onnx` with every link
/// resolved, which must be a regular file inside the canonical `dir` (links that stay
/// inside are followed; one that leads out is refused). Errors name the model, never
/// a server path.
pub fn resolve(dir: &Path, name: &str) -> Result<PathBuf, ApiError> {
    check_name(name)?;
    let root = dir
        .canonicalize()
        .map_err(|e| ApiError::internal(format!("cannot read --model-dir: {e}")))?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!("no model folder `{name}` with a model.onnx in --model-dir"),
        )
    };
    let file = model_file(dir, name)
        .canonicalize()
        .map_err(|_| missing())?;
    if !file.starts_with(&root) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "outside_model_dir",
            format!(
                "the model file of `{name}` leads outside --model-dir (links must stay inside it)"
            ),
        ));
    }
    let regular = std::fs::metadata(&file).is_ok_and(|m| m.file_type().is_file());
    if !regular {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_file",
            format!("the model.onnx of `{name}` is not a regular file"),
        ));
    }
    Ok(file)
}

/// Loads a model and waits until every worker has warmed up (blocking), so it can
/// take requests the moment it is swapped in. A worker whose warm-up fails ends the
/// wait at once with its error; otherwise the wait is bounded by `limit`.
pub fn load_warm(
    name: &str,
    path: &Path,
    opts: &PoolOptions,
    metrics: Arc<Metrics>,
    limit: Duration,
) -> anyhow::Result<Served> {
    let served = Served::load(name, path, opts, metrics)?;
    let started = Instant::now();
    while !served.pool.ready() {
        if let Some(e) = served.pool.warm_up_error() {
            anyhow::bail!(
                "model `{name}` failed its warm-up: {}",
                scrub(&e, path, &served.info.path)
            );
        }
        if started.elapsed() > limit {
            anyhow::bail!(
                "model `{name}` did not warm up within {} s (see the log)",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(served)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_of_different_names_do_not_wait_for_each_other() {
        let reg = Registry::new(Vec::new());
        let a = reg.load_lock("a");
        let _held = a.try_lock().unwrap();
        let b = reg.load_lock("b");
        assert!(b.try_lock().is_ok(), "a load of `b` waits for `a`");
        assert!(
            reg.load_lock("a").try_lock().is_err(),
            "two loads of `a` at once"
        );
    }

    #[test]
    fn names_are_single_folder_names_of_at_most_255_bytes() {
        assert!(check_name(&"a".repeat(255)).is_ok());
        let e = check_name(&"a".repeat(256)).unwrap_err();
        assert!(e.detail.contains("at most 255 bytes"), "{e}");
        assert!(e.detail.len() < 100, "{e}");
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b"] {
            assert_eq!(
                check_name(bad).unwrap_err().code,
                "bad_model_name",
                "{bad:?}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_model_dir_is_sealed() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("models");
        let outside = tmp.path().join("outside");
        for d in [
            dir.join("real"),
            outside.clone(),
            dir.join("file-link"),
            dir.join("nested"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(dir.join("real/model.onnx"), b"x").unwrap();
        std::fs::write(outside.join("model.onnx"), b"x").unwrap();
        symlink(&outside, dir.join("evil")).unwrap();
        symlink(dir.join("real"), dir.join("inner")).unwrap();
        symlink(outside.join("model.onnx"), dir.join("file-link/model.onnx")).unwrap();
        std::fs::create_dir_all(dir.join("nested/model.onnx")).unwrap();
        let real = resolve(&dir, "real").unwrap();
        assert_eq!(real, dir.join("real/model.onnx").canonicalize().unwrap());
        assert_eq!(
            resolve(&dir, "inner").unwrap(),
            real,
            "links inside are followed"
        );
        for name in ["evil", "file-link"] {
            let e = resolve(&dir, name).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (403, "outside_model_dir"),
                "{name}"
            );
        }
        assert_eq!(resolve(&dir, "nested").unwrap_err().code, "not_a_file");
        assert_eq!(resolve(&dir, "none").unwrap_err().code, "unknown_model");
        let root = tmp.path().to_string_lossy().into_owned();
        for name in ["evil", "file-link", "nested", "none"] {
            let e = resolve(&dir, name).unwrap_err();
            assert!(!e.detail.contains(&root), "{e}");
        }
        let names: Vec<String> = scan(&dir).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["inner", "real"]);
    }

    #[test]
    fn errors_name_the_model_not_the_server_path() {
        let p = Path::new("/srv/secret/models/gta5/model.onnx");
        let shown = shown_path(p);
        assert_eq!(shown, "gta5/model.onnx");
        let text =
            "cannot load model /srv/secret/models/gta5/model.onnx: bad; see /srv/secret/models/x";
        assert_eq!(
            scrub(text, p, &shown),
            "cannot load model gta5/model.onnx: bad; see <model-dir>/x"
        );
    }
}
