//! `medvlp preview IMAGE --out OUT.png [--config FILE]`: write what the model sees (decode,
//! window, eval preprocessing) as an 8-bit PNG and print the decoding facts.

use std::path::PathBuf;

use anyhow::{Context, Result};
use medvlp_data::image::preprocess::{preprocess_gray, PreprocessConfig};
use medvlp_data::image::decode_file;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// PNG, JPEG or DICOM file.
    pub image: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// A model config.json (its `preprocess` block is used), or a TOML/JSON file holding the
    /// preprocess block itself. Default: the built-in PreprocessConfig.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Load a PreprocessConfig from a config file: `preprocess` key if present, else the whole file.
pub fn load_preprocess_config(path: &std::path::Path) -> Result<PreprocessConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
        let t: toml::Value = toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
        serde_json::to_value(t)?
    } else {
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?
    };
    let block = value.get("preprocess").cloned().unwrap_or(value);
    let cfg: PreprocessConfig =
        serde_json::from_value(block).with_context(|| format!("{}: invalid preprocess config", path.display()))?;
    cfg.validate().with_context(|| format!("{}", path.display()))?;
    Ok(cfg)
}

pub fn run(args: Args) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => load_preprocess_config(p)?,
        None => PreprocessConfig::default(),
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
