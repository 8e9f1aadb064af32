//! `medvlp bench ...`: performance measurements printed as one JSON object on stdout.
//! Speed targets live here, never in timed tests.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use medvlp_model::{MedVlp, ModelConfig, ParamStore};
use medvlp_train::objectives::contrastive::itc_loss;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand)]
pub enum Sub {
    /// Forward + backward of the dual encoder (image + text, ITC loss) at a preset's real size.
    Forward {
        /// tiny, small or base (ViT-B/16 + BERT-base).
        #[arg(long, default_value = "base")]
        preset: String,
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Measured repetitions after one warm-up.
        #[arg(long, default_value_t = 3)]
        steps: usize,
    },
}

/// Peak resident set size of this process (VmHWM), in bytes; 0 where /proc is unavailable.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Sub::Forward { preset, batch, steps } => forward(&preset, batch, steps),
    }
}

fn forward(preset: &str, batch: usize, steps: usize) -> Result<()> {
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::preset(preset)?;
    // The dual encoder only: no fusion, decoder or MLM head in this measurement.
    cfg.fusion_config = None;
    cfg.decoder_config = None;
    cfg.mlm_head = false;
    let store = ParamStore::new(0, DType::F32, &dev);
    let model = MedVlp::new(&cfg, &store)?;
    let v = &cfg.vision_config;
    let t = &cfg.text_config;
    let px = Tensor::randn(0f32, 1f32, (batch, v.num_channels, v.image_size, v.image_size), &dev)?;
    let len = t.max_length;
    let ids: Vec<u32> = (0..batch * len).map(|i| (1000 + (i * 7919) % (t.vocab_size - 1000)) as u32).collect();
    let ids = Tensor::from_vec(ids, (batch, len), &dev)?;
    let mask = Tensor::ones((batch, len), DType::F32, &dev)?;
    let (mut fwd, mut bwd) = (vec![], vec![]);
    for i in 0..steps + 1 {
        let t0 = Instant::now();
        let loss = itc_loss(&model.image_embeds(&px)?, &model.text_embeds(&ids, &mask)?, &model.logit_scale_value()?)?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        drop(grads);
        if i > 0 {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
        }
    }
    let out = serde_json::json!({
        "preset": preset,
        "batch": batch,
        "params": store.num_params(),
        "image_size": v.image_size,
        "text_length": len,
        "forward_s": median(fwd.clone()),
        "backward_s": median(bwd.clone()),
        "step_s": median(fwd.iter().zip(&bwd).map(|(a, b)| a + b).collect()),
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": rayon::current_num_threads(),
    });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
