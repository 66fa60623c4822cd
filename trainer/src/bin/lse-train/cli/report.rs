//! `lse-train report`: (re)writes a run's self-contained HTML report.

use std::path::PathBuf;

use lse_trainer::run::RunDir;

/// Arguments of `lse-train report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run directory (written by `lse-train train` or `adapt`).
    pub run_dir: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let run = RunDir::open_existing(&a.run_dir)?;
    let path = lse_trainer::report::write(&run)?;
    println!("{}", path.display());
    Ok(())
}
