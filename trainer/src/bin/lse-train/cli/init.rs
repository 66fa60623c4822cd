//! `lse-train init`: a freshly initialised checkpoint, optionally with imported weights.

use std::path::PathBuf;

use anyhow::Context;
use tch::nn;

use lse_runtime::choice::Choice;
use lse_trainer::checkpoint::{self, CheckpointMeta};
use lse_trainer::fcn8s::{Fcn8s, Fcn8sConfig, InitScheme};

/// Arguments of `lse-train init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Channel width multiplier (1.0 is the paper's network; 0.125 a small variant).
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    /// Number of classes.
    #[arg(long, default_value_t = 19)]
    pub classes: i64,
    /// Initialisation: reference (zeros, to be overwritten by ImageNet weights) or scratch (He).
    #[arg(long, value_parser = lse_cli::choice(InitScheme::ALL, InitScheme::help), default_value_t = InitScheme::Scratch)]
    pub init: InitScheme,
    /// Seed of the random initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// torchvision-layout ImageNet VGG16 weights (.pth/.pt/.safetensors) for the backbone.
    #[arg(long, conflicts_with = "weights")]
    pub backbone: Option<PathBuf>,
    /// A reference-layout FCN8s state dict (.pth/.pt/.safetensors).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Output checkpoint (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !(a.width > 0.0 && a.width <= 4.0) {
        anyhow::bail!("--width {} is out of range (0, 4]", a.width);
    }
    if !(1..=255).contains(&a.classes) {
        anyhow::bail!("--classes {} is out of range 1..255", a.classes);
    }
    tch::manual_seed(a.seed);
    let config = Fcn8sConfig {
        width: a.width,
        classes: a.classes,
    };
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let net = Fcn8s::new(&vs.root(), config, a.init);
    let mut meta = CheckpointMeta::new(config, a.init);
    if let Some(p) = &a.backbone {
        checkpoint::import_vgg16(&mut vs, &net.spec, p)
            .with_context(|| format!("importing VGG16 backbone {}", p.display()))?;
        meta.extra
            .insert("backbone".into(), p.display().to_string());
    }
    if let Some(p) = &a.weights {
        checkpoint::import_fcn8s(&mut vs, p)
            .with_context(|| format!("importing FCN8s weights {}", p.display()))?;
        meta.extra.insert("weights".into(), p.display().to_string());
    }
    checkpoint::save_network(&a.out, &vs, &meta)?;
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    println!(
        "wrote {} (vgg16-fcn8s, width {}, {} classes, {} trainable parameters)",
        a.out.display(),
        a.width,
        a.classes,
        params
    );
    Ok(())
}
