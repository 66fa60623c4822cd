//! `lse segment`: labelIds (and colour) PNGs for single images.

use std::path::PathBuf;

use anyhow::Context;

use lse_runtime::choice::Choice;
use lse_runtime::engine::{Engine, EngineOptions, Provider};
use lse_runtime::imageio;
use lse_runtime::palette;
use lse_runtime::predict::{self, Upsample};

/// Arguments of `lse segment`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model (.onnx).
    pub model: PathBuf,
    /// Images (PNG or JPEG, any size).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder: <stem>_labelIds.png per image (and <stem>_color.png with --color).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a colour PNG.
    #[arg(long)]
    pub color: bool,
    /// Write train ids (0..18, 255) instead of Cityscapes label ids.
    #[arg(long)]
    pub train_ids: bool,
    /// How predictions return to the image's size.
    #[arg(long, value_parser = lse_cli::choice(Upsample::ALL, Upsample::help), default_value_t = Upsample::Probabilities)]
    pub upsample: Upsample,
    /// Execution provider.
    #[arg(long, value_parser = lse_cli::choice(Provider::ALL, Provider::help), default_value_t = Provider::Auto)]
    pub provider: Provider,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, the project's .venv, the system).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    #[command(flatten)]
    pub accel: super::accel::DeviceArgs,
    /// Print the written paths as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut opts = EngineOptions {
        provider: a.provider,
        ort_lib: a.ort_lib.clone(),
        max_batch: 1,
        fetch: a.upsample.fetch(),
        ..Default::default()
    };
    a.accel.apply(&mut opts);
    let mut engine = Engine::load(&a.model, &opts)?;
    let lut = engine.meta().label_lut();
    let colors = engine.meta().color_lut();
    let mut written = Vec::new();
    let mut failed = 0usize;
    for path in &a.images {
        let result = (|| -> anyhow::Result<Vec<PathBuf>> {
            let img = imageio::read_rgb(path)?;
            let ids = predict::segment_batch(&mut engine, std::slice::from_ref(&img), a.upsample)?
                .pop()
                .context("no prediction")?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let mut out = Vec::new();
            let mut label = ids.clone();
            if !a.train_ids {
                for p in label.iter_mut() {
                    *p = lut[*p as usize];
                }
            }
            let p = a.out.join(format!("{stem}_labelIds.png"));
            imageio::write_gray_png(&p, &label)?;
            out.push(p);
            if a.color {
                let img = palette::colorize_with(&ids, &colors);
                let p = a.out.join(format!("{stem}_color.png"));
                imageio::write_rgb_png(&p, &img)?;
                out.push(p);
            }
            Ok(out)
        })();
        match result {
            Ok(paths) => {
                for p in &paths {
                    if !a.json {
                        println!("{}", p.display());
                    }
                }
                written.push(serde_json::json!({"image": path, "outputs": paths}));
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e:#}", path.display());
            }
        }
    }
    if a.json {
        super::print_json(&serde_json::json!({
            "provider": engine.provider(),
            "results": written,
            "failed": failed,
        }))?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} image(s) failed", a.images.len());
    }
    Ok(())
}
