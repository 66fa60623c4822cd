//! The `lse-train` subcommands: one module per command with its clap `Args` and `run`.

pub mod adapt;
pub mod eval;
pub mod export;
pub mod init;
pub mod premise;
pub mod publish;
pub mod report;
pub mod train;

use std::path::PathBuf;

pub use lse_cli::parse_size;

/// Options shared by the commands that run the network.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// libtorch CPU threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
}

impl DeviceArgs {
    /// Resolves the device; asking for CUDA where there is none is an error.
    pub fn resolve(&self) -> anyhow::Result<tch::Device> {
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        let d = self.device.trim().to_ascii_lowercase();
        match d.as_str() {
            "auto" => Ok(tch::Device::cuda_if_available()),
            "cpu" => Ok(tch::Device::Cpu),
            _ => {
                let idx = match d.strip_prefix("cuda") {
                    Some("") => 0,
                    Some(rest) => rest
                        .strip_prefix(':')
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "unknown device `{}` (auto, cpu, cuda, cuda:N)",
                                self.device
                            )
                        })?,
                    None => {
                        anyhow::bail!("unknown device `{}` (auto, cpu, cuda, cuda:N)", self.device)
                    }
                };
                let n = tch::Cuda::device_count() as usize;
                if n == 0 {
                    anyhow::bail!(
                        "device `{}` asked for, but libtorch sees no CUDA device on this machine (use --device cpu)",
                        self.device
                    );
                }
                if idx >= n {
                    anyhow::bail!(
                        "device `{}` asked for, but only {n} CUDA device(s) exist",
                        self.device
                    );
                }
                Ok(tch::Device::Cuda(idx))
            }
        }
    }
}

/// `--ort-lib` for the commands that run ONNX Runtime.
#[derive(Debug, Clone, clap::Args)]
pub struct OrtArgs {
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, the project's .venv, the system).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}
