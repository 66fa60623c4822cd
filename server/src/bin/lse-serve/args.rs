//! The command line of `lse-serve`: clap fills [`Args`], which becomes the
//! library's [`Config`].

use std::path::PathBuf;

use lse_runtime::choice::Choice;
use lse_runtime::engine::Provider;
use lse_server::Config;

/// The command line of `lse-serve`. Defaults suit a laptop: loopback only, one worker
/// that uses every core, batches of up to 8 images.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "lse-serve",
    version,
    about = "Serve LSE segmentation models over HTTP (POST /v1/segment; see the README's HTTP API section)"
)]
pub struct Args {
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
    /// Images that may be in the pipeline at once (decoding, waiting for a worker, or
    /// being inferred; each image of a /v2 batch counts); more are refused with 503 and
    /// Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,
    /// Time limit of one request in milliseconds; past it the answer is 504.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Largest request body in MiB; larger bodies get 413.
    #[arg(long, default_value_t = 20.0)]
    pub max_body_mb: f64,
    /// Longest time a client may take to send a request's header, in milliseconds,
    /// from its first byte. Past it the connection is closed.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,
    /// Longest time a connection may sit idle, in milliseconds: no request in progress
    /// and nothing received since it was accepted or since its last answer. Past it the
    /// connection is closed (an HTTP/2 one gets GOAWAY); a request header that has begun
    /// is bounded by --header-timeout-ms instead.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// Connections open at once on each listener (HTTP, and the gRPC service's own);
    /// further clients wait in the kernel's backlog until one closes. The header and
    /// idle timeouts hold on both.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Requests one HTTP/2 connection (HTTP or gRPC) may have in progress at once (its
    /// concurrent streams); further streams wait for the client to retry.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// Largest image, in pixels (width x height), read from the image header before any
    /// pixel is decoded; larger images get 413.
    #[arg(long, default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// Decoded pixels of all images of one request together (width x height summed),
    /// read from the image headers (or the pixel tensor's shape) before any pixel is
    /// decoded; more get 413.
    #[arg(long, default_value_t = 40_000_000)]
    pub max_request_pixels: u64,
    /// Largest answer of one /v2 or gRPC inference, in MiB, estimated from the images'
    /// sizes and the requested outputs before anything is computed; larger get 413.
    #[arg(long, default_value_t = 256.0)]
    pub max_answer_mb: f64,
    /// A file holding the admin token (e.g. `openssl rand -hex 32 > FILE`, at least 16
    /// bytes): admin routes (POST /v1/models/NAME/load) need `Authorization: Bearer
    /// TOKEN`. Without it they answer 403.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub verbosity: lse_cli::Verbosity,
}

impl Args {
    /// The server's settings.
    pub fn into_config(self) -> Config {
        Config {
            model: self.model,
            model_dir: self.model_dir,
            addr: self.addr,
            grpc_addr: self.grpc_addr,
            provider: self.provider,
            ort_lib: self.ort_lib,
            workers: self.workers,
            devices: self.devices,
            workers_per_device: self.workers_per_device,
            threads: self.threads,
            max_batch: self.max_batch,
            batch_wait_ms: self.batch_wait_ms,
            queue: self.queue,
            timeout_ms: self.timeout_ms,
            max_body_mb: self.max_body_mb,
            header_timeout_ms: self.header_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            max_connections: self.max_connections,
            max_pixels: self.max_pixels,
            max_streams: self.max_streams,
            max_request_pixels: self.max_request_pixels,
            max_answer_mb: self.max_answer_mb,
            admin_token_file: self.admin_token_file,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use lse_runtime::engine::Device;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Args::try_parse_from(std::iter::once("lse-serve").chain(args.iter().copied()))
            .map(Args::into_config)
    }

    #[test]
    fn workers_spread_over_the_listed_gpus() {
        let c = parse(&["--devices", "0,2", "--workers-per-device", "2"]).unwrap();
        c.validate().unwrap();
        let want = [0, 0, 2, 2].map(Device::Cuda).to_vec();
        assert_eq!(c.worker_devices(), want);
        let opts = lse_server::pool::PoolOptions::of(&c);
        assert_eq!((opts.workers, opts.devices), (4, want));
        assert_eq!(opts.engine.max_batch, 8);
        let one = parse(&["--devices", "1"]).unwrap();
        assert_eq!(one.worker_devices(), vec![Device::Cuda(1)]);
    }

    #[test]
    fn without_devices_the_workers_go_where_the_provider_puts_them() {
        let c = parse(&["--workers", "3"]).unwrap();
        assert_eq!(c.worker_devices(), vec![Device::Auto; 3]);
        assert_eq!(lse_server::pool::PoolOptions::of(&c).workers, 3);
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
