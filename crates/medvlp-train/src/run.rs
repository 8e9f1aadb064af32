//! A training run end to end: config -> tokenizer -> model (optionally from Hugging Face weights)
//! -> data pipeline -> trainer, with periodic validation (held-out loss, quick zero-shot AUROC,
//! image->report Recall@K).

use crate::data_pipeline::{DataPipeline, PipelineConfig, Prefetcher};
use crate::recipe::{recipe, Method, ObjectiveConfig};
use crate::run_config::RunConfig;
use crate::trainer::{LossOutput, Objective, RunSummary, Trainer};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use medvlp_data::dataset::Split;
use medvlp_data::image::preprocess::PreprocessConfig;
use medvlp_data::text::TextAugment;
use medvlp_data::tokenizer::{train_on_manifests, Tokenizer, WordPieceOptions};
use medvlp_eval::retrieval::{paired_ranks, recall_at_k};
use medvlp_eval::zeroshot::{evaluate_multilabel, pos_neg_probability};
use medvlp_model::model_dir::{bert_text_config, check_vocabulary, preload_bert};
use medvlp_model::runtime::device;
use medvlp_model::{MedVlp, ModelConfig, ParamStore};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

struct RecipeObjective {
    method: &'static dyn Method,
    cfg: ObjectiveConfig,
    model: MedVlp,
    data: Prefetcher,
    val: Option<DataPipeline>,
    accum: usize,
    seed: u64,
    val_batches: usize,
}

impl Objective for RecipeObjective {
    fn bad_samples(&self) -> Vec<(String, String)> {
        let mut b = self.data.with(|d| d.bad_samples()).unwrap_or_default();
        b.extend(self.val.iter().flat_map(|v| v.bad_samples()));
        b
    }

    fn loss(&mut self, step: u64, micro: usize) -> Result<LossOutput> {
        let k = step * self.accum as u64 + micro as u64;
        let b = self.data.batch(k)?;
        let out = self.method.loss(
            &self.model,
            &b,
            &self.cfg,
            self.seed.wrapping_mul(0x100000001b3) ^ k,
        )?;
        Ok(LossOutput { loss: out.loss, parts: out.parts, samples: b.rows() })
    }

    fn validate(&mut self, _step: u64) -> Result<Vec<(String, f64)>> {
        let Some(val) = self.val.as_mut() else { return Ok(vec![]) };
        let (mut losses, mut img, mut txt, mut labels) = (vec![], vec![], vec![], vec![]);
        for k in 0..self.val_batches as u64 {
            let b = val.batch(k)?;
            let out = self.method.loss(&self.model, &b, &self.cfg, k)?;
            losses.push(out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            let n = b.n_paired;
            let px = b.pixels.as_ref().unwrap().narrow(0, 0, n)?;
            img.push(self.model.image_embeds(&px)?.detach());
            txt.push(
                self.model
                    .text_embeds(&b.text.ids.narrow(0, 0, n)?, &b.text.mask.narrow(0, 0, n)?)?
                    .detach(),
            );
            labels.push(b.labels.as_ref().unwrap().narrow(0, 0, n)?.to_vec2::<f32>()?);
        }
        let img = Tensor::cat(&img, 0)?;
        let txt = Tensor::cat(&txt, 0)?;
        let sim: Vec<Vec<f32>> = img.matmul(&txt.t()?)?.to_vec2()?;
        let ranks = paired_ranks(&sim);
        let labels: Vec<Vec<f32>> = labels.into_iter().flatten().collect();
        // Quick zero-shot on the CheXpert competition findings: the eval protocol's pos/neg
        // scoring of "{finding}." vs "No {finding}." at temperature 0.1, macro AUROC.
        let (mut scores, mut y) = (vec![vec![]; labels.len()], vec![vec![]; labels.len()]);
        for name in medvlp_data::text::labels::CHEXPERT_5 {
            let Some(li) = medvlp_data::text::labels::CHEXPERT_14.iter().position(|n| *n == name)
            else {
                continue;
            };
            let prompts = vec![format!("{name}."), format!("No {}.", name.to_lowercase())];
            let tb = val.encode(&prompts)?;
            let pe = self.model.text_embeds(&tb.ids, &tb.mask)?;
            let sims: Vec<Vec<f32>> = img.matmul(&pe.t()?)?.to_vec2()?;
            for (i, r) in sims.iter().enumerate() {
                scores[i].push(pos_neg_probability((r[0] - r[1]) as f64, 0.1));
                y[i].push(labels[i][li] > 0.5);
            }
        }
        let mean_auroc =
            evaluate_multilabel(&scores, &y, None).macro_.map_or(f64::NAN, |e| e.value);
        Ok(vec![
            ("val_loss".into(), losses.iter().sum::<f64>() / losses.len().max(1) as f64),
            ("val_zero_shot_auroc".into(), mean_auroc),
            ("val_recall@1".into(), recall_at_k(&ranks, 1)),
            ("val_recall@5".into(), recall_at_k(&ranks, 5)),
            ("val_recall@10".into(), recall_at_k(&ranks, 10)),
        ])
    }
}

/// Build the model config of a run: preset, size overrides, tokenizer vocabulary, method heads.
pub fn model_config(
    rc: &RunConfig,
    tokenizer: &Tokenizer,
    text_init: Option<&Path>,
) -> Result<ModelConfig> {
    let m = recipe(&rc.method)?;
    let mut mc = ModelConfig::preset(&rc.model.preset)?;
    if let Some(s) = rc.model.image_size {
        mc.vision_config.image_size = s;
    }
    if let Some(dir) = text_init {
        mc.text_config = bert_text_config(dir, &mc.text_config)?;
        check_vocabulary(tokenizer, &mc.text_config)?;
    } else {
        mc.text_config.vocab_size = tokenizer.vocab_size();
    }
    if let Some(l) = rc.model.max_length {
        mc.text_config.max_length = l.min(mc.text_config.max_position_embeddings);
    }
    mc.preprocess = medvlp_model::config::default_preprocess_for(
        mc.vision_config.image_size,
        mc.vision_config.num_channels,
    );
    if let Some(a) = &rc.data.augment {
        mc.preprocess.augment = a.clone();
    }
    m.adapt_model(&rc.objectives(), &mut mc);
    mc.method = serde_json::json!({ "name": rc.method, "objectives": rc.objectives_table()? });
    Ok(mc)
}

/// What in `out` shows a previous run (its metrics, checkpoints or models), if anything.
pub fn previous_run(out: &Path) -> Option<String> {
    let found: Vec<&str> = ["metrics.jsonl", "checkpoints", "final", "best"]
        .into_iter()
        .filter(|m| out.join(m).exists())
        .collect();
    (!found.is_empty()).then(|| found.join(", "))
}

/// Moves a run folder aside (`DIR.replaced-UNIXTIME`, never deleted); returns where it went.
pub fn move_aside(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().context("the run folder has no name")?.to_string_lossy().to_string();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut to = out.with_file_name(format!("{name}.replaced-{secs}"));
    let mut k = 1;
    while to.exists() {
        to = out.with_file_name(format!("{name}.replaced-{secs}-{k}"));
        k += 1;
    }
    std::fs::rename(out, &to)
        .with_context(|| format!("moving {} to {}", out.display(), to.display()))?;
    Ok(to)
}

/// Run (or resume) training as configured; writes into `out`. A fresh run (`resume` false) refuses
/// a folder that holds a previous run, so that two runs never mix their metrics and checkpoints.
/// The data-parallel group of this process: NCCL across the ranks the launcher started (a build
/// with `--features nccl`, one GPU per rank), or a single process.
fn communicator(
    env: &crate::dist::DistEnv,
    dev: &candle_core::Device,
) -> Result<Arc<dyn crate::dist::Communicator>> {
    // One process, unless a launcher started it on a GPU of an NCCL build (a real communicator of
    // one rank, as `bench/gpu-check.sh` runs it on a single GPU).
    if env.world_size == 1
        && (env.launcher == crate::dist::Launcher::Single
            || !dev.is_cuda()
            || !cfg!(feature = "nccl"))
    {
        return Ok(Arc::new(crate::dist::SingleProcess));
    }
    #[cfg(feature = "nccl")]
    {
        if !dev.is_cuda() {
            anyhow::bail!(
                "rank {} of {}: multi-process training runs on GPUs (device = \"cuda\"), not {dev:?}",
                env.rank,
                env.world_size
            );
        }
        let timeout = std::time::Duration::from_secs(600);
        Ok(Arc::new(crate::dist::nccl::NcclComm::connect(env, dev, timeout)?))
    }
    #[cfg(not(feature = "nccl"))]
    {
        let _ = dev;
        anyhow::bail!(
            "this process is rank {} of {} ({:?} environment), but this medvlp was built without \
             NCCL: build it with --features nccl for multi-GPU training, or run one process \
             (unset WORLD_SIZE / SLURM_NTASKS)",
            env.rank,
            env.world_size,
            env.launcher
        )
    }
}

pub fn run_training(
    rc: &RunConfig,
    resolved_toml: &str,
    out: &Path,
    resume: bool,
    stop: Arc<AtomicBool>,
) -> Result<RunSummary> {
    // Started by torchrun, Slurm or `medvlp launch`: one rank of a data-parallel job.
    let env = crate::dist::DistEnv::from_env()?;
    let device_name = env.device_name(&rc.device);
    // First: a device that cannot be used fails before anything is written.
    let dev = device(&device_name)?;
    let comm = communicator(&env, &dev)?;
    let writer = env.rank == 0;
    // Every rank checks (read-only), so that all of them stop, not rank 0 alone.
    if !resume {
        if let Some(what) = previous_run(out) {
            anyhow::bail!(
                "{} holds a previous run ({what}): --resume continues it, --overwrite moves it aside",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if writer {
        crate::trainer::save_resolved_config(out, resolved_toml)?;
    }
    medvlp_data::image::set_max_pixels(rc.data.max_pixels);
    let manifest = rc.data.manifest.as_deref().context("data.manifest is not set")?;
    // Tokenizer: given, from the BERT directory, reused from the run folder, or trained here.
    let tok_path: PathBuf = match (&rc.model.tokenizer, &rc.model.text_init) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) => d.join("tokenizer.json"),
        (None, None) => {
            let p = out.join("tokenizer.json");
            // Rank 0 trains it; the others read it after the barrier below.
            if !p.exists() && writer {
                let n = train_on_manifests(
                    &[manifest],
                    &WordPieceOptions { vocab_size: rc.model.vocab_size, ..Default::default() },
                    &p,
                )?;
                tracing::info!(
                    "trained a WordPiece vocabulary of {} on {n} reports",
                    rc.model.vocab_size
                );
            }
            p
        }
    };
    comm.barrier()?;
    let probe = Tokenizer::from_file(&tok_path, 512)?;
    let mc = model_config(rc, &probe, rc.model.text_init.as_deref())?;
    let store = ParamStore::new(rc.seed, DType::F32, &dev);
    if let Some(d) = &rc.model.text_init {
        preload_bert(&store, d)?;
    }
    if let Some(p) = &rc.model.image_init {
        if mc.vision_config.model_type != medvlp_model::config::VisionArch::Vit {
            anyhow::bail!("model.image_init loads ViT weights ({}), but the image encoder is a {:?}; use a ViT preset (small-vit, base)", p.display(), mc.vision_config.model_type);
        }
        store.preload_safetensors(p, |n| {
            let n = n.strip_prefix("vit.").unwrap_or(n);
            (n.starts_with("embeddings.")
                || n.starts_with("encoder.")
                || n.starts_with("layernorm."))
            .then(|| format!("vision_model.{n}"))
        })?;
    }
    let model = MedVlp::new(&mc, &store)?;
    let report = store.load_report();
    if (rc.model.text_init.is_some() || rc.model.image_init.is_some()) && writer {
        tracing::info!("initialisation: {report}");
        std::fs::write(out.join("init_report.json"), serde_json::to_string_pretty(&report)?)?;
    }
    store.drop_unused();
    let pp: PreprocessConfig = mc.preprocess.clone();
    let pc = |split: Split, train: bool| PipelineConfig {
        manifest,
        root: rc.data.root.as_deref(),
        image_only: rc.data.image_only.as_deref(),
        text_only: rc.data.text_only.as_deref(),
        split,
        batch_size: rc.data.batch_size,
        image_only_rate: if train { rc.data.image_only_rate } else { 0.0 },
        text_only_rate: if train { rc.data.text_only_rate } else { 0.0 },
        text_augment: if train {
            TextAugment {
                sentence_shuffle: rc.data.sentence_shuffle,
                sentence_sample: rc.data.sentence_sample,
            }
        } else {
            TextAugment::default()
        },
        max_bad_fraction: rc.data.max_bad_fraction,
        threads: rc.data.threads,
        train,
        seed: rc.seed,
        // Validation runs on rank 0 over the whole split.
        shard: if train { (env.rank, env.world_size) } else { (0, 1) },
    };
    let data = DataPipeline::new(
        &pc(Split::Train, true),
        &pp,
        Tokenizer::from_file(&tok_path, mc.text_config.max_length)?,
        &dev,
    )?;
    let val = if rc.train.validate_every > 0 {
        match DataPipeline::new(
            &pc(Split::Validate, false),
            &pp,
            Tokenizer::from_file(&tok_path, mc.text_config.max_length)?,
            &dev,
        ) {
            Ok(v) => Some(v),
            Err(err) => {
                tracing::warn!("no validation: {err:#}");
                None
            }
        }
    } else {
        None
    };
    // Whole batches only: a last batch of one study has no contrastive pair, and the recipe
    // then has no loss for it (a 33-study validation split with batch 16 stopped runs at the
    // first validation). A split smaller than a batch is one batch; one study is none.
    let val = val.filter(|v| {
        let ok = v.paired_len() >= 2;
        if !ok {
            tracing::warn!("no validation: the validation split has fewer than 2 paired studies");
        }
        ok
    });
    let val_batches = val
        .as_ref()
        .map(|v| {
            (rc.data.val_samples / rc.data.batch_size)
                .clamp(1, (v.paired_len() / rc.data.batch_size).max(1))
        })
        .unwrap_or(0);
    let mut objective = RecipeObjective {
        method: recipe(&rc.method)?,
        cfg: rc.objectives(),
        model,
        data: Prefetcher::new(data),
        val,
        accum: rc.train.grad_accum.max(1),
        seed: rc.seed,
        val_batches,
    };
    let trainer = Trainer {
        config: rc.train.clone(),
        model_config: mc,
        store: &store,
        out_dir: out.to_path_buf(),
        tokenizer: Some(tok_path),
        stop,
        seed: rc.seed,
        comm,
    };
    trainer.run(&mut objective, resume)
}
