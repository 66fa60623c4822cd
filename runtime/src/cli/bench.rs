//! `lse bench` (in progress).

/// Arguments of `lse bench`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("lse bench is not implemented yet")
}
