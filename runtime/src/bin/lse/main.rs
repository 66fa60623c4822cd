//! `lse`: label, evaluate and inspect LSE segmentation models (ONNX Runtime).

use clap::{Parser, Subcommand};
mod cli;

#[derive(Parser)]
#[command(
    name = "lse",
    version,
    about = "Segment, label, evaluate and inspect LSE domain-adapted segmentation models"
)]
struct Cli {
    #[command(flatten)]
    verbosity: lse_cli::Verbosity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's contract and metadata.
    Info(cli::info::Args),
    /// Segment single images: a labelIds PNG per image (and colour with --color).
    Segment(cli::segment::Args),
    /// Batch-label a Cityscapes-style folder tree (resumable, shardable).
    Label(cli::label::Args),
    /// Evaluate predictions against ground truth with the Cityscapes protocol.
    Eval(cli::eval::Args),
    /// Generate the built-in synthetic source (GTA5 layout) and target (Cityscapes layout) domains.
    Synth(cli::synth::Args),
    /// Measure inference throughput of a model.
    Bench(cli::bench::Args),
    /// Write a model into a Triton Inference Server model repository (ONNX Runtime backend).
    ExportTriton(cli::export_triton::Args),
}

fn main() {
    let cli = Cli::parse();
    cli.verbosity.init_tracing();
    let result = match cli.command {
        Command::Info(a) => cli::info::run(a),
        Command::Segment(a) => cli::segment::run(a),
        Command::Label(a) => cli::label::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Synth(a) => cli::synth::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::ExportTriton(a) => cli::export_triton::run(a),
    };
    lse_cli::exit_on_error(result);
}
