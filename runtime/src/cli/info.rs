//! `lse info` (in progress).

/// Arguments of `lse info`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("lse info is not implemented yet")
}
