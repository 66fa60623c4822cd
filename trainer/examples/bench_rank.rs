//! Times the forward passes of an LSE round's ranking (eval mode, softmax) with the
//! trainer's own model: one image at a time, as the round ran it first, and in
//! batches of `--batch` images, as [`Model::probs_batch`] runs it now; prints both and
//! their ratio, measured in the same run, and the largest probability difference
//! between the two.
//!
//! `cargo run -p lse-trainer --release --example bench_rank -- [--width 0.125]
//! [--size 256x128] [--batch 8] [--images 64] [--threads 2] [--runs 5]`
//!
//! The two paths alternate `--runs` times; the medians are printed.

use std::time::Instant;

use lse_trainer::checkpoint::CheckpointMeta;
use lse_trainer::fcn8s::{Fcn8s, Fcn8sConfig, InitScheme};
use lse_trainer::train::Model;
use tch::{Device, Kind, Tensor, nn};

struct Args {
    width: f64,
    w: i64,
    h: i64,
    batch: i64,
    images: i64,
    threads: i32,
    runs: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        width: 0.125,
        w: 256,
        h: 128,
        batch: 8,
        images: 64,
        threads: 2,
        runs: 5,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let [flag, v] = pair else {
            anyhow::bail!("{} needs a value", pair[0]);
        };
        match flag.as_str() {
            "--width" => a.width = v.parse()?,
            "--size" => {
                let (w, h) = v
                    .split_once('x')
                    .ok_or_else(|| anyhow::anyhow!("--size WxH, got {v}"))?;
                (a.w, a.h) = (w.parse()?, h.parse()?);
            }
            "--batch" => a.batch = v.parse()?,
            "--images" => a.images = v.parse()?,
            "--threads" => a.threads = v.parse()?,
            "--runs" => a.runs = v.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let a = parse()?;
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let config = Fcn8sConfig {
        width: a.width,
        classes: 19,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Fcn8s::new(&vs.root(), config, InitScheme::Scratch);
    let model = Model {
        vs,
        net,
        meta: CheckpointMeta::new(config, InitScheme::Scratch),
        device: Device::Cpu,
    };
    let images = Tensor::rand([a.images, 3, a.h, a.w], (Kind::Float, Device::Cpu));
    // Warm-up of both paths (allocator, oneDNN primitives).
    let _ = model.probs(&images.get(0));
    let _ = model.probs_batch(&images.narrow(0, 0, a.batch.min(a.images)));

    // Alternating runs, medians: a busy machine slows both paths alike.
    let (mut single_ms, mut batched_ms) = (Vec::new(), Vec::new());
    let (mut single, mut batched) = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        let t = Instant::now();
        single = (0..a.images).map(|i| model.probs(&images.get(i))).collect();
        single_ms.push(t.elapsed().as_secs_f64() * 1e3 / a.images as f64);
        let t = Instant::now();
        batched = images
            .split(a.batch, 0)
            .iter()
            .map(|b| model.probs_batch(b))
            .collect();
        batched_ms.push(t.elapsed().as_secs_f64() * 1e3 / a.images as f64);
    }
    let (single_ms, batched_ms) = (median(single_ms), median(batched_ms));
    let diff = (Tensor::stack(&single, 0) - Tensor::cat(&batched, 0))
        .abs()
        .max()
        .double_value(&[]);
    println!(
        "width {} at {}x{}, {} images, {} threads: one at a time {single_ms:.1} ms/image, \
         batches of {} {batched_ms:.1} ms/image, ratio {:.2}x, largest probability difference {diff:.2e}",
        a.width,
        a.w,
        a.h,
        a.images,
        a.threads,
        a.batch,
        single_ms / batched_ms
    );
    Ok(())
}
