//! Subcommands. Each file holds a clap `Args` struct and a `run(args) -> anyhow::Result<()>`.

pub mod bench;
pub mod bench_data;
pub mod bench_reference;
pub mod compare;
pub mod embed;
pub mod eval;
pub mod export;
pub mod gpu_info;
pub mod index;
pub mod init;
pub mod inspect;
pub mod label;
pub mod launch;
pub mod prepare;
pub mod preview;
pub mod prompts;
pub mod quickstart;
pub mod serve;
pub mod synth;
pub mod tokenizer;
pub mod train;

use std::path::Path;

/// An output path that names an input file would replace the input: refused.
pub fn refuse_overwriting_input(input: &Path, output: &Path, flag: &str) -> anyhow::Result<()> {
    let canon = |p: &Path| -> Option<std::path::PathBuf> {
        p.canonicalize().ok().or_else(|| {
            let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Some(parent.canonicalize().ok()?.join(p.file_name()?))
        })
    };
    if let (Some(i), Some(o)) = (canon(input), canon(output)) {
        if i == o {
            anyhow::bail!(
                "{flag} {} is the input file: choose another path (the input would be replaced)",
                output.display()
            );
        }
    }
    Ok(())
}
