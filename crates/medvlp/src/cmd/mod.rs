//! Subcommands. Each file holds a clap `Args` struct and a `run(args) -> anyhow::Result<()>`.

pub mod bench;
pub mod bench_data;
pub mod bench_reference;
pub mod compare;
pub mod embed;
pub mod eval;
pub mod init;
pub mod inspect;
pub mod label;
pub mod prepare;
pub mod preview;
pub mod prompts;
pub mod quickstart;
pub mod synth;
pub mod tokenizer;
pub mod train;
