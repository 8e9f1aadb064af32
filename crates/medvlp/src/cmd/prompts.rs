//! `medvlp prompts list|show`: the versioned prompt files (zero-shot class prompts and
//! disease-kind prompts for unpaired images) and what they expand to.

use anyhow::Result;
use medvlp_data::text::prompts::BUILTIN_PROMPTS;
use medvlp_data::text::PromptFile;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand)]
pub enum Sub {
    /// The shipped prompt files.
    List,
    /// Print what a prompt file (a path or a shipped name, e.g. chexpert5) expands to.
    Show { file: String },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Sub::List => {
            for (name, _) in BUILTIN_PROMPTS {
                let (kind, version, desc) = match PromptFile::builtin(name)? {
                    PromptFile::ZeroShot(z) => ("zero-shot", z.version, z.description),
                    PromptFile::Disease(d) => ("disease", d.version, d.description),
                };
                println!("{name:<18} {kind:<9} v{version:<6} {desc}");
            }
        }
        Sub::Show { file } => print!("{}", PromptFile::resolve(&file)?.describe()?),
    }
    Ok(())
}
