//! `lse-train train`: source-only training with cross-entropy (ignore 255), and the
//! arguments shared with `lse-train adapt`.

use std::path::{Path, PathBuf};

use lse_runtime::datasets::{DatasetKind, DatasetSpec, Role};

use lse_trainer::config::Config;
use lse_trainer::run::RunCommand;
use lse_trainer::train::{RunInputs, RunOptions, Trainer};

/// Settings and process options shared by `train` and `adapt`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The checkpoint to start from (written by `lse-train init` or a previous run).
    #[arg(long, required_unless_present = "resume")]
    pub init: Option<PathBuf>,
    #[arg(
        long,
        required_unless_present = "resume",
        help = format!("The labelled source: {}", Role::Source.specs())
    )]
    pub source: Option<DatasetSpec>,
    /// A list file selecting source images (one path per line, relative to the image folder).
    #[arg(long)]
    pub source_list: Option<PathBuf>,
    /// The run directory to create.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run in this directory (its settings are kept).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["init", "source", "config", "set"])]
    pub resume: Option<PathBuf>,
    /// A TOML file of settings (see `config.toml` of any run for every key).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. `--set lr_weights=1e-4 --set target_size=256x128`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Learning rate of the weights (the biases get twice this).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Source-only training iterations.
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Source (and target) images per iteration.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed of every random choice.
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(
        long,
        value_parser = super::parse_size,
        help = format!(
            "Size source images are resized to, WxH (default: the source kind's own, {})",
            source_sizes()
        )
    )]
    pub source_size: Option<[u32; 2]>,
    /// Size target images are resized to (and the model's input size), WxH.
    #[arg(long, value_parser = super::parse_size)]
    pub target_size: Option<[u32; 2]>,
    /// Resumable checkpoint every N iterations (0: only at round/run ends).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Mixed precision in float16 with loss scaling, CUDA only (the same as
    /// `--set amp="fp16"`; `--set amp="bf16"` also runs on the CPU).
    #[arg(long)]
    pub mixed_precision: bool,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Exit abruptly after N iterations, as if killed (tests of --resume).
    #[arg(long, hide = true)]
    pub stop_after_iterations: Option<u64>,
    /// Write every round's intermediate results (selection, thresholds, examples, the
    /// first step's inputs and parameters) to this folder (the one-round test).
    #[arg(long, hide = true, value_name = "DIR")]
    pub dump_rounds: Option<PathBuf>,
}

impl RunArgs {
    /// The configuration: defaults, then --config, then --set, then explicit flags.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        for s in &self.set {
            c.set(s)?;
        }
        if let Some(lr) = self.lr {
            c.lr_weights = lr;
            c.lr_biases = 2.0 * lr;
        }
        if let Some(v) = self.iterations {
            c.source_iterations = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if let Some(v) = self.source_size {
            c.source_size = Some(v);
        }
        if let Some(v) = self.target_size {
            c.target_size = v;
        }
        if let Some(v) = self.checkpoint_every {
            c.checkpoint_every = v;
        }
        if self.mixed_precision {
            c.amp = lse_trainer::amp::Amp::Fp16;
        }
        c.validate()?;
        Ok(c)
    }

    /// Opens the run (new or resumed) for `command`.
    pub fn open(
        &self,
        command: RunCommand,
        target: Option<DatasetSpec>,
    ) -> anyhow::Result<Trainer> {
        let device = self.device.resolve()?;
        let opts = RunOptions {
            stop_after: self.stop_after_iterations,
            dump_dir: self.dump_rounds.clone(),
            quiet: self.quiet,
            threads: self.device.threads,
        };
        match &self.resume {
            Some(dir) => Trainer::open(command, None, None, dir, device, opts),
            None => {
                let cfg = self.config()?;
                let inputs = RunInputs {
                    init: self.init.clone().expect("required by clap"),
                    source: self.source.clone().expect("required by clap"),
                    target,
                    source_list: self.source_list.clone(),
                };
                let out = self.out.clone().expect("required by clap");
                Trainer::open(command, Some(cfg), Some(inputs), &out, device, opts)
            }
        }
    }
}

/// Prints where a finished run's outputs are.
pub fn print_summary(t: &Trainer) {
    let root: &Path = &t.run.root;
    println!("run finished: {}", root.display());
    println!("  model      {}", t.run.model_path().display());
    println!("  record     {}", t.run.record_path().display());
    println!("  curves     {}", t.run.plot_path().display());
    if let Some(m) = t.record.evaluation.as_ref().and_then(|e| e.miou) {
        println!("  val mIoU   {:.2}", m * 100.0);
    }
}

/// Arguments of `lse-train train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long, help = format!(
        "Optional target ({}) whose val split evaluates the trained model",
        Role::Target.specs()
    ))]
    pub target: Option<DatasetSpec>,
}

/// The source kinds' own sizes, for the help: `GTA5 1280x720, SYNTHIA 1280x760`.
fn source_sizes() -> String {
    let sources = DatasetKind::ALL
        .iter()
        .filter(|k| k.layout().role == Role::Source);
    let sizes = sources.map(|k| {
        let [w, h] = k.layout().default_size;
        format!("{} {w}x{h}", k.name().to_uppercase())
    });
    sizes.collect::<Vec<_>>().join(", ")
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut t = a.run.open(RunCommand::Train, a.target.clone())?;
    t.train_source()?;
    print_summary(&t);
    Ok(())
}
