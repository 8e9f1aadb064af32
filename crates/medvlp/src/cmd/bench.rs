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
        /// tiny, tiny-convnet, small (ConvNet), small-vit or base (ViT-B/16 + BERT-base).
        #[arg(long, default_value = "base")]
        preset: String,
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Measured repetitions after one warm-up.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// One pre-training step of a recipe (forward, backward, AdamW) on synthetic data.
    TrainStep {
        /// clip, mae-mlm, xlip, mcr or mpma (default mcr). Without it, `--preset reference` and
        /// `--preset base` run torch_reference.py's model at that `--size` instead of a recipe.
        #[arg(long)]
        recipe: Option<String>,
        /// Override the recipe's stream (single or dual).
        #[arg(long)]
        stream: Option<String>,
        /// Model size: a model preset, or `reference` / `base` (see --recipe).
        #[arg(long, default_value = "small")]
        preset: String,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// fp32, or bf16 mixed precision (fp32 weights, bf16 products), as train.precision.
        #[arg(long, default_value = "fp32")]
        precision: medvlp_model::nn::Precision,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        text_length: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Run single and dual stream in child processes, interleaved for `--rounds`, and print
        /// the ratios (each child's peak memory is its own).
        #[arg(long)]
        compare_streams: bool,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The device's peak in GFLOP/s for the `mfu` field. Default on the CPU: 320, the fp32
        /// peak of the 2-core AVX-512 reference machine (benchmarks.md: 2 FMA units x 16 lanes x
        /// 2 flops x ~2.5 GHz x 2); on a GPU: its dense bf16 tensor-core peak when the card is
        /// known (H100, H200, A100, L40S), else no `mfu`.
        #[arg(long)]
        peak_gflops: Option<f64>,
    },
    /// Decode + preprocess throughput of a large JPEG and a DICOM, per core and on all cores.
    Data(super::bench_data::Args),
    /// Image-encoder inference throughput (no autograd bookkeeping).
    Encode {
        /// `reference` (the PyTorch comparison model's ViT), tiny, tiny-convnet, small (ConvNet), small-vit or base.
        #[arg(long, default_value = "reference")]
        preset: String,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Also run with bf16 dense layers (AVX-512 BF16 CPUs) and report their speed and the
        /// smallest cosine between bf16 and fp32 outputs.
        #[arg(long)]
        bf16: bool,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

/// Peak resident set size of this process (VmHWM), in bytes; 0 where /proc is unavailable.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Sub::Forward { preset, batch, steps, device } => forward(&preset, batch, steps, &device),
        Sub::Encode { preset, steps, bf16, device } => encode(&preset, steps, bf16, &device),
        Sub::Data(a) => super::bench_data::run(a),
        Sub::TrainStep {
            recipe,
            stream,
            preset,
            device,
            precision,
            batch,
            text_length,
            steps,
            compare_streams,
            rounds,
            peak_gflops,
        } => {
            let dev = medvlp_model::runtime::device(&device)?;
            match (recipe, super::bench_reference::Size::named(&preset)) {
                (None, Some(size)) => {
                    reference_train_step(size, &dev, precision, steps, peak_gflops)
                }
                (recipe, _) => {
                    let recipe = recipe.unwrap_or_else(|| "mcr".into());
                    if compare_streams {
                        compare(&recipe, &preset, batch, text_length, steps, rounds)
                    } else {
                        let shape = (batch, text_length, steps);
                        train_step(&recipe, stream.as_deref(), &preset, &dev, precision, shape)
                    }
                }
            }
        }
    }
}

fn forward(preset: &str, batch: usize, steps: usize, device: &str) -> Result<()> {
    let dev = medvlp_model::runtime::device(device)?;
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
    let ids: Vec<u32> =
        (0..batch * len).map(|i| (5 + (i * 7919) % (t.vocab_size - 5)) as u32).collect();
    let ids = Tensor::from_vec(ids, (batch, len), &dev)?;
    let mask = Tensor::ones((batch, len), DType::F32, &dev)?;
    let (mut fwd, mut bwd) = (vec![], vec![]);
    for i in 0..steps + 1 {
        let t0 = Instant::now();
        let loss = itc_loss(
            &model.image_embeds(&px)?,
            &model.text_embeds(&ids, &mask)?,
            &model.logit_scale_value()?,
        )?;
        let _ = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        dev.synchronize()?;
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

fn train_step(
    recipe: &str,
    stream: Option<&str>,
    preset: &str,
    dev: &Device,
    precision: medvlp_model::nn::Precision,
    (batch, text_length, steps): (usize, usize, usize),
) -> Result<()> {
    use medvlp_train::optim::{AdamW, AdamWConfig};
    use medvlp_train::recipe::{batch::synthetic_batch, Stream};
    let m = medvlp_train::recipe::recipe(recipe)?;
    let mut cfg = m.defaults();
    if let Some(s) = stream {
        cfg.stream = match s {
            "single" => Stream::Single,
            "dual" => Stream::Dual,
            _ => anyhow::bail!("--stream is single or dual, not '{s}'"),
        };
    }
    let mut mc = ModelConfig::preset(preset)?;
    m.adapt_model(&cfg, &mut mc);
    let store = ParamStore::new(0, DType::F32, dev);
    let model = MedVlp::new(&mc, &store)?;
    let b = synthetic_batch(
        &mc,
        batch,
        0,
        0,
        text_length.min(mc.text_config.max_position_embeddings),
        0,
        dev,
    )?;
    let mut opt = AdamW::new(store.vars(), AdamWConfig::default())?;
    let (mut fwd, mut bwd, mut upd) = (vec![], vec![], vec![]);
    for i in 0..steps + 1 {
        let t0 = Instant::now();
        let out =
            medvlp_model::nn::with_precision(precision, || m.loss(&model, &b, &cfg, i as u64))?;
        let _ = out.loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = opt.collect_grads(&out.loss.backward()?)?;
        dev.synchronize()?;
        let t2 = Instant::now();
        opt.step(&grads, 1e-4, 1.0)?;
        dev.synchronize()?;
        let t3 = Instant::now();
        if i > 0 {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            upd.push((t3 - t2).as_secs_f64());
        }
    }
    let step: Vec<f64> = (0..fwd.len()).map(|i| fwd[i] + bwd[i] + upd[i]).collect();
    let out = serde_json::json!({
        "recipe": recipe,
        "stream": format!("{:?}", cfg.stream).to_lowercase(),
        "preset": preset,
        "device": format!("{dev:?}"),
        "precision": precision.to_string(),
        "kernel_path": kernel_path(precision, dev),
        "cpu_level": cpu_level(),
        "batch": batch,
        "params": store.num_params(),
        "median_step_s": median(step),
        "forward_s": median(fwd),
        "backward_s": median(bwd),
        "optimizer_s": median(upd),
        "peak_rss_bytes": peak_rss_bytes(),
        "encoder_passes_per_step": { "vision": model.passes.get().0 / (steps + 1), "text": model.passes.get().1 / (steps + 1) },
    });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn compare(
    recipe: &str,
    preset: &str,
    batch: usize,
    text_length: usize,
    steps: usize,
    rounds: usize,
) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut res: std::collections::BTreeMap<&str, Vec<serde_json::Value>> = Default::default();
    for _ in 0..rounds.max(1) {
        for stream in ["single", "dual"] {
            let out = std::process::Command::new(&exe)
                .args([
                    "bench",
                    "train-step",
                    "--recipe",
                    recipe,
                    "--stream",
                    stream,
                    "--preset",
                    preset,
                ])
                .args([
                    "--batch",
                    &batch.to_string(),
                    "--text-length",
                    &text_length.to_string(),
                    "--steps",
                    &steps.to_string(),
                ])
                .output()?;
            if !out.status.success() {
                anyhow::bail!("{stream} run failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            eprintln!("{stream}: {v}");
            res.entry(stream).or_default().push(v);
        }
    }
    let med = |s: &str, k: &str| {
        median(res[s].iter().map(|v| v[k].as_f64().unwrap_or(f64::NAN)).collect())
    };
    let out = serde_json::json!({
        "recipe": recipe, "preset": preset, "batch": batch, "rounds": rounds,
        "single": { "median_step_s": med("single", "median_step_s"), "peak_rss_bytes": med("single", "peak_rss_bytes") },
        "dual": { "median_step_s": med("dual", "median_step_s"), "peak_rss_bytes": med("dual", "peak_rss_bytes") },
        "time_saving": 1.0 - med("single", "median_step_s") / med("dual", "median_step_s"),
        "memory_saving": 1.0 - med("single", "peak_rss_bytes") / med("dual", "peak_rss_bytes"),
    });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The reference model's training step: forward, backward, AdamW (as torch_reference.py).
fn reference_train_step(
    size: super::bench_reference::Size,
    dev: &Device,
    precision: medvlp_model::nn::Precision,
    steps: usize,
    peak_gflops: Option<f64>,
) -> Result<()> {
    use super::bench_reference::{seeded_rng, Reference};
    use medvlp_train::optim::{AdamW, AdamWConfig};
    let m = Reference::new(size, true, dev)?;
    let params = m.store.num_params();
    let mut opt = AdamW::new(
        m.store.vars(),
        AdamWConfig { lr: 1e-4, weight_decay: 0.05, grad_clip: 0.0, ..Default::default() },
    )?;
    let gpu = super::gpu_info::GpuInfo::of(dev);
    let peak = peak_gflops.or_else(|| match &gpu {
        None => Some(320.0),
        Some(g) => g.bf16_peak_gflops(),
    });
    let mut rng = seeded_rng();
    let (mut fwd, mut bwd, mut upd, mut step) = (vec![], vec![], vec![], vec![]);
    let mut peak_mem = 0u64;
    for i in 0..steps + 2 {
        let bt = m.batch(&mut rng)?;
        dev.synchronize()?;
        let t0 = Instant::now();
        let loss = medvlp_model::nn::with_precision(precision, || m.loss(&bt))?;
        dev.synchronize()?;
        let t1 = Instant::now();
        let grads = opt.collect_grads(&loss.backward()?)?;
        dev.synchronize()?;
        let t2 = Instant::now();
        if let Some(g) = &gpu {
            peak_mem = peak_mem.max(g.memory_used());
        }
        opt.step(&grads, 1e-4, 1.0)?;
        let lv = loss.to_scalar::<f32>()?;
        dev.synchronize()?;
        let t3 = Instant::now();
        drop(grads);
        eprintln!("step {i}: loss {lv:.4} {:.3} s", (t3 - t0).as_secs_f64());
        if i >= 2 {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            upd.push((t3 - t2).as_secs_f64());
            step.push((t3 - t0).as_secs_f64());
        }
    }
    let med = median(step);
    let gflops = size.flops_per_step / 1e9 / med;
    let mut out = serde_json::json!({
        "preset": size.name,
        "device": gpu.as_ref().map(|g| g.name.clone()).unwrap_or_else(|| "cpu".into()),
        "precision": precision.to_string(),
        "kernel_path": kernel_path(precision, dev),
        "cpu_level": cpu_level(),
        "batch": size.batch,
        "params": params,
        "median_step_s": med,
        "forward_s": median(fwd),
        "backward_s": median(bwd),
        "optimizer_s": median(upd),
        "peak_rss_bytes": peak_rss_bytes(),
        "gflops_per_s": gflops,
        "mfu": peak.map(|p| gflops / p),
        "peak_gflops": peak,
    });
    if gpu.is_some() {
        // Device-wide (cuMemGetInfo): includes the CUDA context, as nvidia-smi shows it.
        out["peak_gpu_memory_bytes"] = peak_mem.into();
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The instruction-set level of medvlp's CPU kernels (`MEDVLP_CPU` caps it) and whether the
/// `gemm` crate runs its AVX-512 micro-kernels, e.g. `avx2 (gemm crate: avx2)`.
fn cpu_level() -> String {
    use medvlp_model::nn::fused::cpu;
    let gemm = match (cpu::gemm_crate_avx512(), cpu::detected()) {
        (true, _) => "avx512",
        (false, cpu::CpuLevel::Baseline) => "baseline",
        (false, _) => "avx2",
    };
    format!("{} (gemm crate: {gemm})", cpu::level().name())
}

/// Which GEMM a CPU step runs: the fp32 or the bf16 GEMM's path on this CPU.
fn kernel_path(precision: medvlp_model::nn::Precision, dev: &candle_core::Device) -> String {
    if !dev.is_cpu() {
        return format!("{dev:?}");
    }
    match precision {
        medvlp_model::nn::Precision::Fp32 => {
            format!("fp32-{}", medvlp_model::nn::fused::f32_path().name())
        }
        medvlp_model::nn::Precision::Bf16 => {
            format!("bf16-{}", medvlp_model::nn::fused::bf16_gemm::path().name())
        }
    }
}

/// `f` over the batch `x` split across the cores, as `embed` runs a model.
fn in_batch_ranges(
    x: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Sync,
) -> candle_core::Result<Tensor> {
    medvlp_model::encode::in_batch_ranges(x.dim(0)?, x.device(), |r| {
        f(&x.narrow(0, r.start, r.len())?)
    })
}

fn encode(preset: &str, steps: usize, bf16: bool, device: &str) -> Result<()> {
    use super::bench_reference::{Reference, Size};
    let dev = medvlp_model::runtime::device(device)?;
    let reference = Size::named(preset);
    type Encoder = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;
    // `embed`: the pooled embedding as `embed`, `eval` and the server compute it (a CLS-pooled ViT
    // runs its last block on the CLS token only). `all`: every token's final state, the output of
    // torch_reference.py's `infer` (like for like). Both split the batch across the cores.
    let (params, embed, all): (usize, Encoder, Encoder) = if let Some(size) = reference {
        let m = std::sync::Arc::new(Reference::new(size, false, &dev)?);
        let p = m.store.num_params();
        let m2 = m.clone();
        (
            p,
            Box::new(move |x: &Tensor| in_batch_ranges(x, |x| m.encode_cls(x))),
            Box::new(move |x: &Tensor| in_batch_ranges(x, |x| m2.encode(x))),
        )
    } else {
        let cfg = ModelConfig::preset(preset)?;
        let store = ParamStore::new(0, DType::F32, &dev).frozen();
        let m = std::sync::Arc::new(MedVlp::new(&cfg, &store)?);
        let m2 = m.clone();
        (
            store.num_params(),
            Box::new(move |x: &Tensor| medvlp_model::encode::image_embeds(&*m, x)),
            Box::new(move |x: &Tensor| in_batch_ranges(x, |x| m2.image_features(x))),
        )
    };
    let (b, size, ch) = match reference {
        Some(z) => (z.batch, z.image, 1),
        None => {
            let c = ModelConfig::preset(preset)?;
            (32, c.vision_config.image_size, c.vision_config.num_channels)
        }
    };
    let px = Tensor::randn(0f32, 1f32, (b, ch, size, size), &dev)?;
    let time = |run: &Encoder| -> Result<(f64, Tensor)> {
        let mut times = vec![];
        let mut last = None;
        for i in 0..steps + 2 {
            let t0 = Instant::now();
            let y = run(&px)?;
            let _ = y.sum_all()?.to_scalar::<f32>()?;
            if i >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
            last = Some(y);
        }
        Ok((median(times), last.expect("at least one run")))
    };
    let (med, y32) = time(&embed)?;
    let (med_all, _) = time(&all)?;
    let mut out = serde_json::json!({ "preset": preset, "params": params, "batch": b, "images_per_s": b as f64 / med, "median_batch_s": med, "all_tokens_images_per_s": b as f64 / med_all, "peak_rss_bytes": peak_rss_bytes(), "kernel_path": kernel_path(medvlp_model::nn::Precision::Fp32, &dev), "cpu_level": cpu_level() });
    if bf16 {
        // bf16 products (the training kernels' autocast): bf16 operands, f32 accumulation.
        let bf16 = medvlp_model::nn::Precision::Bf16;
        let (med16, y16) = medvlp_model::nn::with_precision(bf16, || time(&embed))?;
        let (med16_all, _) = medvlp_model::nn::with_precision(bf16, || time(&all))?;
        let cos = medvlp_model::heads::l2_normalize(&y32)?
            .mul(&medvlp_model::heads::l2_normalize(&y16)?)?
            .sum(1)?
            .min(0)?
            .to_scalar::<f32>()?;
        out["bf16_images_per_s"] = (b as f64 / med16).into();
        out["bf16_all_tokens_images_per_s"] = (b as f64 / med16_all).into();
        out["bf16_min_cosine"] = (cos as f64).into();
        out["bf16_kernel_path"] = medvlp_model::nn::fused::bf16_gemm::path().name().into();
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
