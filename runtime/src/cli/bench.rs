//! `lse bench`: offline throughput of a model through the runtime, on one generated
//! image (decode excluded; resize, inference, probability upsampling and arg-max
//! included), the reference the server benchmark compares against.

use std::path::PathBuf;
use std::time::Instant;

use crate::engine::{Engine, EngineOptions, Provider};
use crate::predict::{self, Upsample};

/// Arguments of `lse bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (default: models/default/model.onnx).
    pub model: Option<PathBuf>,
    /// An image to use (default: a generated gradient image of --size).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Size of the generated image.
    #[arg(long, default_value = "2048x1024", value_parser = parse_size)]
    pub size: [u32; 2],
    /// Images per inference call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed iterations (after 2 warm-up runs).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// ONNX Runtime intra-op threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = Upsample::Probabilities)]
    pub upsample: Upsample,
    #[arg(long, value_enum, default_value_t = Provider::Auto)]
    pub provider: Provider,
    /// Path of libonnxruntime.so.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> Result<[u32; 2], String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("`{s}` is not WxH"))?;
    let w: u32 = w.parse().map_err(|_| format!("bad width in `{s}`"))?;
    let h: u32 = h.parse().map_err(|_| format!("bad height in `{s}`"))?;
    if w == 0 || h == 0 || w > 16384 || h > 16384 {
        return Err(format!("size `{s}` out of range"));
    }
    Ok([w, h])
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let path = super::model_or_default(a.model)?;
    let mut engine = Engine::load(
        &path,
        &EngineOptions {
            provider: a.provider,
            ort_lib: a.ort_lib,
            threads: a.threads,
            ..Default::default()
        },
    )?;
    let img = match &a.image {
        Some(p) => crate::imageio::read_rgb(p)?,
        None => image::RgbImage::from_fn(a.size[0], a.size[1], |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        }),
    };
    let batch = vec![img; a.batch.max(1)];
    for _ in 0..2 {
        predict::segment_batch(&mut engine, &batch, a.upsample)?;
    }
    let mut times = Vec::with_capacity(a.iters);
    let start = Instant::now();
    for _ in 0..a.iters.max(1) {
        let t = Instant::now();
        predict::segment_batch(&mut engine, &batch, a.upsample)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let total = start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let images = (a.iters.max(1) * batch.len()) as f64;
    let report = serde_json::json!({
        "model": path,
        "provider": engine.provider(),
        "image_size": [batch[0].width(), batch[0].height()],
        "batch": batch.len(),
        "iterations": a.iters.max(1),
        "images_per_s": images / total,
        "median_ms_per_batch": times[times.len() / 2] * 1e3,
    });
    if a.json {
        super::print_json(&report)
    } else {
        println!(
            "{:.2} images/s ({} x {}x{}, batch {}, median {:.1} ms per batch, provider {})",
            images / total,
            a.iters.max(1),
            batch[0].width(),
            batch[0].height(),
            batch.len(),
            times[times.len() / 2] * 1e3,
            engine.provider()
        );
        Ok(())
    }
}
