//! The `medvlp` binary: one subcommand per file under `cmd/`.

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(name = "medvlp", version, about = "Medical vision-language pre-training on chest X-rays and reports")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write what the model sees for one image as PNG and print its decoding facts.
    Preview(cmd::preview::Args),
    /// Build a dataset's JSONL manifest, summary, split and label-fraction lists.
    Prepare(cmd::prepare::Args),
    /// Data-layer benchmark (to be hung under `medvlp bench` as `data`).
    #[command(name = "bench-data", hide = true)]
    BenchData(cmd::bench_data::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,jpeg2k=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Preview(a) => cmd::preview::run(a),
        Command::Prepare(a) => cmd::prepare::run(a),
        Command::BenchData(a) => cmd::bench_data::run(a),
    }
}
