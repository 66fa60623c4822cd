//! `lse-train adapt`: the LSE rounds on an unlabelled target (its train labels are
//! never read).

use lse_runtime::datasets::{DatasetSpec, Role};

/// Arguments of `lse-train adapt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run: super::train::RunArgs,
    #[arg(long, required_unless_present = "resume", help = format!(
        "The target: {} (images of the `target_split`, default train; the `val_split` \
         evaluates each round when it has labels)",
        Role::Target.specs()
    ))]
    pub target: Option<DatasetSpec>,
    /// Share p per round, comma-separated (one round each), e.g. 0.1,0.15,0.2.
    #[arg(long, value_delimiter = ',')]
    pub p_schedule: Option<Vec<f64>>,
    /// Examples (windows) per confident image, K.
    #[arg(long)]
    pub patches: Option<usize>,
    /// Window side as a share of the image's, comma-separated for several scales
    /// (window i takes scale i mod n; 1.0: plain self-training).
    #[arg(long, value_delimiter = ',')]
    pub window_scale: Option<Vec<f64>>,
    /// Where the windows fall: random (the reference's) or grid.
    #[arg(long)]
    pub window_placement: Option<String>,
    /// How the mask is carried into a window: exact-zero (the reference's), nearest
    /// or any-ignored.
    #[arg(long)]
    pub window_mask: Option<String>,
    /// Passes over the examples per round.
    #[arg(long)]
    pub epochs_per_round: Option<usize>,
    /// Focal term on or off (true/false).
    #[arg(long)]
    pub focal: Option<bool>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut r = a.run.clone();
    // The explicit adaptation flags become overrides (they need a new run).
    let mut extra = Vec::new();
    if let Some(p) = &a.p_schedule {
        extra.push(format!("p_schedule={}", toml_list(p)));
    }
    if let Some(v) = a.patches {
        extra.push(format!("patches={v}"));
    }
    if let Some(v) = &a.window_scale {
        extra.push(format!("window_scales={}", toml_list(v)));
    }
    if let Some(v) = &a.window_placement {
        extra.push(format!("window_placement={v}"));
    }
    if let Some(v) = &a.window_mask {
        extra.push(format!("window_mask={v}"));
    }
    if let Some(v) = a.epochs_per_round {
        extra.push(format!("epochs_per_round={v}"));
    }
    if let Some(v) = a.focal {
        extra.push(format!("focal={v}"));
    }
    if r.resume.is_some() && !extra.is_empty() {
        anyhow::bail!(
            "--resume keeps the run's settings; settings flags cannot be combined with it"
        );
    }
    r.set.extend(extra);
    let mut t = r.open(lse_trainer::run::RunCommand::Adapt, a.target.clone())?;
    t.adapt()?;
    super::train::print_summary(&t);
    Ok(())
}

/// `[a,b,...]`: a list as a TOML value for an override.
fn toml_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(f64::to_string).collect();
    format!("[{}]", items.join(","))
}
