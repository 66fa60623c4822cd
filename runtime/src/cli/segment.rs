//! `lse segment` (in progress).

/// Arguments of `lse segment`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("lse segment is not implemented yet")
}
