//! `lse eval` (in progress).

/// Arguments of `lse eval`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("lse eval is not implemented yet")
}
