//! The `medvlp` binary: one subcommand per file under `cmd/`.

use clap::{Parser, Subcommand};

mod cmd;
mod hub;
mod pipeline;

#[derive(Parser)]
#[command(
    name = "medvlp",
    version,
    about = "Medical vision-language pre-training on chest X-rays and reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's family, config, parameter counts per component and tensors.
    Inspect(cmd::inspect::Args),
    /// Write a medvlp model as an open_clip or transformers (VisionTextDualEncoder) directory.
    Export(cmd::export::Args),
    /// Embed texts or images with any model (medvlp, imported checkpoints, BERT for texts).
    Embed(cmd::embed::Args),
    /// Create a freshly initialised model directory from a preset.
    Init(cmd::init::Args),
    /// Train or inspect tokenizers.
    Tokenizer(cmd::tokenizer::Args),
    /// Performance measurements (JSON on stdout).
    Bench(cmd::bench::Args),
    /// Write what the model sees for one image as PNG and print its decoding facts.
    Preview(cmd::preview::Args),
    /// Build a dataset's JSONL manifest, summary, split and label-fraction lists.
    Prepare(cmd::prepare::Args),
    /// Label reports (CheXpert conventions) and list their entities with assertions.
    Label(cmd::label::Args),
    /// List the shipped prompt files or show what one expands to.
    Prompts(cmd::prompts::Args),
    /// Pre-train a recipe from a TOML config (with dotted-key overrides).
    Train(cmd::train::Args),
    /// Evaluate a model: zero-shot, linear probe, fine-tuning, retrieval.
    Eval(cmd::eval::Args),
    /// The main job on the embedded synthetic data: pre-train xlip and clip, evaluate, compare.
    Quickstart(cmd::quickstart::Args),
    /// Train every recipe (and the paper ablations) on the same data and budget; tabulate.
    Compare(cmd::compare::Args),
    /// Generate the synthetic paired chest X-ray benchmark (images, reports, labels) or its picture grid.
    Synth(cmd::synth::Args),
    /// Serve embeddings, zero-shot scores and report retrieval over HTTP, with a page to try them.
    Serve(cmd::serve::Args),
    /// Build, extend and query an embedding index of images and reports.
    Index(cmd::index::Args),
    /// Start N processes of a command on this node with torchrun's variables (data parallel).
    Launch(cmd::launch::Args),
}

fn main() -> anyhow::Result<()> {
    medvlp_model::runtime::configure();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,jpeg2k=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        medvlp_model::runtime::compute_on_main_thread();
    }
    match cli.command {
        Command::Inspect(mut a) => {
            a.dir = hub::resolve_model(&a.dir)?;
            cmd::inspect::run(a)
        }
        Command::Export(a) => cmd::export::run(a),
        Command::Embed(mut a) => {
            a.model = hub::resolve_model(&a.model)?;
            cmd::embed::run(a)
        }
        Command::Init(a) => cmd::init::run(a),
        Command::Tokenizer(a) => cmd::tokenizer::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Preview(a) => cmd::preview::run(a),
        Command::Prepare(a) => cmd::prepare::run(a),
        Command::Label(a) => cmd::label::run(a),
        Command::Prompts(a) => cmd::prompts::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Eval(mut a) => {
            let c = a.task.common_mut();
            c.model = hub::resolve_model(&c.model)?;
            cmd::eval::run(a)
        }
        Command::Quickstart(a) => cmd::quickstart::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Synth(a) => cmd::synth::run(a),
        Command::Serve(mut a) => {
            a.model = hub::resolve_model(&a.model)?;
            cmd::serve::run(a)
        }
        Command::Index(a) => cmd::index::run(a),
        Command::Launch(a) => cmd::launch::run(a),
    }
}
