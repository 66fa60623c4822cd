//! The server's settings: one typed struct (the `lse-serve` binary fills it from
//! its command line).

use std::path::PathBuf;

use lse_runtime::engine::{Device, Provider};

/// Settings of the server (`lse-serve`'s command line fills them; its `--help`
/// says what each one does and its default).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    /// `--model`: the ONNX model to serve (else the default model).
    pub model: Option<PathBuf>,
    /// `--model-dir`: serve every model folder of this folder, by folder name.
    pub model_dir: Option<PathBuf>,
    /// `--addr`: address to listen on.
    pub addr: String,
    /// `--grpc-addr`: address of the Open Inference Protocol's gRPC service.
    pub grpc_addr: Option<String>,
    /// `--provider`: execution provider.
    pub provider: Provider,
    /// `--ort-lib`: the ONNX Runtime library.
    pub ort_lib: Option<PathBuf>,
    /// `--workers`: inference workers, each owning one ONNX Runtime session.
    pub workers: u32,
    /// `--devices`: CUDA device ids to spread the workers over.
    pub devices: Option<Vec<i32>>,
    /// `--workers-per-device`: workers on each GPU of --devices.
    pub workers_per_device: Option<u32>,
    /// `--threads`: intra-op threads of each worker's session.
    pub threads: usize,
    /// `--max-batch`: largest batch of images one worker runs at once.
    pub max_batch: u32,
    /// `--batch-wait-ms`: how long a worker waits to fill a batch.
    pub batch_wait_ms: u64,
    /// `--queue`: images that may be in the pipeline at once.
    pub queue: u32,
    /// `--timeout-ms`: time limit of one request in milliseconds.
    pub timeout_ms: u64,
    /// `--max-body-mb`: largest request body in MiB.
    pub max_body_mb: f64,
    /// `--header-timeout-ms`: longest time to send a request header.
    pub header_timeout_ms: u64,
    /// `--idle-timeout-ms`: longest time a connection may sit idle, in milliseconds.
    pub idle_timeout_ms: u64,
    /// `--max-connections`: connections open at once on each listener.
    pub max_connections: u32,
    /// `--max-streams`: requests one HTTP/2 connection (HTTP or gRPC) may have in
    /// progress at once.
    pub max_streams: u32,
    /// `--max-pixels`: largest image, in pixels (width x height).
    pub max_pixels: u64,
    /// `--max-request-pixels`: decoded pixels of all images of one request.
    pub max_request_pixels: u64,
    /// `--max-answer-mb`: largest answer of one `/v2` or gRPC inference, in MiB.
    pub max_answer_mb: f64,
    /// `--admin-token-file`: the file holding the admin routes' bearer token (none:
    /// admin routes answer 403).
    pub admin_token_file: Option<PathBuf>,
}

impl Config {
    /// The answer limit in bytes.
    pub fn max_answer_bytes(&self) -> u64 {
        (self.max_answer_mb.max(0.0) * 1024.0 * 1024.0) as u64
    }

    /// The body limit in bytes.
    pub fn max_body_bytes(&self) -> usize {
        (self.max_body_mb.max(0.0) * 1024.0 * 1024.0) as usize
    }

    /// Intra-op threads for each worker's session.
    pub fn threads_per_worker(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / self.worker_devices().len().max(1)).max(1)
    }

    /// The device of each worker: `--workers-per-device` workers on each GPU of
    /// `--devices` in turn, else `--workers` workers where `--provider` puts them.
    pub fn worker_devices(&self) -> Vec<Device> {
        match &self.devices {
            Some(ids) => {
                let k = self.workers_per_device.unwrap_or(1) as usize;
                ids.iter()
                    .flat_map(|&id| std::iter::repeat_n(Device::Cuda(id), k))
                    .collect()
            }
            None => vec![Device::Auto; self.workers as usize],
        }
    }

    /// Checks what the command line's own checks do not: value ranges across
    /// settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.max_body_mb.is_finite() && self.max_body_mb > 0.0) {
            anyhow::bail!(
                "--max-body-mb must be a positive number, got {}",
                self.max_body_mb
            );
        }
        if self.max_pixels == 0 {
            anyhow::bail!("--max-pixels must be positive");
        }
        if self.max_request_pixels == 0 {
            anyhow::bail!("--max-request-pixels must be positive");
        }
        if !(self.max_answer_mb.is_finite() && self.max_answer_mb > 0.0) {
            anyhow::bail!(
                "--max-answer-mb must be a positive number, got {}",
                self.max_answer_mb
            );
        }
        if let Some(ids) = &self.devices {
            if ids.is_empty() {
                anyhow::bail!("--devices needs at least one GPU id, e.g. --devices 0,1");
            }
            if let Some(d) = ids
                .iter()
                .enumerate()
                .find_map(|(i, d)| ids[..i].contains(d).then_some(d))
            {
                anyhow::bail!(
                    "--devices lists GPU {d} twice (use --workers-per-device for more workers on one GPU)"
                );
            }
            if self.provider == Provider::Cpu {
                anyhow::bail!(
                    "--devices runs the workers on GPUs; it conflicts with --provider cpu"
                );
            }
        }
        Ok(())
    }

    /// The model to serve: `--model`, or the default model.
    pub fn model_path(&self) -> anyhow::Result<PathBuf> {
        match &self.model {
            Some(p) if p.is_file() => Ok(p.clone()),
            Some(p) => anyhow::bail!("model file {} does not exist", p.display()),
            None => find_default_model(),
        }
    }
}

/// Where the default model lives, relative to a project root.
pub const DEFAULT_MODEL: &str = "models/default/model.onnx";

/// The project's default model as the runtime finds it ([`lse_runtime::engine::default_model`]:
/// above the executable, then above the current folder, then in the source tree).
pub fn find_default_model() -> anyhow::Result<PathBuf> {
    lse_runtime::engine::default_model().ok_or_else(|| {
        anyhow::anyhow!(
            "no --model given and no default model {DEFAULT_MODEL} found (looked above the \
             executable, above the current folder and in the source tree); pass --model PATH (an \
             ONNX file exported by `lse-train export`) or create the default model with scripts/demo.sh"
        )
    })
}
