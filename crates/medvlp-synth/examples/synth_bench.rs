//! Phantom speed: images/s per core at a given size (render only, and render + PNG encode).
//!
//! `cargo run --release -p medvlp-synth --example synth_bench -- [SIZE] [N]`

use std::time::Instant;

use medvlp_synth::{plan, render_study, writer::encode_png, SynthConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let size: u32 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(224);
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let cfg = SynthConfig { n, image_only: 0, text_only: 0, size, ..SynthConfig::default() };
    let plans = plan(&cfg)?;
    // Warm-up.
    for p in plans.iter().take(20) {
        std::hint::black_box(render_study(&cfg, p));
    }
    let t = Instant::now();
    let mut acc = 0.0f32;
    for p in &plans {
        acc += render_study(&cfg, p)[0];
    }
    let render_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut bytes = 0usize;
    for p in &plans {
        bytes += encode_png(&render_study(&cfg, p), size, 8)?.len();
    }
    let full_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"size\": {size}, \"n\": {n}, \"threads\": 1, \"render_images_per_s\": {:.1}, \"render_png_images_per_s\": {:.1}, \"mean_png_bytes\": {}, \"check\": {acc:.3}}}",
        n as f64 / render_s,
        n as f64 / full_s,
        bytes / n
    );
    Ok(())
}
