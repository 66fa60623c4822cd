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

use ndarray::{Array, ArrayView, ArrayView4, Axis, Dimension, Ix3, Ix4, IxDyn, RemoveAxis};
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::{DynValue, PrimitiveTensorElementType, TensorRef};

use crate::contract::{self, ContractError, ModelMeta, Precision};
use crate::trt;

/// Which execution provider runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// TensorRT, then CUDA, then CPU: the first that works.
    #[default]
    Auto,
    Tensorrt,
    Cuda,
    Cpu,
}

crate::choice!(Provider, "execution provider" {
    Auto => "auto", "TensorRT, then CUDA, then CPU: the first that works";
    Tensorrt => "tensorrt", "";
    Cuda => "cuda", "";
    Cpu => "cpu", "";
});

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

/// Where a model runs: `auto` (TensorRT, CUDA, then CPU, on device 0), `cpu`, `cuda`
/// (device 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown device `{s}` (expected auto, cpu, cuda or cuda:N)");
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Which outputs leave the session. The others stay where they were computed (on the
/// GPU they are never copied to the host) and ONNX Runtime may skip their nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fetch {
    #[default]
    Both,
    /// Only `scores` (post-processing that upsamples probabilities).
    Scores,
    /// Only `train_ids` (post-processing that upsamples labels).
    TrainIds,
}

impl Fetch {
    fn names(self) -> &'static [&'static str] {
        match self {
            Fetch::Both => &[contract::OUTPUT_TRAIN_IDS, contract::OUTPUT_SCORES],
            Fetch::Scores => &[contract::OUTPUT_SCORES],
            Fetch::TrainIds => &[contract::OUTPUT_TRAIN_IDS],
        }
    }
}

/// The largest batch a TensorRT engine is built for when [`EngineOptions::max_batch`]
/// is 0 (the server's default `--max-batch`).
pub const DEFAULT_MAX_BATCH: usize = 8;

/// How to open a model.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub provider: Provider,
    /// The ONNX Runtime library; otherwise found by [`find_ort_library`].
    pub ort_lib: Option<PathBuf>,
    /// Intra-op threads (0: ONNX Runtime's default, all cores).
    pub threads: usize,
    /// CUDA / TensorRT device (used when [`EngineOptions::device`] is `Auto`).
    pub device_id: i32,
    /// Where to run: `Cpu` forces the CPU provider, `Cuda(n)` a GPU provider on device
    /// `n` (TensorRT, then CUDA, without falling back to the CPU).
    pub device: Device,
    /// The precision TensorRT builds its engine in.
    pub precision: Precision,
    /// Root of the TensorRT engine and timing caches (default: [`trt::default_root`]).
    pub trt_cache: Option<PathBuf>,
    /// The largest batch one run gets (TensorRT's shape profile; 0: [`DEFAULT_MAX_BATCH`]).
    pub max_batch: usize,
    /// The outputs each run returns.
    pub fetch: Fetch,
}

impl EngineOptions {
    /// The providers to try in order, and the GPU device id.
    pub fn provider_order(&self) -> Result<(Vec<Provider>, i32), EngineError> {
        use Provider::*;
        let conflict = |p: Provider| EngineError::Provider {
            provider: p,
            reason: format!("--device {} conflicts with --provider {p}", self.device),
        };
        let order = match (self.device, self.provider) {
            (Device::Cpu, Auto | Cpu) => vec![Cpu],
            (Device::Cpu, p) => return Err(conflict(p)),
            (Device::Cuda(_), Auto) => vec![Tensorrt, Cuda],
            (Device::Cuda(_), Cpu) => return Err(conflict(Cpu)),
            (_, Auto) => vec![Tensorrt, Cuda, Cpu],
            (_, p) => vec![p],
        };
        let id = match self.device {
            Device::Cuda(n) => n,
            _ => self.device_id,
        };
        Ok((order, id))
    }

    /// Session configuration entries: intra-op threads sleep instead of spinning when
    /// idle, which leaves the cores to decoding and post-processing running beside
    /// inference (`scripts/bench-label.sh` measures the effect).
    pub fn session_entries(&self) -> Vec<(&'static str, String)> {
        vec![("session.intra_op.allow_spinning", "0".into())]
    }

    /// The largest batch a run may get.
    pub fn max_batch(&self) -> usize {
        if self.max_batch == 0 {
            DEFAULT_MAX_BATCH
        } else {
            self.max_batch
        }
    }

    /// The CUDA provider's options.
    pub fn cuda_options(device_id: i32) -> Vec<(&'static str, String)> {
        vec![("device_id", device_id.to_string())]
    }
}

/// One output tensor of a run, left in ONNX Runtime's memory (no copy) and read through
/// views. An output that was not fetched ([`Fetch`]) reads as `N x 0 x ...` (empty).
pub struct OutTensor<T: PrimitiveTensorElementType, D: Dimension> {
    value: Option<DynValue>,
    shape: Vec<usize>,
    _t: std::marker::PhantomData<(T, D)>,
}

impl<T: PrimitiveTensorElementType + Clone, D: RemoveAxis> OutTensor<T, D> {
    /// Checks the value's element type and rank once, so views cannot fail later.
    fn new(value: Option<DynValue>, batch: usize) -> Result<Self, EngineError> {
        let shape = match &value {
            Some(v) => {
                let view = v.try_extract_array::<T>().map_err(run_err)?;
                view.view().into_dimensionality::<D>().map_err(run_err)?;
                view.shape().to_vec()
            }
            None => {
                let mut s = vec![0; D::NDIM.unwrap_or(1)];
                s[0] = batch;
                s
            }
        };
        Ok(Self {
            value,
            shape,
            _t: std::marker::PhantomData,
        })
    }

    /// The whole tensor.
    pub fn view(&self) -> ArrayView<'_, T, D> {
        let dim = D::from_dimension(&IxDyn(&self.shape)).expect("rank checked in new");
        match &self.value {
            Some(v) => v
                .try_extract_array::<T>()
                .expect("element type checked in new")
                .into_dimensionality::<D>()
                .expect("rank checked in new"),
            None => ArrayView::from_shape(dim, &[]).expect("an empty shape"),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Whether the session returned this output.
    pub fn is_fetched(&self) -> bool {
        self.value.is_some()
    }

    pub fn index_axis(&self, axis: Axis, index: usize) -> ArrayView<'_, T, D::Smaller> {
        self.view().index_axis_move(axis, index)
    }

    /// A copy of one sub-view.
    pub fn index_axis_move(self, axis: Axis, index: usize) -> Array<T, D::Smaller> {
        self.view().index_axis(axis, index).to_owned()
    }

    pub fn iter(&self) -> ndarray::iter::Iter<'_, T, D> {
        self.view().into_iter()
    }

    /// A copy in Rust's memory.
    pub fn to_owned(&self) -> Array<T, D> {
        self.view().to_owned()
    }
}

impl<T: PrimitiveTensorElementType, D: Dimension> std::fmt::Debug for OutTensor<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutTensor")
            .field("shape", &self.shape)
            .field("fetched", &self.value.is_some())
            .finish()
    }
}

/// The output of one batch.
#[derive(Debug)]
pub struct Output {
    /// `N x H x W` arg-max train ids.
    pub train_ids: OutTensor<u8, Ix3>,
    /// `N x C x H x W` logits.
    pub scores: OutTensor<f32, Ix4>,
}

/// One loaded model: a session plus its contract.
pub struct Engine {
    session: Session,
    run_options: RunOptions<HasSelectedOutputs>,
    meta: ModelMeta,
    path: PathBuf,
    provider: Provider,
    max_batch: usize,
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

/// Applies `(key, value)` provider options (ONNX Runtime's own names).
fn with_options<E: ep::ArbitrarilyConfigurableExecutionProvider>(
    mut e: E,
    options: &[(&str, String)],
) -> E {
    for (k, v) in options {
        e = e.with_arbitrary_config(k, v);
    }
    e
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
        let (order, device_id) = opts.provider_order()?;
        let mut skipped = Vec::new();
        for &p in &order {
            match Self::open_with(path, p, opts, device_id) {
                Ok(session) => {
                    let engine = Self::finish(session, path, p, opts)?;
                    if skipped.is_empty() {
                        tracing::info!(provider = %p, model = %path.display(), "execution provider");
                    } else {
                        tracing::info!(provider = %p, model = %path.display(), skipped = %skipped.join("; "), "execution provider (others skipped)");
                    }
                    return Ok(engine);
                }
                Err(EngineError::Provider { provider, reason }) if order.len() > 1 => {
                    skipped.push(format!("{provider}: {reason}"));
                }
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Provider {
            provider: opts.provider,
            reason: format!("no GPU provider could run: {}", skipped.join("; ")),
        })
    }

    fn finish(
        session: Session,
        path: &Path,
        provider: Provider,
        opts: &EngineOptions,
    ) -> Result<Self, EngineError> {
        let load_err = |message: String| EngineError::Load {
            path: path.to_path_buf(),
            message,
        };
        let props = read_props(&session).map_err(load_err)?;
        let meta = ModelMeta::from_props(&props).map_err(|error| EngineError::Contract {
            path: path.to_path_buf(),
            error,
        })?;
        Self::check_io(&session, path)?;
        let selector = opts
            .fetch
            .names()
            .iter()
            .fold(OutputSelector::no_default(), |s, n| s.with(*n));
        let run_options = RunOptions::new()
            .map_err(|e| load_err(e.to_string()))?
            .with_outputs(selector);
        Ok(Self {
            session,
            run_options,
            meta,
            path: path.to_path_buf(),
            provider,
            max_batch: opts.max_batch(),
        })
    }

    fn open_with(
        path: &Path,
        p: Provider,
        opts: &EngineOptions,
        device_id: i32,
    ) -> Result<Session, EngineError> {
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
        for (k, v) in opts.session_entries() {
            b = b
                .with_config_entry(k, v)
                .map_err(|e| load_err(e.to_string()))?;
        }
        let (dispatch, trt_build) = Self::execution_provider(path, p, opts, device_id)?;
        if let Some(d) = dispatch {
            b = b
                .with_execution_providers([d])
                .map_err(|e| prov_err(e.to_string()))?;
        }
        let lock = trt_build.as_ref().map(TrtPlan::lock).transpose()?;
        let started = std::time::Instant::now();
        let session = b.commit_from_file(path).map_err(|e| {
            let msg = e.to_string();
            if p == Provider::Cpu {
                load_err(msg)
            } else {
                prov_err(msg)
            }
        })?;
        if let (Some(plan), Some((_, hit))) = (&trt_build, &lock) {
            plan.log(*hit, started.elapsed());
        }
        Ok(session)
    }

    /// The execution provider `p` with its options (none for the CPU), and for
    /// TensorRT the cache plan.
    fn execution_provider(
        path: &Path,
        p: Provider,
        opts: &EngineOptions,
        device_id: i32,
    ) -> Result<(Option<ep::ExecutionProviderDispatch>, Option<TrtPlan>), EngineError> {
        let missing = |what: &str| EngineError::Provider {
            provider: p,
            reason: format!("this ONNX Runtime build has no {what}"),
        };
        match p {
            Provider::Tensorrt => {
                if !ep::TensorRT::is_available().unwrap_or(false) {
                    return Err(missing(
                        "TensorRT provider (install onnxruntime-gpu and TensorRT 10)",
                    ));
                }
                let plan = TrtPlan::new(path, opts, device_id)?;
                let d = with_options(ep::TensorRT::default(), &plan.options);
                Ok((Some(d.build().error_on_failure()), Some(plan)))
            }
            Provider::Cuda => {
                if !ep::CUDA::is_available().unwrap_or(false) {
                    return Err(missing(
                        "CUDA provider (LSE_GPU=1 scripts/setup.sh installs onnxruntime-gpu)",
                    ));
                }
                let o = EngineOptions::cuda_options(device_id);
                let d = with_options(ep::CUDA::default(), &o);
                Ok((Some(d.build().error_on_failure()), None))
            }
            Provider::Cpu | Provider::Auto => Ok((None, None)),
        }
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

    /// Runs a batch: `N x 3 x H x W`, RGB 0..255 (any H, W). The outputs stay in ONNX
    /// Runtime's memory; only those of [`EngineOptions::fetch`] are returned.
    pub fn run(&mut self, batch: ArrayView4<'_, f32>) -> Result<Output, EngineError> {
        let n = batch.shape()[0];
        if self.provider == Provider::Tensorrt && n > self.max_batch {
            return Err(EngineError::Run(format!(
                "a batch of {n} images is larger than the {} the TensorRT engine was built for (max batch)",
                self.max_batch
            )));
        }
        let batch = batch.as_standard_layout();
        let input = TensorRef::from_array_view(batch.view()).map_err(run_err)?;
        let mut outputs = self
            .session
            .run_with_options(ort::inputs![contract::INPUT => input], &self.run_options)
            .map_err(run_err)?;
        let ids = outputs.remove(contract::OUTPUT_TRAIN_IDS);
        let scores = outputs.remove(contract::OUTPUT_SCORES);
        drop(outputs);
        Ok(Output {
            train_ids: OutTensor::new(ids, n)?,
            scores: OutTensor::new(scores, n)?,
        })
    }
}

/// What a TensorRT session is built with and where its caches are.
struct TrtPlan {
    paths: trt::CachePaths,
    options: Vec<(&'static str, String)>,
}

impl TrtPlan {
    fn new(path: &Path, opts: &EngineOptions, device_id: i32) -> Result<Self, EngineError> {
        let prov_err = |reason: String| EngineError::Provider {
            provider: Provider::Tensorrt,
            reason,
        };
        let file = trt::read_model(path).map_err(|e| prov_err(e.to_string()))?;
        let meta = ModelMeta::from_props(&file.props).map_err(|error| EngineError::Contract {
            path: path.to_path_buf(),
            error,
        })?;
        if opts.precision == Precision::Int8 && meta.precision != Precision::Int8 {
            return Err(prov_err(format!(
                "int8 engines are built from a calibrated QDQ model (lse-train export --precision int8 --calibrate DATASET); {} is {}",
                path.display(),
                meta.precision
            )));
        }
        let root = match &opts.trt_cache {
            Some(r) => r.clone(),
            None => trt::default_root().map_err(|e| prov_err(e.to_string()))?,
        };
        let key = trt::CacheKey {
            model_sha256: file.sha256.clone(),
            precision: opts.precision,
            target: (*trt::cached_target(device_id)).clone(),
            profile: trt::Profile::for_model(meta.train_size, opts.max_batch()),
        };
        let paths = trt::CachePaths::new(&root, &key);
        paths.create().map_err(|e| prov_err(e.to_string()))?;
        let options = trt::provider_options(&key, &paths, device_id);
        Ok(Self { paths, options })
    }

    /// Waits for any other build into the same folder, then says whether an engine is
    /// there to load (a hit) or will be built (a miss).
    fn lock(&self) -> Result<(trt::BuildLock, bool), EngineError> {
        let l =
            trt::BuildLock::acquire(&self.paths.engine_dir).map_err(|e| EngineError::Provider {
                provider: Provider::Tensorrt,
                reason: e.to_string(),
            })?;
        Ok((l, self.paths.has_engine()))
    }

    fn log(&self, hit: bool, took: std::time::Duration) {
        tracing::info!(
            cache = if hit { "hit" } else { "miss" },
            seconds = format!("{:.1}", took.as_secs_f64()),
            dir = %self.paths.engine_dir.display(),
            "TensorRT engine {}",
            if hit { "loaded from the cache" } else { "built" }
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(provider: Provider, device: &str) -> EngineOptions {
        EngineOptions {
            provider,
            device: device.parse().unwrap(),
            device_id: 5,
            ..Default::default()
        }
    }

    #[test]
    fn devices_parse_and_name_bad_values() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn device_and_provider_choose_the_order() {
        use Provider::*;
        let order = |p, d: &str| opts(p, d).provider_order().map_err(|e| e.to_string());
        assert_eq!(order(Auto, "auto"), Ok((vec![Tensorrt, Cuda, Cpu], 5)));
        assert_eq!(order(Auto, "cuda:2"), Ok((vec![Tensorrt, Cuda], 2)));
        assert_eq!(order(Cuda, "cuda:1"), Ok((vec![Cuda], 1)));
        assert_eq!(order(Auto, "cpu"), Ok((vec![Cpu], 5)));
        assert_eq!(order(Tensorrt, "auto"), Ok((vec![Tensorrt], 5)));
        let e = order(Cuda, "cpu").unwrap_err();
        assert!(
            e.contains("--device cpu conflicts with --provider cuda"),
            "{e}"
        );
        assert!(order(Cpu, "cuda:0").is_err());
    }

    #[test]
    fn session_and_provider_options() {
        let o = EngineOptions::default();
        assert_eq!(
            o.session_entries(),
            vec![("session.intra_op.allow_spinning", "0".to_string())]
        );
        assert_eq!(o.max_batch(), DEFAULT_MAX_BATCH);
        let o = EngineOptions { max_batch: 3, ..o };
        assert_eq!(o.max_batch(), 3);
        assert_eq!(
            EngineOptions::cuda_options(2),
            vec![("device_id", "2".to_string())]
        );
    }

    /// The committed default model, on the CPU, with each output selection.
    #[test]
    fn only_the_selected_outputs_are_returned() {
        let path = default_model().expect("models/default/model.onnx is committed");
        let input = ndarray::Array4::<f32>::from_elem((2, 3, 24, 40), 100.0);
        let mut both = None;
        for fetch in [Fetch::Both, Fetch::Scores, Fetch::TrainIds] {
            let o = EngineOptions {
                provider: Provider::Cpu,
                threads: 1,
                fetch,
                ..Default::default()
            };
            let mut e = Engine::load(&path, &o).unwrap();
            let out = e.run(input.view()).unwrap();
            assert_eq!(out.scores.is_fetched(), fetch != Fetch::TrainIds);
            assert_eq!(out.train_ids.is_fetched(), fetch != Fetch::Scores);
            match fetch {
                Fetch::Both => {
                    assert_eq!(out.scores.shape(), &[2, 19, 24, 40]);
                    assert_eq!(out.train_ids.shape(), &[2, 24, 40]);
                    both = Some((out.scores.to_owned(), out.train_ids.to_owned()));
                }
                Fetch::Scores => {
                    assert_eq!(out.train_ids.shape(), &[2, 0, 0]);
                    assert_eq!(out.train_ids.index_axis(Axis(0), 1).len(), 0);
                    assert_eq!(out.scores.to_owned(), both.as_ref().unwrap().0);
                }
                Fetch::TrainIds => {
                    assert_eq!(out.scores.shape(), &[2, 0, 0, 0]);
                    assert_eq!(out.train_ids.to_owned(), both.as_ref().unwrap().1);
                }
            }
        }
    }
}
