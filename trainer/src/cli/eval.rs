//! `lse-train eval` (being written).

/// Arguments of `lse-train eval`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("lse-train eval is not implemented yet")
}
