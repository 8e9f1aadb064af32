//! `medvlp preview IMAGE --out OUT.png [--config FILE]`: write what the model sees (decode,
//! window, eval preprocessing) as an 8-bit PNG and print the decoding facts.

use std::path::PathBuf;

use anyhow::{Context, Result};
use medvlp_data::image::decode_file;
use medvlp_data::image::preprocess::{preprocess_gray, PreprocessConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// PNG, JPEG or DICOM file.
    pub image: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// A model config.json (its `preprocess` block is used), or a TOML/JSON file holding the
    /// preprocess block itself. Default: the built-in PreprocessConfig.
    #[arg(long, conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// A model (medvlp directory or any imported checkpoint family): its own preprocessing.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = match (&args.config, &args.model) {
        (Some(p), _) => PreprocessConfig::from_file(p)?,
        (None, Some(m)) => medvlp_model::encode::preprocess_of(&crate::hub::resolve_model(m)?)?,
        (None, None) => PreprocessConfig::default(),
    };
    let d = decode_file(&args.image)?;
    println!("{}: {}", args.image.display(), d.info);
    let g = preprocess_gray::<rand_chacha::ChaCha8Rng>(&d.image, &cfg, None);
    let img = image::GrayImage::from_raw(g.width, g.height, g.to_u8()).context("image buffer")?;
    img.save(&args.out).with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "wrote {} ({}x{}, resize shorter side to {}, center crop {}, hist_eq {}; {} channel(s) with mean {:?} std {:?} are applied after this)",
        args.out.display(),
        g.width,
        g.height,
        cfg.resize_shorter,
        cfg.image_size,
        cfg.hist_eq,
        cfg.channels,
        cfg.mean,
        cfg.std
    );
    Ok(())
}
