//! ONNX Runtime sessions for LSE models.
//!
//! - The ONNX Runtime shared library is found at run time ([`find_ort_library`]):
//!   an explicit path (`--ort-lib`), `ORT_DYLIB_PATH`, the project's `.venv`
//!   (set up by `scripts/setup.sh`), then the system's library folders. When none
//!   exists the error says how to install it (ort itself would panic).
//! - Execution providers are tried in the order TensorRT, CUDA, CPU
//!   ([`Provider::Auto`]); a log line says which one runs and why the others were
//!   skipped. A forced provider that cannot run is an error.
//! - [`Engine`] owns one session; `run` needs `&mut self`. Share engines between
//!   threads through a pool or a worker, never by aliasing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::{Array3, Array4, ArrayView4};
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::contract::{self, ContractError, ModelMeta};

/// Which execution provider runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// TensorRT, then CUDA, then CPU: the first that works.
    #[default]
    Auto,
    Tensorrt,
    Cuda,
    Cpu,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Auto => "auto",
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        })
    }
}

/// Errors of loading and running models.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "ONNX Runtime library not found (looked for: {looked}). Run scripts/setup.sh to install it into .venv, \
         or `pip install onnxruntime==1.31.1` and pass --ort-lib /path/to/libonnxruntime.so.1.31.1 (or set ORT_DYLIB_PATH)"
    )]
    NoLibrary { looked: String },
    #[error("cannot load the ONNX Runtime library {path}: {message}")]
    BadLibrary { path: PathBuf, message: String },
    #[error("model file {path} does not exist")]
    NoModel { path: PathBuf },
    #[error("cannot load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("model {path}: {error}")]
    Contract { path: PathBuf, error: ContractError },
    #[error("execution provider {provider} is not usable: {reason}")]
    Provider { provider: Provider, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
}

fn run_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Run(e.to_string())
}

/// Where the ONNX Runtime library will be loaded from, in order of preference.
pub fn find_ort_library(explicit: Option<&Path>) -> Result<PathBuf, EngineError> {
    let mut looked = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        // An explicit choice is final: no silent fallback to another library.
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(EngineError::NoLibrary {
            looked: format!("--ort-lib {}", p.display()),
        });
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(format!("ORT_DYLIB_PATH={}", p.display()));
    }
    // The project's .venv: next to the executable's ancestors (target/<profile>/lse),
    // the current directory's ancestors, and the source tree this was built from.
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    for r in roots {
        candidates.push(r.join(".venv/libonnxruntime.so"));
    }
    for dir in [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ] {
        candidates.push(Path::new(dir).join("libonnxruntime.so"));
    }
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    looked.push("the project's .venv (scripts/setup.sh)".into());
    looked.push("/usr/local/lib, /usr/lib".into());
    Err(EngineError::NoLibrary {
        looked: looked.join(", "),
    })
}

static ORT_LIB: OnceLock<PathBuf> = OnceLock::new();
static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime once per process (later calls return the first library's path).
pub fn init_ort(explicit: Option<&Path>) -> Result<&'static Path, EngineError> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = ORT_LIB.get() {
        return Ok(p);
    }
    let path = find_ort_library(explicit)?;
    let bad = |message: String| EngineError::BadLibrary {
        path: path.clone(),
        message,
    };
    let builder = ort::init_from(&path).map_err(|e| bad(e.to_string()))?;
    let env = builder
        .with_name("lse")
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let _ = ENV.set(env);
    tracing::debug!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ORT_LIB.get_or_init(|| path))
}

/// How to open a model.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub provider: Provider,
    /// The ONNX Runtime library; otherwise found by [`find_ort_library`].
    pub ort_lib: Option<PathBuf>,
    /// Intra-op threads (0: ONNX Runtime's default, all cores).
    pub threads: usize,
    /// CUDA / TensorRT device.
    pub device_id: i32,
}

/// The output of one batch.
#[derive(Debug, Clone)]
pub struct Output {
    /// `N x H x W` arg-max train ids.
    pub train_ids: Array3<u8>,
    /// `N x C x H x W` logits.
    pub scores: Array4<f32>,
}

/// One loaded model: a session plus its contract.
pub struct Engine {
    session: Session,
    meta: ModelMeta,
    path: PathBuf,
    provider: Provider,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.path)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// Reads the model's `metadata_props`.
fn read_props(session: &Session) -> Result<BTreeMap<String, String>, String> {
    let md = session.metadata().map_err(|e| e.to_string())?;
    let keys = md.custom_keys().map_err(|e| e.to_string())?;
    Ok(keys
        .into_iter()
        .filter_map(|k| md.custom(&k).map(|v| (k, v)))
        .collect())
}

impl Engine {
    /// Opens `path` with the given options, choosing the execution provider.
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Self, EngineError> {
        if !path.is_file() {
            return Err(EngineError::NoModel {
                path: path.to_path_buf(),
            });
        }
        init_ort(opts.ort_lib.as_deref())?;
        let order: &[Provider] = match opts.provider {
            Provider::Auto => &[Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            Provider::Tensorrt => &[Provider::Tensorrt],
            Provider::Cuda => &[Provider::Cuda],
            Provider::Cpu => &[Provider::Cpu],
        };
        let mut skipped = Vec::new();
        for &p in order {
            match Self::open_with(path, p, opts) {
                Ok(session) => {
                    let props = read_props(&session).map_err(|message| EngineError::Load {
                        path: path.to_path_buf(),
                        message,
                    })?;
                    let meta =
                        ModelMeta::from_props(&props).map_err(|error| EngineError::Contract {
                            path: path.to_path_buf(),
                            error,
                        })?;
                    Self::check_io(&session, path)?;
                    if skipped.is_empty() {
                        tracing::info!(provider = %p, model = %path.display(), "execution provider");
                    } else {
                        tracing::info!(provider = %p, model = %path.display(), skipped = %skipped.join("; "), "execution provider (others skipped)");
                    }
                    return Ok(Self {
                        session,
                        meta,
                        path: path.to_path_buf(),
                        provider: p,
                    });
                }
                Err(EngineError::Provider { provider, reason }) if order.len() > 1 => {
                    skipped.push(format!("{provider}: {reason}"));
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the CPU provider ends every fallback chain")
    }

    fn open_with(path: &Path, p: Provider, opts: &EngineOptions) -> Result<Session, EngineError> {
        let load_err = |message: String| EngineError::Load {
            path: path.to_path_buf(),
            message,
        };
        let prov_err = |reason: String| EngineError::Provider {
            provider: p,
            reason,
        };
        let env = ENV.get().expect("init_ort ran");
        let mut b = Session::builder(env)
            .map_err(|e| load_err(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(e.to_string()))?;
        if opts.threads > 0 {
            b = b
                .with_intra_threads(opts.threads)
                .map_err(|e| load_err(e.to_string()))?;
        }
        let dispatch = match p {
            Provider::Tensorrt => {
                if !ep::TensorRT::is_available().unwrap_or(false) {
                    return Err(prov_err(
                        "this ONNX Runtime build has no TensorRT provider (install onnxruntime-gpu and TensorRT 10)"
                            .into(),
                    ));
                }
                Some(
                    ep::TensorRT::default()
                        .with_device_id(opts.device_id)
                        .build()
                        .error_on_failure(),
                )
            }
            Provider::Cuda => {
                if !ep::CUDA::is_available().unwrap_or(false) {
                    return Err(prov_err(
                        "this ONNX Runtime build has no CUDA provider (LSE_GPU=1 scripts/setup.sh installs onnxruntime-gpu)"
                            .into(),
                    ));
                }
                Some(
                    ep::CUDA::default()
                        .with_device_id(opts.device_id)
                        .build()
                        .error_on_failure(),
                )
            }
            Provider::Cpu | Provider::Auto => None,
        };
        if let Some(d) = dispatch {
            b = b
                .with_execution_providers([d])
                .map_err(|e| prov_err(e.to_string()))?;
        }
        b.commit_from_file(path).map_err(|e| {
            let msg = e.to_string();
            if p == Provider::Cpu {
                load_err(msg)
            } else {
                prov_err(msg)
            }
        })
    }

    fn check_io(session: &Session, path: &Path) -> Result<(), EngineError> {
        let has_in = session.inputs().iter().any(|i| i.name() == contract::INPUT);
        let outs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if !has_in
            || !outs.contains(&contract::OUTPUT_TRAIN_IDS)
            || !outs.contains(&contract::OUTPUT_SCORES)
        {
            return Err(EngineError::Load {
                path: path.to_path_buf(),
                message: format!(
                    "expected input `{}` and outputs `{}`, `{}`; found outputs {outs:?}",
                    contract::INPUT,
                    contract::OUTPUT_TRAIN_IDS,
                    contract::OUTPUT_SCORES
                ),
            });
        }
        Ok(())
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The provider that actually runs this session.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Runs a batch: `N x 3 x H x W`, RGB 0..255 (any H, W).
    pub fn run(&mut self, batch: ArrayView4<'_, f32>) -> Result<Output, EngineError> {
        let batch = batch.as_standard_layout();
        let input = TensorRef::from_array_view(batch.view()).map_err(run_err)?;
        let outputs = self
            .session
            .run(ort::inputs![contract::INPUT => input])
            .map_err(run_err)?;
        let ids = outputs[contract::OUTPUT_TRAIN_IDS]
            .try_extract_array::<u8>()
            .map_err(run_err)?
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(run_err)?
            .to_owned();
        let scores = outputs[contract::OUTPUT_SCORES]
            .try_extract_array::<f32>()
            .map_err(run_err)?
            .into_dimensionality::<ndarray::Ix4>()
            .map_err(run_err)?
            .to_owned();
        Ok(Output {
            train_ids: ids,
            scores,
        })
    }
}

/// The project's default model, `models/default/model.onnx`, looked up beside the
/// executable's ancestors, then the current directory's, then the source tree's.
pub fn default_model() -> Option<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    roots
        .into_iter()
        .map(|r| r.join("models/default/model.onnx"))
        .find(|p| p.is_file())
}
