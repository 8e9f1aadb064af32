//! Per-stage timing of decode + preprocess on one core:
//! `cargo run --release -p medvlp-data --example decode_breakdown [FILE]` (default: a generated
//! 2500x2000 JPEG).
use std::time::Instant;

use medvlp_data::image::preprocess::{preprocess_eval, resize_shorter, CropMode, PreprocessConfig};
use medvlp_data::image::{decode_bytes, decode_bytes_scaled};

fn main() -> anyhow::Result<()> {
    let cfg = PreprocessConfig { crop: CropMode::Center, ..Default::default() };
    let arg = std::env::args().nth(1);
    let bytes = match &arg {
        Some(p) => std::fs::read(p)?,
        None => medvlp_data::bench::synthetic_jpeg(2500, 2000, 90)?,
    };
    let path = std::path::PathBuf::from(arg.unwrap_or_else(|| "synthetic.jpg".into()));
    let n = 20;
    let t = Instant::now();
    let raster = matches!(
        image::guess_format(&bytes),
        Ok(image::ImageFormat::Png | image::ImageFormat::Jpeg)
    );
    for _ in 0..if raster { n } else { 0 } {
        std::hint::black_box(image::load_from_memory(&bytes)?);
    }
    let raw = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    let mut d = None;
    for _ in 0..n {
        d = Some(decode_bytes(&bytes, &path)?);
    }
    let dec = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(decode_bytes_scaled(&bytes, &path, Some(cfg.resize_shorter))?);
    }
    let scaled = t.elapsed().as_secs_f64() / n as f64;
    let sd = decode_bytes_scaled(&bytes, &path, Some(cfg.resize_shorter))?;
    println!(
        "{} bytes; scaled decode (shorter >= {}) to {}x{}: {:.1} ms",
        bytes.len(),
        cfg.resize_shorter,
        sd.image.width,
        sd.image.height,
        scaled * 1e3
    );
    let d = d.unwrap();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(resize_shorter(&d.image, cfg.resize_shorter));
    }
    let rs = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(preprocess_eval(&d.image, &cfg));
    }
    let pp = t.elapsed().as_secs_f64() / n as f64;
    println!(
        "{}x{}: image-crate decode {:.1} ms, our decode {:.1} ms, resize {:.1} ms, full preprocess {:.1} ms",
        d.image.width, d.image.height, raw * 1e3, dec * 1e3, rs * 1e3, pp * 1e3
    );
    Ok(())
}
