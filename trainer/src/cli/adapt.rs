//! `lse-train adapt` (being written).

/// Arguments of `lse-train adapt`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("lse-train adapt is not implemented yet")
}
