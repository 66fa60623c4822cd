//! `lse-train`: VGG16-FCN8s source training, LSE adaptation and ONNX export (libtorch).

use clap::{Parser, Subcommand};
mod cli;

#[derive(Parser)]
#[command(
    name = "lse-train",
    version,
    about = "Train VGG16-FCN8s on a synthetic source, adapt it to a real target with LSE, export to ONNX"
)]
struct Cli {
    #[command(flatten)]
    verbosity: lse_cli::Verbosity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a freshly initialised checkpoint (optionally importing ImageNet VGG16 or FCN8s weights).
    Init(cli::init::Args),
    /// Source-only training with cross-entropy.
    Train(cli::train::Args),
    /// LSE adaptation rounds on an unlabelled target.
    Adapt(cli::adapt::Args),
    /// Evaluate a checkpoint on a labelled target split (Cityscapes protocol).
    Eval(cli::eval::Args),
    /// Measure the paper's premise: entropy and accuracy on full target images vs their
    /// up-scaled windows, and the model's confident errors (never trains).
    Premise(cli::premise::Args),
    /// Export a checkpoint to ONNX (with an ONNX Runtime parity check).
    Export(cli::export::Args),
    /// Write a self-contained model folder from a finished run (model.onnx, checkpoint,
    /// records), naming its datasets by kind and folder, never by local paths.
    Publish(cli::publish::Args),
    /// Write a run's self-contained HTML report (curves, rounds, pseudo-labels, per-class IoU).
    Report(cli::report::Args),
}

fn main() {
    let cli = Cli::parse();
    cli.verbosity.init_tracing();
    let result = match cli.command {
        Command::Init(a) => cli::init::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Adapt(a) => cli::adapt::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Premise(a) => cli::premise::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Publish(a) => cli::publish::run(a),
        Command::Report(a) => cli::report::run(a),
    };
    lse_cli::exit_on_error(result);
}
