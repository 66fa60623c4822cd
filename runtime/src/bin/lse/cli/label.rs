//! `lse label`: batch-label a Cityscapes-style folder tree (resumable, shardable).

use std::path::PathBuf;

use anyhow::Context;

use lse_runtime::choice::Choice;
use lse_runtime::engine::{Engine, EngineOptions, Fetch, Provider};
use lse_runtime::labelling::{self, LabelSettings, OutputIds, Shard};
use lse_runtime::predict::Upsample;

/// Arguments of `lse label`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (model.onnx exported by lse-train).
    pub model: PathBuf,
    /// Folder of images (PNG/JPEG, searched recursively), e.g. cityscapes/leftImg8bit/val.
    pub input_dir: PathBuf,
    /// Output folder: one PNG per image at the mirrored relative path, same file name.
    #[arg(long)]
    pub out: PathBuf,
    /// Ids written to the output PNGs.
    #[arg(long, value_parser = lse_cli::choice(OutputIds::ALL, OutputIds::help), default_value_t = OutputIds::Label)]
    pub ids: OutputIds,
    /// Also write colour maps (to OUT_color/, beside the output folder).
    #[arg(long)]
    pub color: bool,
    /// Also write overlays of the colours on the image (to OUT_overlay/).
    #[arg(long)]
    pub overlay: bool,
    /// Also write 8-bit maps of the prediction's confidence (largest class probability
    /// x 255, to OUT_confidence/) and normalised entropy (x 255, to OUT_entropy/).
    #[arg(long)]
    pub confidence: bool,
    /// Images per inference batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Process part K of N of the sorted tree (1-based), e.g. for a job array.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Relabel images whose output already exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Arg-max at the training size, then nearest-neighbour upsampling of the labels
    /// (faster; the default upsamples the class probabilities as the protocol does).
    #[arg(long)]
    pub fast: bool,
    /// Execution provider.
    #[arg(long, value_parser = lse_cli::choice(Provider::ALL, Provider::help), default_value_t = Provider::Auto)]
    pub provider: Provider,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, the project's .venv, the system).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Decoder threads (0: half the cores, 1 to 4).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    #[command(flatten)]
    pub accel: super::accel::DeviceArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let settings = settings(&args);
    // Plan first, so that an empty or missing input fails before the model loads.
    let (jobs, _) = labelling::plan(&settings)?;
    let mut engine = Engine::load(&args.model, &engine_options(&args, &settings))
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let bar = progress_bar(jobs.len() as u64, args.json);
    let summary = labelling::label_tree(&mut engine, &settings, &|| bar.inc(1))?;
    bar.finish_and_clear();
    if args.json {
        crate::cli::print_json(&summary)?;
    } else {
        print_summary(&args, &settings, &summary);
    }
    if !summary.failed.is_empty() {
        anyhow::bail!(
            "{} of {} images failed (listed above)",
            summary.failed.len(),
            summary.selected
        );
    }
    Ok(())
}

/// The labelling settings the flags describe.
fn settings(args: &Args) -> LabelSettings {
    LabelSettings {
        input: args.input_dir.clone(),
        out: args.out.clone(),
        ids: args.ids,
        color: args.color,
        overlay: args.overlay,
        confidence: args.confidence,
        batch: args.batch,
        shard: args.shard,
        overwrite: args.overwrite,
        upsample: if args.fast {
            Upsample::Labels
        } else {
            Upsample::Probabilities
        },
        workers: args.workers,
    }
}

/// The session's options: provider, threads, the largest batch, the device flags and
/// the outputs the labelling reads.
fn engine_options(args: &Args, settings: &LabelSettings) -> EngineOptions {
    let mut opts = EngineOptions {
        provider: args.provider,
        ort_lib: args.ort_lib.clone(),
        threads: args.threads,
        max_batch: args.batch,
        // The confidence maps read the scores whatever the upsampling.
        fetch: match settings.upsample.fetch() {
            Fetch::TrainIds if args.confidence => Fetch::Both,
            f => f,
        },
        ..EngineOptions::default()
    };
    args.accel.apply(&mut opts);
    opts
}

fn progress_bar(len: u64, hidden: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  {per_sec}  elapsed {elapsed}  eta {eta}",
        )
        .expect("valid template"),
    );
    bar
}

/// The human-readable summary: counts, speed, where the outputs are, the failures.
fn print_summary(args: &Args, settings: &LabelSettings, summary: &labelling::LabelSummary) {
    println!(
        "{} images in this {}: {} labelled, {} already done, {} failed; {:.1} s, {:.2} images/s ({})",
        summary.selected,
        if args.shard.is_some() {
            "shard"
        } else {
            "tree"
        },
        summary.labelled,
        summary.skipped,
        summary.failed.len(),
        summary.seconds,
        summary.images_per_second,
        summary.provider
    );
    println!("results in {}", args.out.display());
    if args.color {
        println!("colour maps in {}", settings.color_dir().display());
    }
    if args.overlay {
        println!("overlays in {}", settings.overlay_dir().display());
    }
    for f in &summary.failed {
        eprintln!("failed: {}: {}", f.image.display(), f.error);
    }
}
