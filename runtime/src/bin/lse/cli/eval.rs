//! `lse eval`: the Cityscapes evaluation protocol over two folder trees
//! ([`lse_runtime::evaluate`]), printed as a table or as an
//! [`Evaluation`](lse_runtime::evaluate::Evaluation).

use std::path::PathBuf;

use anyhow::Context;

use lse_runtime::choice::Choice;
use lse_runtime::evaluate::{Evaluation, Ids, folder_confusion};
use lse_runtime::labels::ClassSubset;

/// Arguments of `lse eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of predictions (searched recursively for `<city>_<seq>_<frame>*.png`).
    #[arg(long)]
    pub pred: PathBuf,
    /// Ground-truth folder, e.g. `cityscapes/gtFine/val`.
    #[arg(long)]
    pub gt: PathBuf,
    /// Class subset of the mIoU: 19 (GTA5 source), 16 or 13 (SYNTHIA source).
    #[arg(long, default_value_t = 19, value_parser = parse_subset_count)]
    pub classes: usize,
    /// Ids held by the prediction and ground-truth PNGs.
    #[arg(long, value_parser = lse_cli::choice(Ids::ALL, Ids::help), default_value_t = Ids::Label)]
    pub ids: Ids,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_subset_count(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number (expected 19, 16 or 13)"))?;
    ClassSubset::from_count(n)
        .map(|_| n)
        .ok_or_else(|| format!("{n} classes: expected 19, 16 or 13"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let subset = ClassSubset::from_count(args.classes)
        .with_context(|| format!("{} classes: expected 19, 16 or 13", args.classes))?;
    let (cm, images) = folder_confusion(&args.pred, &args.gt, args.ids)?;
    let report = cm.report(subset);
    if args.json {
        let evaluation = Evaluation::of_folders(&args.pred, &args.gt, args.ids, images, report);
        crate::cli::print_json(&evaluation)
    } else {
        println!(
            "{images} images, {} evaluated pixels ({} ids)\n",
            report.pixels, args.ids
        );
        print!("{}", report.table());
        Ok(())
    }
}
