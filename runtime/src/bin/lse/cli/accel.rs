//! The flags that say where a model runs, shared by the `lse` commands that run one.

use std::path::PathBuf;

use lse_runtime::choice::Choice;
use lse_runtime::contract::Precision;
use lse_runtime::engine::{Device, EngineOptions};

/// `--device`, `--precision`, `--trt-cache`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Where to run: auto (TensorRT, CUDA, then CPU), cpu, cuda or cuda:N (a GPU
    /// provider on device N, never the CPU).
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: Device,
    /// The precision TensorRT builds its engine in.
    #[arg(long, value_parser = lse_cli::choice(Precision::ALL, Precision::help), default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Root of the TensorRT engine and timing caches (default: $XDG_CACHE_HOME/lse/tensorrt
    /// or ~/.cache/lse/tensorrt); engines are keyed by model hash, precision, TensorRT
    /// version, GPU and shape profile.
    #[arg(long, value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
}

impl DeviceArgs {
    /// Sets the device, precision and cache of `o`.
    pub fn apply(&self, o: &mut EngineOptions) {
        o.device = self.device;
        o.precision = self.precision;
        o.trt_cache.clone_from(&self.trt_cache);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        d: DeviceArgs,
    }

    #[test]
    fn flags_reach_the_engine_options() {
        let t = T::try_parse_from([
            "t",
            "--device",
            "cuda:1",
            "--precision",
            "fp16",
            "--trt-cache",
            "/tmp/c",
        ])
        .unwrap();
        let mut o = EngineOptions::default();
        t.d.apply(&mut o);
        assert_eq!(o.device, Device::Cuda(1));
        assert_eq!(o.precision, Precision::Fp16);
        assert_eq!(o.trt_cache.as_deref(), Some(std::path::Path::new("/tmp/c")));
        let e = T::try_parse_from(["t", "--device", "gpu0"]).err().unwrap();
        assert!(e.to_string().contains("gpu0"), "{e}");
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.d.device, Device::Auto);
        assert_eq!(t.d.precision, Precision::Fp32);
    }
}
