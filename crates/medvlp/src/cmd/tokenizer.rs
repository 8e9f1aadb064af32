//! `medvlp tokenizer train`: a WordPiece vocabulary from a report corpus.

use anyhow::Result;
use medvlp_data::tokenizer::{train_wordpiece, WordPieceOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand)]
pub enum Sub {
    /// Train a BERT-style WordPiece tokenizer on text files (one report per line).
    Train {
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long, default_value_t = 8000)]
        vocab_size: usize,
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Keep case (default: lowercase, as uncased BERT models).
        #[arg(long)]
        cased: bool,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Sub::Train { input, vocab_size, min_frequency, cased, out } => {
            let files: Vec<&std::path::Path> = input.iter().map(|p| p.as_path()).collect();
            let opts = WordPieceOptions {
                vocab_size,
                min_frequency,
                lowercase: !cased,
                ..Default::default()
            };
            let t0 = std::time::Instant::now();
            let tok = train_wordpiece(&files, &opts, &out)?;
            eprintln!(
                "trained WordPiece: {} tokens in {:.1}s -> {}",
                tok.vocab_size(),
                t0.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
    }
}
