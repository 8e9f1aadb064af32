//! `medvlp synth --out DIR --n N --seed S [--size 224] [--difficulty easy|standard|hard]
//! [--image-only N] [--text-only N] [--bits 8|16] [--label-noise F] [--preview grid.png]`:
//! generate the synthetic paired chest X-ray benchmark (images, manifest, ground truth,
//! image-only and text-only parts, synth.json) and/or the finding x severity picture grid.

use std::path::PathBuf;

use anyhow::{bail, Result};
use medvlp_synth::{generate, write_preview_grid, Difficulty, SynthConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output directory (created if needed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Paired studies (image + report).
    #[arg(long, default_value_t = 6000)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels (64..=512).
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// easy | standard | hard
    #[arg(long, default_value = "standard")]
    pub difficulty: Difficulty,
    /// Studies with image and labels but no report.
    #[arg(long, default_value_t = 2000)]
    pub image_only: usize,
    /// Studies with report and labels but no image.
    #[arg(long, default_value_t = 2000)]
    pub text_only: usize,
    /// PNG bit depth: 8 or 16.
    #[arg(long, default_value_t = 8)]
    pub bits: u8,
    /// Fraction of reports that omit or hedge one rendered finding.
    #[arg(long, default_value_t = 0.0)]
    pub label_noise: f64,
    /// Also (or only) write the finding x severity picture grid to this PNG.
    #[arg(long)]
    pub preview: Option<PathBuf>,
    /// Tile size of the preview grid.
    #[arg(long, default_value_t = 200)]
    pub preview_tile: u32,
}

pub fn run(args: Args) -> Result<()> {
    if args.out.is_none() && args.preview.is_none() {
        bail!("nothing to do: give --out DIR (the dataset) and/or --preview GRID.png");
    }
    if let Some(p) = &args.preview {
        write_preview_grid(p, args.preview_tile)?;
        println!("wrote preview grid {}", p.display());
    }
    let Some(out) = &args.out else { return Ok(()) };
    if args.n == 0 {
        bail!("--n must be at least 1 (the paired part is the benchmark)");
    }
    let cfg = SynthConfig {
        n: args.n,
        image_only: args.image_only,
        text_only: args.text_only,
        seed: args.seed,
        size: args.size,
        difficulty: args.difficulty,
        bits: args.bits,
        label_noise: args.label_noise,
        ..SynthConfig::default()
    };
    cfg.validate()?;
    let s = generate(&cfg, out)?;
    tracing::info!(
        "{} paired + {} image-only + {} text-only studies ({} patients, {} images) in {:.1} s ({:.0} images/s, {} threads)",
        s.paired,
        s.image_only,
        s.text_only,
        s.patients,
        s.images,
        s.seconds,
        s.images_per_s,
        rayon::current_num_threads()
    );
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}
