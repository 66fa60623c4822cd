//! `lse label` (in progress).

/// Arguments of `lse label`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("lse label is not implemented yet")
}
