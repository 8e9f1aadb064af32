//! Subcommands. Each file holds a clap `Args` struct and a `run(args) -> anyhow::Result<()>`.
pub mod bench_data;
pub mod prepare;
pub mod preview;
