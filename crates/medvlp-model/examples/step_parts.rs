//! Forward + backward time of the `small` preset's encoders at quickstart batch shapes.
//!
//!     cargo run --release -p medvlp-model --example step_parts -- ROWS TOKENS IMAGES
use candle_core::{DType, Device, Tensor};
use medvlp_model::{MedVlp, ModelConfig, ParamStore};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (rows, len, imgs) = (a[0], a[1], a[2]);
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::preset("small")?;
    cfg.text_config.vocab_size = 8000;
    let store = ParamStore::new(0, DType::F32, &dev);
    let m = MedVlp::new(&cfg, &store)?;
    let ids = Tensor::from_vec(
        (0..rows * len).map(|i| (i % 7000) as u32 + 5).collect::<Vec<_>>(),
        (rows, len),
        &dev,
    )?;
    let mask = Tensor::ones((rows, len), DType::U32, &dev)?;
    let px = Tensor::randn(0f32, 1.0, (imgs, 1, 128, 128), &dev)?;
    for _ in 0..4 {
        let t = Instant::now();
        let y = m.text_features(&ids, &mask)?;
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = y.sqr()?.mean_all()?.backward()?;
        let b = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let y = m.image_features(&px)?;
        let fi = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = y.sqr()?.mean_all()?.backward()?;
        println!(
            "text fwd {f:.3} bwd {b:.3} | image fwd {fi:.3} bwd {:.3}",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
