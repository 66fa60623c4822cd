//! `lse-train train` (being written).

/// Arguments of `lse-train train`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("lse-train train is not implemented yet")
}
