//! `lse bench`: offline throughput of a model through the runtime, on one generated
//! image (decode excluded; resize, inference, probability upsampling and arg-max
//! included), the reference the server benchmark compares against.
//!
//! With `--matrix cpu,cuda,tensorrt --precision fp32,fp16 --batch 1,8` it measures every
//! combination, each in a fresh `lse bench` process (so peak memory and the first run,
//! TensorRT's engine build or cache load included, belong to that row alone), and
//! prints one table; a combination that cannot run here says why ([`matrix`]).

mod matrix;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use lse_runtime::choice::Choice;
use lse_runtime::contract::Precision;
use lse_runtime::engine::{Device, Engine, EngineOptions, Provider};
use lse_runtime::evaluate::{Ids, folder_confusion};
use lse_runtime::labels::ClassSubset;
use lse_runtime::predict::{self, Upsample};

/// Arguments of `lse bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The model (default: models/default/model.onnx).
    pub model: Option<PathBuf>,
    /// An image to use (default: a generated gradient image of --size).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Size of the generated image.
    #[arg(long, default_value = "2048x1024", value_parser = super::parse_size)]
    pub size: [u32; 2],
    /// Images per inference call (a list with --matrix: 1,8).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// The largest batch the TensorRT engine is built for (default: the batch; with
    /// --matrix the largest of --batch, so every batch of a precision shares one engine
    /// and the later rows load it from the cache).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Timed iterations (after 2 warm-up runs).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// ONNX Runtime intra-op threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, value_parser = lse_cli::choice(Upsample::ALL, Upsample::help), default_value_t = Upsample::Probabilities)]
    pub upsample: Upsample,
    #[arg(long, value_parser = lse_cli::choice(Provider::ALL, Provider::help), default_value_t = Provider::Auto)]
    pub provider: Provider,
    /// Measure every combination of these providers with --precision and --batch,
    /// one row each (cpu,cuda,tensorrt).
    #[arg(long, value_parser = lse_cli::choice(Provider::ALL, Provider::help), value_delimiter = ',')]
    pub matrix: Vec<Provider>,
    /// Precisions (a list with --matrix): TensorRT builds its engine in it; the CPU
    /// and CUDA providers run the --fp16-model file for fp16; every provider runs the
    /// --int8-model file for int8.
    #[arg(long, value_parser = lse_cli::choice(Precision::ALL, Precision::help), value_delimiter = ',', default_value = "fp32")]
    pub precision: Vec<Precision>,
    /// The float16 export of the same network (lse-train export --precision fp16),
    /// for the fp16 rows of the CPU and CUDA providers.
    #[arg(long)]
    pub fp16_model: Option<PathBuf>,
    /// The int8 (QDQ) export of the same network (lse-train export --precision int8
    /// --calibrate DATASET), for the int8 rows.
    #[arg(long)]
    pub int8_model: Option<PathBuf>,
    /// Images to evaluate on (a Cityscapes-style tree); with --gt, each row reports
    /// mIoU and its change against the fp32 row of the same provider and batch.
    #[arg(long, requires = "gt")]
    pub images: Option<PathBuf>,
    /// Ground truth for --images (`*_gtFine_labelIds.png`).
    #[arg(long, requires = "images")]
    pub gt: Option<PathBuf>,
    /// GPU device (cuda or cuda:N) for the CUDA and TensorRT rows.
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Root of the TensorRT engine and timing caches.
    #[arg(long, value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
    /// Path of libonnxruntime.so.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(b) = a.batch.iter().find(|&&b| b == 0) {
        anyhow::bail!("--batch {b}: a batch has at least one image");
    }
    if !a.matrix.is_empty() || a.batch.len() > 1 || a.precision.len() > 1 {
        return matrix::run(&a);
    }
    let report = single(&a)?;
    if a.json {
        return super::print_json(&report);
    }
    println!(
        "{:.2} images/s ({} x {}x{}, batch {}, median {:.1} ms per batch, provider {}, first run {:.2} s, peak RSS {:.0} MiB)",
        report.images_per_s,
        report.iterations,
        report.image_size[0],
        report.image_size[1],
        report.batch,
        report.median_ms_per_batch,
        report.provider,
        report.first_run_s,
        report.peak_host_mib.unwrap_or(0.0),
    );
    Ok(())
}

/// What `lse bench --json` prints for one combination (and `--matrix` reads back
/// from each child).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub batch: usize,
    /// GPU memory of the process at the end, MiB (`null` on the CPU or without
    /// `nvidia-smi`).
    pub device_mib: Option<f64>,
    /// Seconds from loading the model to the end of the first run.
    pub first_run_s: f64,
    /// `[width, height]` of the image.
    pub image_size: [u32; 2],
    pub images_per_s: f64,
    /// Timed iterations.
    pub iterations: usize,
    pub median_ms_per_batch: f64,
    /// mIoU in percent with `--images` and `--gt`.
    pub miou: Option<f64>,
    pub model: PathBuf,
    pub model_precision: Precision,
    pub ms_per_image: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_host_mib: Option<f64>,
    pub precision: Precision,
    pub provider: Provider,
}

/// One combination in this process: load, first run, timed runs, memory, accuracy.
fn single(a: &Args) -> anyhow::Result<BenchReport> {
    let path = super::model_or_default(a.model.clone())?;
    let batch_size = a.batch[0];
    let mut opts = EngineOptions {
        provider: a.provider,
        ort_lib: a.ort_lib.clone(),
        threads: a.threads,
        device: a.device,
        precision: a.precision[0],
        trt_cache: a.trt_cache.clone(),
        max_batch: a.max_batch.unwrap_or(batch_size).max(batch_size),
        fetch: a.upsample.fetch(),
        ..Default::default()
    };
    if a.provider == Provider::Cpu {
        opts.device = Device::Auto;
    }
    let img = match &a.image {
        Some(p) => lse_runtime::imageio::read_rgb(p)?,
        None => image::RgbImage::from_fn(a.size[0], a.size[1], |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        }),
    };
    let batch = vec![img; batch_size];
    let t0 = Instant::now();
    let mut engine = Engine::load(&path, &opts)?;
    predict::segment_batch(&mut engine, &batch, a.upsample)?;
    let first_run = t0.elapsed().as_secs_f64();
    predict::segment_batch(&mut engine, &batch, a.upsample)?;
    let iters = a.iters.max(1);
    let mut times = Vec::with_capacity(iters);
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        predict::segment_batch(&mut engine, &batch, a.upsample)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let total = start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let images = (iters * batch.len()) as f64;
    let miou = match (&a.images, &a.gt) {
        (Some(i), Some(g)) => Some(accuracy(&mut engine, i, g, batch_size, a.upsample)?),
        _ => None,
    };
    let gpu = engine.provider() != Provider::Cpu;
    Ok(BenchReport {
        batch: batch.len(),
        device_mib: if gpu {
            matrix::device_mib(std::process::id())
        } else {
            None
        },
        first_run_s: first_run,
        image_size: [batch[0].width(), batch[0].height()],
        images_per_s: images / total,
        iterations: iters,
        median_ms_per_batch: times[times.len() / 2] * 1e3,
        miou,
        model: path,
        model_precision: engine.meta().precision,
        ms_per_image: 1e3 * total / images,
        peak_host_mib: matrix::peak_rss_mib(),
        precision: opts.precision,
        provider: engine.provider(),
    })
}

/// mIoU (19 classes, percent) of `engine` on the images under `images` against `gt`,
/// through `lse eval`'s protocol (label-id PNGs written to a temporary folder).
fn accuracy(
    engine: &mut Engine,
    images: &Path,
    gt: &Path,
    batch: usize,
    mode: Upsample,
) -> anyhow::Result<f64> {
    let files = lse_runtime::labelling::list_images(images, &[])?;
    if files.is_empty() {
        anyhow::bail!("no PNG or JPEG images under {}", images.display());
    }
    let tmp = tempdir_in_target()?;
    let lut = engine.meta().label_lut();
    for chunk in files.chunks(batch) {
        let imgs = chunk
            .iter()
            .map(|p| lse_runtime::imageio::read_rgb(p))
            .collect::<Result<Vec<_>, _>>()?;
        let preds = predict::segment_batch(engine, &imgs, mode)?;
        for (p, mut ids) in chunk.iter().zip(preds) {
            ids.iter_mut().for_each(|v| *v = lut[*v as usize]);
            let name = p.file_name().context("an image without a file name")?;
            lse_runtime::imageio::write_gray_png(&tmp.join(name).with_extension("png"), &ids)?;
        }
    }
    let res = folder_confusion(&tmp, gt, Ids::Label);
    let _ = std::fs::remove_dir_all(&tmp);
    let (cm, _) = res?;
    cm.miou(ClassSubset::All19)
        .map(|m| m * 100.0)
        .context("no ground-truth pixel of the 19 classes")
}

/// A fresh folder under the system's temporary folder for one row's predictions.
fn tempdir_in_target() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("lse-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
