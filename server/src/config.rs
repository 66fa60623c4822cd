//! The server's settings: one typed struct that the command line fills.

use std::path::PathBuf;

use lse_runtime::choice::Choice;
use lse_runtime::engine::{Device, Provider};

/// Settings of `lse-serve`. Defaults suit a laptop: loopback only, one worker that
/// uses every core, batches of up to 8 images.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(
    name = "lse-serve",
    version,
    about = "Serve LSE segmentation models over HTTP (POST /v1/segment; see the README's HTTP API section)"
)]
pub struct Config {
    /// The model (an ONNX file exported by lse-train). Default: models/default/model.onnx,
    /// looked up above the executable, then above the current folder, then in the source tree.
    #[arg(long, conflicts_with = "model_dir")]
    pub model: Option<PathBuf>,
    /// Serve every model folder of DIR (`DIR/NAME/model.onnx`) under its folder name;
    /// requests without `model=` use `default` (else the first name). POST
    /// /v1/models/NAME/load and SIGHUP (re)load models from here.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Address to listen on. Port 0 picks a free port; the bound address is printed as
    /// `listening on ADDR` on standard output.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Address of the Open Inference Protocol's gRPC service
    /// (inference.GRPCInferenceService), e.g. 127.0.0.1:8001; none: no gRPC. Port 0 picks
    /// a free port, printed as `grpc listening on ADDR` on standard output.
    #[arg(long)]
    pub grpc_addr: Option<String>,
    /// Execution provider: auto tries TensorRT, then CUDA, then CPU.
    #[arg(long, value_parser = lse_cli::choice(Provider::ALL, Provider::help), default_value_t = Provider::Auto)]
    pub provider: Provider,
    /// The ONNX Runtime library (libonnxruntime.so.*); otherwise ORT_DYLIB_PATH, the
    /// project's .venv, then the system's library folders.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Inference workers, each owning one ONNX Runtime session (with --devices:
    /// --workers-per-device on each GPU instead).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64), conflicts_with = "devices")]
    pub workers: u32,
    /// GPUs to spread the workers over, e.g. `0,1` (CUDA device ids; each worker's
    /// session runs TensorRT or CUDA on its GPU, never the CPU).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(i32).range(0..))]
    pub devices: Option<Vec<i32>>,
    /// Workers on each GPU of --devices.
    #[arg(long, requires = "devices", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers_per_device: Option<u32>,
    /// Intra-op threads of each worker's session (0: the machine's cores divided by the workers).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Largest batch of images one worker runs at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_batch: u32,
    /// How long a worker waits for more images to fill a batch, in milliseconds (it only
    /// waits while other requests are being decoded).
    #[arg(long, default_value_t = 5)]
    pub batch_wait_ms: u64,
    /// Requests that may be in the pipeline at once (decoding, waiting for a worker, or
    /// being inferred); more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,
    /// Time limit of one request in milliseconds; past it the answer is 504.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Largest request body in MiB; larger bodies get 413.
    #[arg(long, default_value_t = 20.0)]
    pub max_body_mb: f64,
    /// Longest time a client may take to send a request's header, in milliseconds (the
    /// timer also runs while a kept-alive HTTP/1 connection waits for its next request).
    /// Past it the connection is closed.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,
    /// Longest time a connection may sit idle, in milliseconds: no request in progress
    /// and nothing received since it was accepted or since its last answer. Past it the
    /// connection is closed (an HTTP/2 one gets GOAWAY); a request header that has begun
    /// is bounded by --header-timeout-ms instead.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// HTTP connections open at once; further clients wait in the kernel's backlog
    /// until one closes (keeps file descriptors for models and the gRPC service).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Largest image, in pixels (width x height), read from the image header before any
    /// pixel is decoded; larger images get 413.
    #[arg(long, default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    #[serde(skip)]
    pub verbose: u8,
}

impl Config {
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

    /// Checks the values clap cannot check by itself.
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("lse-serve").chain(args.iter().copied()))
    }

    #[test]
    fn workers_spread_over_the_listed_gpus() {
        let c = parse(&["--devices", "0,2", "--workers-per-device", "2"]).unwrap();
        c.validate().unwrap();
        let want = [0, 0, 2, 2].map(Device::Cuda).to_vec();
        assert_eq!(c.worker_devices(), want);
        let opts = crate::pool_options(&c);
        assert_eq!((opts.workers, opts.devices), (4, want));
        assert_eq!(opts.engine.max_batch, 8);
        let one = parse(&["--devices", "1"]).unwrap();
        assert_eq!(one.worker_devices(), vec![Device::Cuda(1)]);
    }

    #[test]
    fn without_devices_the_workers_go_where_the_provider_puts_them() {
        let c = parse(&["--workers", "3"]).unwrap();
        assert_eq!(c.worker_devices(), vec![Device::Auto; 3]);
        assert_eq!(crate::pool_options(&c).workers, 3);
    }

    #[test]
    fn bad_device_lists_are_refused() {
        assert!(parse(&["--workers-per-device", "2"]).is_err()); // needs --devices
        assert!(parse(&["--devices", "0", "--workers", "2"]).is_err()); // conflicts
        assert!(parse(&["--devices", "-1"]).is_err());
        let twice = parse(&["--devices", "1,1"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(twice.to_string().contains("GPU 1 twice"), "{twice}");
        let cpu = parse(&["--devices", "0", "--provider", "cpu"]).unwrap();
        assert!(
            cpu.validate()
                .unwrap_err()
                .to_string()
                .contains("--provider cpu")
        );
    }
}
