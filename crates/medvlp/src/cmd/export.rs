//! `medvlp export --model DIR --format open_clip|hf --out DIR`: a medvlp ViT + BERT model as an
//! open_clip model directory or a transformers `VisionTextDualEncoderModel` directory, with its
//! tokenizer and preprocessing (see `medvlp_model::interop::export`). Refuses, naming the detail,
//! what the target cannot compute.

use anyhow::{bail, Result};
use medvlp_model::interop::export::{export, ExportFormat};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A medvlp model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// open_clip or hf (transformers VisionTextDualEncoderModel).
    #[arg(long)]
    pub format: String,
    /// Output folder (new or empty).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let format = ExportFormat::parse(&args.format)?;
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!("{} is not empty: export into a new or empty folder", args.out.display());
    }
    let notes = export(&args.model, format, &args.out)?;
    println!("exported {} -> {}", args.model.display(), args.out.display());
    for n in notes {
        println!("note: {n}");
    }
    match format {
        ExportFormat::OpenClip => println!(
            "load: open_clip.create_model_and_transforms(\"local-dir:{}\") (the text tower's BERT config is in text/, named by an absolute path in open_clip_config.json)",
            args.out.display()
        ),
        ExportFormat::Hf => println!(
            "load: transformers.VisionTextDualEncoderModel.from_pretrained(\"{}\")",
            args.out.display()
        ),
    }
    Ok(())
}
