//! `lse synth`: generate the built-in synthetic source and target domains.

use std::path::PathBuf;

use anyhow::Context;

use lse_runtime::synth::{self, DomainSettings, SynthSettings};

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
    #[arg(long, default_value = "512x256", value_parser = super::parse_size)]
    pub size: [u32; 2],
    /// Seed: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Domain settings replacing the built-in ones: a JSON file with a `source` and/or
    /// a `target` object, shaped as in a `synth.json` (whose other keys are ignored,
    /// so an earlier run's `synth.json` can be edited and passed back).
    #[arg(long)]
    pub domains: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The `--domains` file: either domain, or both.
#[derive(Debug, serde::Deserialize)]
struct DomainOverrides {
    source: Option<DomainSettings>,
    target: Option<DomainSettings>,
}

/// The settings of a run: the built-in domains, replaced by those of `--domains`.
fn settings(args: &Args) -> anyhow::Result<SynthSettings> {
    let mut s = SynthSettings {
        size: args.size,
        train: args.train,
        val: args.val,
        seed: args.seed,
        ..SynthSettings::default()
    };
    if let Some(path) = &args.domains {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --domains {}", path.display()))?;
        let o: DomainOverrides = serde_json::from_str(&text)
            .with_context(|| format!("--domains {}: not a domain settings file", path.display()))?;
        if o.source.is_none() && o.target.is_none() {
            anyhow::bail!(
                "--domains {}: has neither a `source` nor a `target` object",
                path.display()
            );
        }
        s.source = o.source.unwrap_or(s.source);
        s.target = o.target.unwrap_or(s.target);
    }
    Ok(s)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let settings = settings(&args)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(domains: Option<PathBuf>) -> Args {
        Args {
            out: PathBuf::from("unused"),
            train: 1,
            val: 1,
            size: [64, 32],
            seed: 3,
            domains,
            json: false,
        }
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("domains.json");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn domains_file_replaces_only_the_domains_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut target = DomainSettings::target();
        target.camera.focal = 0.5;
        target.appearance.texture = 0.25;
        // A whole synth.json works: its other keys are ignored.
        let mut file = serde_json::to_value(SynthSettings::default()).unwrap();
        file["target"] = serde_json::to_value(&target).unwrap();
        file.as_object_mut().unwrap().remove("source");
        let s = settings(&args(Some(write(&dir, &file.to_string())))).unwrap();
        assert_eq!(s.target, target);
        assert_eq!(s.source, DomainSettings::source());
        assert_eq!((s.size, s.train, s.val, s.seed), ([64, 32], 1, 1, 3));
        assert_eq!(
            settings(&args(None)).unwrap(),
            SynthSettings {
                size: [64, 32],
                train: 1,
                val: 1,
                seed: 3,
                ..SynthSettings::default()
            }
        );
    }

    #[test]
    fn bad_domains_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["{}", "{\"target\": {\"camera\": 1}}", "not json"] {
            let p = write(&dir, text);
            let e = format!("{:#}", settings(&args(Some(p.clone()))).unwrap_err());
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
        let missing = dir.path().join("missing.json");
        let e = format!("{:#}", settings(&args(Some(missing))).unwrap_err());
        assert!(e.contains("missing.json"), "{e}");
    }
}
