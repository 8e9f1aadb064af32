//! Trainer: exact resume after a crash, gradient accumulation, non-finite guard, clean stop, bf16
//! mixed precision; on `MEDVLP_TEST_DEVICE` (the CPU by default).

use candle_core::{DType, Tensor};
use medvlp_model::masking::PatchMask;
use medvlp_model::{MedVlp, ModelConfig, ParamStore};
use medvlp_train::dist::{gather_with_grad, Communicator, LocalGroup, SingleProcess};
use medvlp_train::objectives::{
    contrastive::itc_loss,
    mim::mim_loss,
    mlm::{gather_positions, mlm_loss},
};
use medvlp_train::optim::AdamWConfig;
use medvlp_train::trainer::{checkpoint, LossOutput, Objective, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("medvlp-trainer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Synthetic data whose sample `i` is a pure function of `i`; batches of `batch` samples.
struct Toy {
    model: MedVlp,
    /// Samples per optimizer step on this rank.
    batch: usize,
    accum: usize,
    /// Data parallel: this rank's shard of each global micro-batch, and the contrastive loss over
    /// the global batch (None: one process).
    comm: Option<Arc<dyn Communicator>>,
    dtype: DType,
    use_itc: bool,
    fail_at: Option<u64>,
    nan_from: Option<u64>,
    stop_at: Option<(u64, Arc<AtomicBool>)>,
}

impl Toy {
    fn samples(
        &self,
        first: usize,
        n: usize,
    ) -> (Tensor, Tensor, Tensor, Vec<u32>, Vec<u32>, PatchMask) {
        let cfg = &self.model.config;
        let s = cfg.vision_config.image_size;
        let np = cfg.vision_config.num_patches();
        let l = 8;
        let (mut px, mut ids, mut keep, mut pos, mut lab) =
            (vec![], vec![], vec![], vec![], vec![]);
        for j in 0..n {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + (first + j) as u64);
            px.extend((0..s * s).map(|_| rng.random::<f32>()));
            let row: Vec<u32> =
                (0..l).map(|t| if t == 0 { 2 } else { rng.random_range(10..200) }).collect();
            for t in [2usize, 5] {
                pos.push((j * l + t) as u32);
                lab.push(row[t]);
            }
            ids.extend(row.iter().enumerate().map(|(t, &x)| if t == 2 || t == 5 { 4 } else { x }));
            let mut perm: Vec<usize> = (0..np).collect();
            for i in (1..np).rev() {
                perm.swap(i, rng.random_range(0..=i));
            }
            keep.push(perm[..np / 4].to_vec());
        }
        let dev = medvlp_model::runtime::test_device();
        let dt = self.dtype;
        (
            Tensor::from_vec(px, (n, 1, s, s), &dev).unwrap().to_dtype(dt).unwrap(),
            Tensor::from_vec(ids, (n, l), &dev).unwrap(),
            Tensor::ones((n, l), dt, &dev).unwrap(),
            pos,
            lab,
            PatchMask::from_keep(keep, np, &dev).unwrap(),
        )
    }
}

impl Objective for Toy {
    fn loss(&mut self, step: u64, micro: usize) -> anyhow::Result<LossOutput> {
        if Some(step) == self.fail_at {
            anyhow::bail!("simulated crash at step {step}");
        }
        if let Some((at, flag)) = &self.stop_at {
            if step == *at {
                flag.store(true, Ordering::SeqCst);
            }
        }
        let per = self.batch / self.accum;
        let (rank, world) =
            self.comm.as_ref().map(|c| (c.rank(), c.world_size())).unwrap_or((0, 1));
        let first = ((step as usize * self.accum + micro) * world + rank) * per;
        let (px, ids, mask, pos, lab, pm) = self.samples(first, per);
        let m = &self.model;
        let latent = m.vision_model.forward_masked(&px, &pm)?;
        let text = m.text_features(&ids, &mask)?;
        let pred = m.mae_decoder.as_ref().unwrap().forward(&latent, &pm, None)?;
        let mim = mim_loss(&pred, &px, m.config.vision_config.patch_size, &pm.mask, true)?;
        let (fused, _) = m.fuse_text(&text, &mask, &latent, false)?;
        let pos = Tensor::new(pos, px.device())?;
        let logits = m.mlm_head.as_ref().unwrap().forward(
            &gather_positions(&fused, &pos)?,
            &m.text_model.embeddings.word_embeddings.weight,
        )?;
        let mlm = mlm_loss(&logits, &Tensor::new(lab, px.device())?)?;
        let mut loss = (mim.clone() + mlm.clone())?;
        if self.use_itc {
            let (mut img, mut txt) = (m.project_image(&latent)?, m.project_text(&text, &mask)?);
            if let Some(c) = &self.comm {
                img = gather_with_grad(c, &img)?;
                txt = gather_with_grad(c, &txt)?;
            }
            loss = (loss + itc_loss(&img, &txt, &m.logit_scale_value()?)?)?;
        }
        if self.nan_from.map(|n| step >= n).unwrap_or(false) {
            loss = (loss * f64::NAN)?;
        }
        Ok(LossOutput {
            parts: vec![("mim".into(), mim.detach()), ("mlm".into(), mlm.detach())],
            loss,
            samples: per,
        })
    }
}

fn tiny_cfg() -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.decoder_config.as_mut().unwrap().cross_attention = false;
    c
}

fn setup(seed: u64) -> (ParamStore, MedVlp) {
    // On MEDVLP_TEST_DEVICE (a GPU under bench/gpu-check.sh): resume and bf16 are checked there.
    let store = ParamStore::new(seed, DType::F32, &medvlp_model::runtime::test_device());
    let model = MedVlp::new(&tiny_cfg(), &store).unwrap();
    (store, model)
}

fn params(store: &ParamStore) -> Vec<(String, Vec<u32>)> {
    store
        .vars()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        })
        .collect()
}

fn train_cfg(steps: u64, accum: usize) -> TrainConfig {
    TrainConfig {
        steps,
        grad_accum: accum,
        warmup_steps: 2,
        checkpoint_every: 2,
        keep_last: 2,
        log_every: 1,
        optimizer: AdamWConfig { lr: 1e-3, ..Default::default() },
        ..Default::default()
    }
}

fn trainer<'a>(
    store: &'a ParamStore,
    out: &std::path::Path,
    cfg: TrainConfig,
    stop: Arc<AtomicBool>,
) -> Trainer<'a> {
    Trainer {
        config: cfg,
        model_config: tiny_cfg(),
        store,
        out_dir: out.to_path_buf(),
        tokenizer: None,
        stop,
        seed: 5,
        comm: Arc::new(SingleProcess),
    }
}

#[test]
fn resume_after_a_crash_is_bit_identical() {
    let stop = Arc::new(AtomicBool::new(false));
    // Uninterrupted run.
    let out_a = tempdir("a");
    let (store_a, model_a) = setup(5);
    let mut obj = Toy {
        model: model_a,
        batch: 4,
        accum: 1,
        use_itc: true,
        fail_at: None,
        nan_from: None,
        stop_at: None,
        comm: None,
        dtype: DType::F32,
    };
    let sa = trainer(&store_a, &out_a, train_cfg(7, 1), stop.clone()).run(&mut obj, false).unwrap();
    assert_eq!(sa.state.step, 7);
    assert!(out_a.join("final/model.safetensors").exists());

    // Same run, crashing at step 5 (after the step-4 checkpoint), then resumed in a fresh process state.
    let out_b = tempdir("b");
    let (store_b, model_b) = setup(5);
    let mut obj = Toy {
        model: model_b,
        batch: 4,
        accum: 1,
        use_itc: true,
        fail_at: Some(5),
        nan_from: None,
        stop_at: None,
        comm: None,
        dtype: DType::F32,
    };
    let err =
        trainer(&store_b, &out_b, train_cfg(7, 1), stop.clone()).run(&mut obj, false).unwrap_err();
    assert!(err.to_string().contains("simulated crash"));
    let ckpts: Vec<u64> =
        checkpoint::list(&out_b.join("checkpoints")).into_iter().map(|(s, _)| s).collect();
    assert_eq!(ckpts, vec![2, 4], "keep_last = 2");
    let (store_c, model_c) = setup(99); // different init: everything must come from the checkpoint
    let mut obj = Toy {
        model: model_c,
        batch: 4,
        accum: 1,
        use_itc: true,
        fail_at: None,
        nan_from: None,
        stop_at: None,
        comm: None,
        dtype: DType::F32,
    };
    let sc = trainer(&store_c, &out_b, train_cfg(7, 1), stop.clone()).run(&mut obj, true).unwrap();
    assert_eq!(sc.state.step, 7);
    assert_eq!(
        params(&store_a),
        params(&store_c),
        "resumed parameters differ from the uninterrupted run"
    );
    // metrics.jsonl has one line per step of each attempt.
    let lines = std::fs::read_to_string(out_b.join("metrics.jsonl")).unwrap();
    assert!(lines.lines().count() >= 7);
}

#[test]
fn gradient_accumulation_equals_the_full_batch() {
    let stop = Arc::new(AtomicBool::new(false));
    let (s1, m1) = setup(3);
    let mut o1 = Toy {
        model: m1,
        batch: 32,
        accum: 1,
        use_itc: false,
        fail_at: None,
        nan_from: None,
        stop_at: None,
        comm: None,
        dtype: DType::F32,
    };
    trainer(
        &s1,
        &tempdir("acc1"),
        TrainConfig { checkpoint_every: 0, ..train_cfg(1, 1) },
        stop.clone(),
    )
    .run(&mut o1, false)
    .unwrap();
    let (s4, m4) = setup(3);
    let mut o4 = Toy {
        model: m4,
        batch: 32,
        accum: 4,
        use_itc: false,
        fail_at: None,
        nan_from: None,
        stop_at: None,
        comm: None,
        dtype: DType::F32,
    };
    trainer(&s4, &tempdir("acc4"), TrainConfig { checkpoint_every: 0, ..train_cfg(1, 4) }, stop)
        .run(&mut o4, false)
        .unwrap();
    let (a, b) = (s1.vars(), s4.vars());
    let mut worst = 0f32;
    for ((n, x), (_, y)) in a.iter().zip(b.iter()) {
        let d = (x.as_tensor() - y.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        worst = worst.max(d);
        assert!(d < 1e-5, "{n}: accumulated update differs by {d}");
    }
    println!("4x8 accumulation vs batch of 32: max parameter difference {worst:.2e}");
}

#[test]
fn non_finite_steps_are_skipped_then_stop_the_run() {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, m) = setup(4);
    let before = params(&s);
    let out = tempdir("nan");
    let mut o = Toy {
        model: m,
        batch: 4,
        accum: 1,
        use_itc: true,
        fail_at: None,
        nan_from: Some(2),
        stop_at: None,
        comm: None,
        dtype: DType::F32,
    };
    let err = trainer(&s, &out, train_cfg(20, 1), stop).run(&mut o, false).unwrap_err();
    assert!(err.to_string().contains("consecutive non-finite"), "{err}");
    assert!(err.to_string().contains("step-00000002"), "last good checkpoint named: {err}");
    assert_ne!(params(&s), before, "the two good steps were applied");
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("nonfinite")).count(), 5);
}

#[test]
fn stop_flag_checkpoints_and_exits_cleanly() {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, m) = setup(6);
    let out = tempdir("stop");
    let mut o = Toy {
        model: m,
        batch: 4,
        accum: 1,
        use_itc: true,
        fail_at: None,
        nan_from: None,
        stop_at: Some((2, stop.clone())),
        comm: None,
        dtype: DType::F32,
    };
    let r = trainer(&s, &out, TrainConfig { checkpoint_every: 100, ..train_cfg(10, 1) }, stop)
        .run(&mut o, false)
        .unwrap();
    assert!(r.stopped_early);
    assert_eq!(r.state.step, 3);
    assert_eq!(checkpoint::list(&out.join("checkpoints")).pop().unwrap().0, 3);
    assert!(!out.join("final").exists());
}

fn logged_losses(out: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn toy(model: MedVlp, fail_at: Option<u64>) -> Toy {
    Toy {
        model,
        batch: 4,
        accum: 1,
        use_itc: true,
        fail_at,
        nan_from: None,
        stop_at: None,
        comm: None,
        dtype: DType::F32,
    }
}

/// bf16 mixed precision (train.precision = "bf16") follows the fp32 loss curve, keeps fp32
/// weights and optimiser state in its checkpoints, and resumes bit-identically.
#[test]
fn bf16_training_tracks_fp32_and_resumes_exactly() {
    use medvlp_model::nn::Precision;
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = |steps, precision| TrainConfig {
        log_every: 5,
        checkpoint_every: 10,
        precision,
        ..train_cfg(steps, 1)
    };
    let run = |tag: &str, precision, steps, fail_at: Option<u64>, resume: bool, seed: u64| {
        let out = std::env::temp_dir().join(format!("medvlp-trainer-{tag}-{}", std::process::id()));
        if !resume {
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).unwrap();
        }
        let (store, model) = setup(seed);
        let r = trainer(&store, &out, cfg(steps, precision), stop.clone())
            .run(&mut toy(model, fail_at), resume);
        (out, params(&store), r.map(|_| ()))
    };
    let (out32, _, r) = run("fp32", Precision::Fp32, 50, None, false, 8);
    r.unwrap();
    let (out16, p16, r) = run("bf16", Precision::Bf16, 50, None, false, 8);
    r.unwrap();
    let (l32, l16) = (logged_losses(&out32), logged_losses(&out16));
    assert_eq!(l32.len(), 10);
    assert_eq!(
        l32.iter().map(|x| x.0).collect::<Vec<_>>(),
        l16.iter().map(|x| x.0).collect::<Vec<_>>()
    );
    let mut worst = 0f64;
    for ((step, a), (_, b)) in l32.iter().zip(&l16) {
        let rel = (a - b).abs() / a.abs();
        worst = worst.max(rel);
        assert!(
            rel < 0.02,
            "step {step}: fp32 loss {a}, bf16 loss {b} ({:.2}% apart)",
            100.0 * rel
        );
    }
    eprintln!("bf16 vs fp32 over 50 steps: worst logged loss difference {:.3}%", 100.0 * worst);
    assert!(l32.first().unwrap().1 > l32.last().unwrap().1 + 0.2, "the run learns: {l32:?}");
    assert_ne!(l32, l16, "bf16 products change the numbers (it is not the fp32 path)");

    // Checkpoints hold fp32 weights and moments only.
    let mut files = 0;
    for (_, dir) in checkpoint::list(&out16.join("checkpoints")) {
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "safetensors") {
                let bytes = std::fs::read(&f).unwrap();
                let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                for (name, t) in st.tensors() {
                    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{}: {name}", f.display());
                }
                files += 1;
            }
        }
    }
    assert!(files >= 2, "model and optimiser state in each checkpoint");

    // A bf16 run that crashes at step 35 (after the step-30 checkpoint) and resumes from a
    // different initialisation ends with the same bits as the uninterrupted one.
    let (_, _, r) = run("bf16-crash", Precision::Bf16, 50, Some(35), false, 8);
    assert!(r.unwrap_err().to_string().contains("simulated crash"));
    let (_, resumed, r) = run("bf16-crash", Precision::Bf16, 50, None, true, 99);
    r.unwrap();
    assert_eq!(p16, resumed, "resumed bf16 run differs from the uninterrupted one");
}

/// Data parallel: 2 and 4 ranks (threads of one process, each with its own replica, started from
/// different initialisations that rank 0's broadcast replaces) with `b` samples each train like
/// one rank with `2b` / `4b` samples: per-rank MIM/MLM means, the contrastive loss over the
/// global batch through `gather_with_grad`, gradients summed over ranks and averaged. f64.
#[test]
fn data_parallel_ranks_train_like_one_rank_with_the_whole_batch() {
    let (steps, b) = (20u64, 2usize);
    let params64 = |store: &ParamStore| -> Vec<(String, Vec<f64>)> {
        store
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()))
            .collect()
    };
    let run = move |world: usize, single: bool| -> Vec<Vec<(String, Vec<f64>)>> {
        let comms: Vec<Arc<dyn Communicator>> = if single {
            vec![Arc::new(SingleProcess)]
        } else {
            LocalGroup::ranks(world, std::time::Duration::from_secs(300))
                .into_iter()
                .map(|c| Arc::new(c) as Arc<dyn Communicator>)
                .collect()
        };
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                std::thread::spawn(move || {
                    let rank = comm.rank();
                    let store = ParamStore::new(
                        8 + rank as u64,
                        DType::F64,
                        &medvlp_model::runtime::test_device(),
                    );
                    let model = MedVlp::new(&tiny_cfg(), &store).unwrap();
                    let out = std::env::temp_dir().join(format!(
                        "medvlp-trainer-ddp-{world}-{single}-{}",
                        std::process::id()
                    ));
                    let mut toy = Toy {
                        model,
                        batch: if single { b * world } else { b },
                        accum: 1,
                        use_itc: true,
                        fail_at: None,
                        nan_from: None,
                        stop_at: None,
                        comm: (!single).then(|| comm.clone()),
                        dtype: DType::F64,
                    };
                    let t = Trainer {
                        config: TrainConfig { checkpoint_every: 0, ..train_cfg(steps, 1) },
                        model_config: tiny_cfg(),
                        store: &store,
                        out_dir: out,
                        tokenizer: None,
                        stop: Arc::new(AtomicBool::new(false)),
                        seed: 5,
                        comm,
                    };
                    let s = t.run(&mut toy, false).unwrap();
                    assert_eq!(s.state.step, steps);
                    params64(&store)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    for world in [2usize, 4] {
        let one = run(world, true).remove(0);
        let ranks = run(world, false);
        for r in &ranks[1..] {
            assert!(r == &ranks[0], "world {world}: replicas diverged");
        }
        let mut worst = (0f64, String::new());
        for ((n, a), (_, b)) in ranks[0].iter().zip(&one) {
            let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
            if d > worst.0 {
                worst = (d, n.clone());
            }
        }
        eprintln!(
            "{world} ranks vs one rank, {steps} steps: worst parameter difference {:.2e} ({})",
            worst.0, worst.1
        );
        assert!(worst.0 <= 1e-9, "world {world}: {} differs by {:.2e}", worst.1, worst.0);
    }
}

/// A stop (SIGTERM) on one rank stops every rank at the same step, and rank 0 writes the
/// checkpoint of that step.
#[test]
fn a_stop_on_one_rank_stops_every_rank_at_the_same_step() {
    let out = tempdir("ddp-stop");
    let handles: Vec<_> = LocalGroup::ranks(2, std::time::Duration::from_secs(300))
        .into_iter()
        .map(|c| {
            let out = out.clone();
            std::thread::spawn(move || {
                let comm: Arc<dyn Communicator> = Arc::new(c);
                let rank = comm.rank();
                let (store, model) = setup(6);
                let stop = Arc::new(AtomicBool::new(false));
                let mut toy = Toy {
                    model,
                    batch: 2,
                    accum: 1,
                    use_itc: true,
                    fail_at: None,
                    nan_from: None,
                    // Only rank 1 receives the signal, before step 3.
                    stop_at: (rank == 1).then(|| (3, stop.clone())),
                    comm: Some(comm.clone()),
                    dtype: DType::F32,
                };
                let t = Trainer {
                    config: TrainConfig { checkpoint_every: 100, ..train_cfg(10, 1) },
                    model_config: tiny_cfg(),
                    store: &store,
                    out_dir: out,
                    tokenizer: None,
                    stop,
                    seed: 5,
                    comm,
                };
                let s = t.run(&mut toy, false).unwrap();
                (s.stopped_early, s.state.step)
            })
        })
        .collect();
    let ends: Vec<(bool, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(ends, vec![(true, 4), (true, 4)], "both ranks stop after the step that saw it");
    let ckpts: Vec<u64> =
        checkpoint::list(&out.join("checkpoints")).into_iter().map(|(s, _)| s).collect();
    assert_eq!(ckpts, vec![4]);
}

/// Two ranks killed after a checkpoint and resumed reach the bits of the uninterrupted two-rank
/// run (rank 0 wrote the checkpoint; both restore from it).
#[test]
fn two_ranks_resume_exactly_after_a_crash() {
    let run = |out: std::path::PathBuf, fail_at: Option<u64>, resume: bool, seed: u64| {
        let handles: Vec<_> = LocalGroup::ranks(2, std::time::Duration::from_secs(300))
            .into_iter()
            .map(|c| {
                let out = out.clone();
                std::thread::spawn(move || {
                    let comm: Arc<dyn Communicator> = Arc::new(c);
                    let (store, model) = setup(seed);
                    let mut toy = Toy {
                        model,
                        batch: 2,
                        accum: 1,
                        use_itc: true,
                        fail_at,
                        nan_from: None,
                        stop_at: None,
                        comm: Some(comm.clone()),
                        dtype: DType::F32,
                    };
                    let t = Trainer {
                        config: train_cfg(7, 1),
                        model_config: tiny_cfg(),
                        store: &store,
                        out_dir: out,
                        tokenizer: None,
                        stop: Arc::new(AtomicBool::new(false)),
                        seed: 5,
                        comm,
                    };
                    let r = t.run(&mut toy, resume).map(|_| ());
                    (r, params(&store))
                })
            })
            .collect::<Vec<_>>();
        handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    };
    let whole = run(tempdir("ddp-whole"), None, false, 5);
    assert!(whole.iter().all(|(r, _)| r.is_ok()));
    let out = tempdir("ddp-crash");
    let crashed = run(out.clone(), Some(5), false, 5);
    assert!(crashed.iter().all(|(r, _)| r.is_err()));
    let ckpts: Vec<u64> =
        checkpoint::list(&out.join("checkpoints")).into_iter().map(|(s, _)| s).collect();
    assert_eq!(ckpts, vec![2, 4]);
    let resumed = run(out, None, true, 99);
    for (r, p) in &resumed {
        assert!(r.is_ok());
        assert_eq!(p, &whole[0].1, "resumed two-rank run differs from the uninterrupted one");
    }
}

/// `Toy` at a known pace: each step sleeps, so that `train.budget_minutes` has a time to fit.
struct Paced {
    toy: Toy,
    sleep: std::time::Duration,
}

impl Objective for Paced {
    fn loss(&mut self, step: u64, micro: usize) -> anyhow::Result<LossOutput> {
        std::thread::sleep(self.sleep);
        self.toy.loss(step, micro)
    }
}

fn lines(metrics: &std::path::Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// `budget_minutes` re-plans a far too long first plan from the run's own step times: the run
/// ends its cosine decay inside the budget instead of being cut at the peak learning rate, and a
/// run resumed after a re-plan follows the plan its checkpoint recorded.
#[test]
fn a_budgeted_run_fits_its_schedule_to_the_budget_and_resumes_on_its_plan() {
    let budget_minutes = 0.04; // 2.4 s
    let cfg = TrainConfig {
        budget_minutes,
        warmup_steps: 4,
        checkpoint_every: 1,
        ..train_cfg(100_000, 1)
    };
    let paced = |fail_at| {
        let (store, model) = setup(5);
        let toy = Toy { batch: 2, ..toy(model, fail_at) };
        (store, Paced { toy, sleep: std::time::Duration::from_millis(25) })
    };
    let out = tempdir("budget");
    let (store, mut obj) = paced(None);
    let stop = Arc::new(AtomicBool::new(false));
    let s = trainer(&store, &out, cfg.clone(), stop.clone()).run(&mut obj, false).unwrap();
    let plans = lines(&out.join("metrics.jsonl"), "plan");
    // The end of warm-up, one half and three quarters of the plan: each once.
    assert!((1..=3).contains(&plans.len()), "{} re-plans", plans.len());
    let total = plans.last().unwrap()["total_steps"].as_u64().unwrap();
    assert!(plans[0]["step"] == 4 && plans[0]["previous_total_steps"] == 100_000);
    // Each step takes at least the 25 ms sleep, so at most 96 fit into 2.4 s.
    assert!((5..=96).contains(&total), "planned {total} steps");
    assert_eq!(s.state.step, total, "the run ends on its plan");
    assert!(s.state.train_seconds <= budget_minutes * 60.0 * 1.5, "{}", s.state.train_seconds);
    assert!(s.state.train_seconds >= budget_minutes * 60.0 * 0.5, "{}", s.state.train_seconds);
    let train = lines(&out.join("metrics.jsonl"), "train");
    let last_lr = train.last().unwrap()["lr"].as_f64().unwrap();
    assert!(last_lr < 0.1 * 1e-3, "the decay did not finish: last lr {last_lr:e}");

    // A crash after the first re-plan, then a resume: the schedule continues from the plan the
    // checkpoint holds (its learning rates), not from `steps`.
    let out = tempdir("budget-resume");
    let (store, mut obj) = paced(Some(7));
    assert!(trainer(&store, &out, cfg.clone(), stop.clone()).run(&mut obj, false).is_err());
    let (_, ckpt) = checkpoint::list(&out.join("checkpoints")).pop().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join(checkpoint::STATE_FILE)).unwrap())
            .unwrap();
    assert_eq!(state["step"], 7);
    let planned = state["planned_steps"].as_u64().expect("the checkpoint records the plan");
    assert!(state["train_seconds"].as_f64().unwrap() > 0.0);
    let (store, mut obj) = paced(None);
    trainer(&store, &out, cfg, stop).run(&mut obj, true).unwrap();
    let first = &lines(&out.join("metrics.jsonl"), "train")[7];
    assert_eq!(first["step"], 8);
    let expect = medvlp_train::optim::Schedule {
        warmup_steps: 4,
        total_steps: planned,
        min_lr_ratio: TrainConfig::default().min_lr_ratio,
    }
    .lr(1e-3, 7);
    // (serde_json reads floats back to within an ulp or two.)
    let got = first["lr"].as_f64().unwrap();
    assert!(
        (got - expect).abs() <= 1e-12 * expect,
        "lr {got:e}, the recorded plan gives {expect:e}"
    );
}
