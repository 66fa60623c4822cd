//! The served models: each one a name, its worker pool and its metadata, held in a
//! registry that requests look models up in by name.
//!
//! A request takes an `Arc` of the model it uses for its whole life, so replacing a
//! model in the registry never disturbs requests in flight: they finish on the old
//! pool, whose workers exit once the last request holding it has been answered (the
//! pool's queue closes when the pool is dropped).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
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

/// What a served model is.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// `<folder name>-<first 16 hex digits of the file's FNV-1a hash>`.
    pub id: String,
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
    /// Warm-up then runs in the workers; [`Pool::ready`] tells when it is done.
    pub fn load(
        name: &str,
        path: &Path,
        opts: &PoolOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let (id, file_bytes) = crate::model_id(path)
            .map_err(|e| anyhow::anyhow!("cannot read model {}: {e}", path.display()))?;
        let (pool, meta, provider) = Pool::start(path, opts, metrics)
            .map_err(|e| anyhow::anyhow!("cannot load model {}: {e}", path.display()))?;
        Ok(Self {
            name: name.to_string(),
            info: ModelInfo {
                id,
                path: path.display().to_string(),
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

/// The models the server answers with, by name.
pub struct Registry {
    map: RwLock<BTreeMap<String, Arc<Served>>>,
    /// The name of the model requests without a name get.
    pub default: String,
    /// Held while a model loads, so two loads of one name cannot race.
    pub loading: tokio::sync::Mutex<()>,
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
            loading: tokio::sync::Mutex::new(()),
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

    /// Puts `model` in place of the one of the same name; returns the replaced one.
    pub fn replace(&self, model: Served) -> Option<Arc<Served>> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(model.name.clone(), Arc::new(model))
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

/// The model folders of `dir` (those holding a `model.onnx`), by name.
pub fn scan(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read --model-dir {}: {e}", dir.display()))?;
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let file = model_file(dir, &name);
            file.is_file().then_some((name, file))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// A model name as a `--model-dir` folder: no path separators, not `.` or `..`.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        return Err(ApiError::bad_request(
            "bad_model_name",
            format!(
                "`{}` is not a model folder name",
                name.chars().take(64).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Loads a model and waits until every worker has warmed up (blocking), so it can
/// take requests the moment it is swapped in.
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
        if started.elapsed() > limit {
            anyhow::bail!(
                "model {} did not warm up within {} s (see the log)",
                path.display(),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(served)
}
