//! Subcommands. Each file holds a clap `Args` struct and a `run(args) -> anyhow::Result<()>`.
