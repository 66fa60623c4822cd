//! `lse synth` (in progress).

/// Arguments of `lse synth`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("lse synth is not implemented yet")
}
