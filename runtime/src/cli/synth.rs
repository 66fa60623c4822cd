//! `lse synth`: generate the built-in synthetic source and target domains.

use std::path::PathBuf;

use anyhow::Context;

use crate::synth::{self, SynthSettings};

/// Arguments of `lse synth`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder: `DIR/source` (GTA5 layout), `DIR/target` (Cityscapes layout,
    /// train and val), `DIR/synth.json` (the settings).
    #[arg(long)]
    pub out: PathBuf,
    /// Images of the source and of the target's train split.
    #[arg(long, default_value_t = 500)]
    pub train: usize,
    /// Images of the target's val split.
    #[arg(long, default_value_t = 100)]
    pub val: usize,
    /// Image size WIDTHxHEIGHT.
    #[arg(long, default_value = "512x256", value_parser = parse_size)]
    pub size: [u32; 2],
    /// Seed: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `WIDTHxHEIGHT`.
pub fn parse_size(s: &str) -> Result<[u32; 2], String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT, e.g. 512x256"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("`{s}`: `{v}` is not a positive integer"))
    };
    Ok([num(w)?, num(h)?])
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let settings = SynthSettings {
        size: args.size,
        train: args.train,
        val: args.val,
        seed: args.seed,
        ..SynthSettings::default()
    };
    let total = (2 * args.train + args.val) as u64;
    let bar = indicatif::ProgressBar::new(total);
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  {per_sec}  eta {eta}",
        )
        .expect("valid template"),
    );
    let summary = synth::write_domains(&settings, &args.out, &|| bar.inc(1))
        .with_context(|| format!("generating synthetic domains in {}", args.out.display()))?;
    bar.finish_and_clear();
    if args.json {
        crate::cli::print_json(&summary)
    } else {
        println!(
            "wrote {} source images (GTA5 layout) to {}",
            summary.source_images,
            args.out.join("source").display()
        );
        println!(
            "wrote {} train + {} val target images (Cityscapes layout) to {}",
            summary.target_train_images,
            summary.target_val_images,
            args.out.join("target").display()
        );
        println!(
            "{:.1} s ({:.0} images/s); settings in {}",
            summary.seconds,
            total as f64 / summary.seconds.max(1e-9),
            args.out.join("synth.json").display()
        );
        Ok(())
    }
}
