//! Times one training iteration of `lse-train adapt` with the trainer's own code:
//! forward + backward of a source batch, forward + backward of a target batch (with
//! the focal term), one Adam step over the two parameter groups.
//!
//! `cargo run -p lse-trainer --release --example bench_train -- [--width 0.125]
//! [--size 256x128] [--batch 1] [--threads 2] [--runs 10] [--warmup 3] [--device cpu|cuda]
//! [--amp off|bf16|fp16]`
//!
//! `--amp`: the forward pass under autocast as `lse-train --set amp=...` runs it (fp16
//! with the trainer's loss scaling).
//!
//! Prints the median and a last line `RESULT rust_iter_ms=<median>` that
//! `scripts/bench-train.sh` reads.

use std::time::Instant;

use lse_trainer::amp::Amp;
use lse_trainer::checkpoint::CheckpointMeta;
use lse_trainer::data::Batch;
use lse_trainer::fcn8s::{Fcn8s, Fcn8sConfig, InitScheme};
use lse_trainer::optim::Adam;
use lse_trainer::train::{Model, forward_backward};
use tch::{Device, Kind, Tensor, nn};

fn main() -> anyhow::Result<()> {
    let mut width = 0.125;
    let (mut w, mut h) = (256i64, 128i64);
    let (mut batch, mut threads, mut runs, mut warmup) = (1i64, 2i32, 10usize, 3usize);
    let mut device = Device::Cpu;
    let mut amp = Amp::Off;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--width" => width = v.parse()?,
            "--size" => {
                let (a, b) = v
                    .split_once('x')
                    .ok_or_else(|| anyhow::anyhow!("--size WxH"))?;
                (w, h) = (a.parse()?, b.parse()?);
            }
            "--batch" => batch = v.parse()?,
            "--threads" => threads = v.parse()?,
            "--runs" => runs = v.parse()?,
            "--warmup" => warmup = v.parse()?,
            "--device" => {
                device = match v.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    _ => anyhow::bail!("--device cpu|cuda"),
                }
            }
            "--amp" => {
                amp = match v.as_str() {
                    "off" => Amp::Off,
                    "bf16" => Amp::Bf16,
                    "fp16" => Amp::Fp16,
                    _ => anyhow::bail!("--amp off|bf16|fp16"),
                }
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
        i += 2;
    }
    amp.check_device(device)?;
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let config = Fcn8sConfig { width, classes: 19 };
    let vs = nn::VarStore::new(device);
    let net = Fcn8s::new(&vs.root(), config, InitScheme::Scratch);
    let model = Model {
        vs,
        net,
        meta: CheckpointMeta::new(config, InitScheme::Scratch),
        device,
    };
    let (ws, bs) = model.param_groups();
    let mut adam = Adam::new(ws, bs, [0.9, 0.99], 1e-8);
    if amp.scales_loss() {
        adam.loss_scale = Some(65536.0);
    }
    let mk = || Batch {
        images: Tensor::randn([batch, 3, h, w], (Kind::Float, device)) * 64.0,
        labels: Tensor::randint(19, [batch, h, w], (Kind::Int64, device)),
    };
    let (src, tgt) = (mk(), mk());
    let mut times = Vec::new();
    let mut parts = [0f64; 3];
    for r in 0..warmup + runs {
        let t0 = Instant::now();
        adam.zero_grad();
        let ls = forward_backward(&model, &src, None, amp, adam.loss_scale);
        let t1 = Instant::now();
        let lt = forward_backward(&model, &tgt, Some(Some((0.1, 3.0))), amp, adam.loss_scale);
        let t2 = Instant::now();
        adam.step([1e-4, 2e-4]);
        if r >= warmup {
            parts[0] += (t1 - t0).as_secs_f64() * 1e3 / runs as f64;
            parts[1] += (t2 - t1).as_secs_f64() * 1e3 / runs as f64;
            parts[2] += t2.elapsed().as_secs_f64() * 1e3 / runs as f64;
        }
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        assert!(ls.is_finite() && lt.is_finite());
        if r >= warmup {
            times.push(ms);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    println!(
        "lse-train iteration: width {width}, {w}x{h}, batch {batch}, {threads} threads, {device:?}, amp {amp:?}: median {med:.1} ms over {runs} runs"
    );
    println!(
        "  mean: source fwd+bwd {:.1} ms, target fwd+bwd {:.1} ms, Adam step {:.1} ms",
        parts[0], parts[1], parts[2]
    );
    println!("RESULT rust_iter_ms={med:.3}");
    Ok(())
}
