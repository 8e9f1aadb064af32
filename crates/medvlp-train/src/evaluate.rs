//! Evaluation of a model directory: [`evaluate_model`] embeds the manifest's splits with the model
//! ([`medvlp_model::encode::Evaluator`]), runs the protocols of `medvlp_eval::protocols` on the
//! embeddings (fine-tuning through [`crate::finetune`]) and writes `results.jsonl`, `summary.md`
//! and the plots. Shared by `medvlp eval`, `medvlp quickstart` and `medvlp compare`; it lives here
//! because fine-tuning needs the training crate.

use crate::finetune::{finetune, FinetuneConfig};
use anyhow::{Context, Result};
use medvlp_data::dataset::{Split, Study};
use medvlp_eval::protocols::{self, FinetuneRun, TaskOutput};
use medvlp_eval::results::{ResultRecord, Task};
use medvlp_eval::splits::{split_studies, SplitEmbeddings};
use medvlp_eval::{EvalOptions, TextField};
use medvlp_model::encode::Evaluator;
use std::path::Path;

/// Runs `tasks` for the model in `model` with `opts` (on the CPU); writes results.jsonl,
/// summary.md and plots into `opts.out` and returns the records.
pub fn evaluate_model(
    model: &Path,
    opts: &EvalOptions,
    tasks: &[Task],
) -> Result<Vec<ResultRecord>> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating the output folder {}", opts.out.display()))?;
    let dev = medvlp_model::runtime::device(&opts.device)?;
    let mut ev = Evaluator::load(model, opts.batch_size, &dev)?;
    if opts.bf16 {
        ev.precision = medvlp_model::nn::Precision::Bf16;
    }
    let (prompts, prompt_hash) = protocols::load_zero_shot_prompts(&opts.prompts)?;
    let classes = opts.classes_or_prompts(&prompts);
    let text_field = tasks.contains(&Task::Retrieval).then_some(opts.text_field);
    let t0 = std::time::Instant::now();
    let test = embed_split(&ev, opts, opts.split, text_field)?;
    tracing::info!(
        "embedded {} {} studies in {:.1}s",
        test.ids.len(),
        opts.split.as_str(),
        t0.elapsed().as_secs_f64()
    );
    let base = protocols::base_protocol(
        &ev.dir,
        ev.model_hash.clone(),
        &opts.data,
        &test,
        text_field,
        serde_json::to_value(&ev.preprocess).unwrap_or_default(),
    );
    let mut all = TaskOutput::default();
    let mut probe_splits: Option<(SplitEmbeddings, SplitEmbeddings)> = None;
    for &t in tasks {
        let out = match t {
            Task::ZeroShot => protocols::zero_shot(
                &test,
                &prompts,
                &prompt_hash,
                &|texts: &[String]| ev.embed_texts(texts),
                ev.temperature()?,
                opts,
                &base,
            )?,
            Task::LinearProbe => {
                if probe_splits.is_none() {
                    let tr = embed_split(&ev, opts, Split::Train, None)?;
                    let va = embed_split(&ev, opts, Split::Validate, None)?;
                    probe_splits = Some((tr, va));
                }
                let (tr, va) = probe_splits.as_ref().unwrap();
                protocols::linear_probe(tr, va, &test, &classes, opts, &base)?
            }
            Task::Retrieval => protocols::retrieval(&test, &classes, opts, &base)?,
            Task::Finetune => {
                let cfg = FinetuneConfig {
                    epochs: opts.epochs,
                    batch_size: 32,
                    seed: opts.seed,
                    ..Default::default()
                };
                protocols::finetune(&test, &classes, opts, &base, &mut |job| {
                    let r = finetune(
                        model,
                        job.train,
                        job.val,
                        job.test,
                        job.classes,
                        &cfg,
                        job.val_score,
                        &ev.device,
                    )?;
                    Ok(FinetuneRun {
                        test_scores: r.test_scores,
                        best_epoch: r.best_epoch,
                        steps: r.steps,
                    })
                })?
            }
        };
        all.extend(out);
    }
    all.write(&opts.out, &format!("Evaluation of {}", model.display()))?;
    Ok(all.records)
}

/// Embeds the studies of one split that have an image (and, with `texts`, their reports), in
/// manifest order.
pub fn embed_split(
    ev: &Evaluator,
    opts: &EvalOptions,
    split: Split,
    texts: Option<TextField>,
) -> Result<SplitEmbeddings> {
    let studies = split_studies(&opts.data, split)?;
    let res = ev.embed_studies(&studies, &opts.image_root())?;
    for (p, why) in res.bad.iter().take(10) {
        tracing::warn!("{p}: {why}; skipped");
    }
    let kept: Vec<&Study> = res.indices.iter().map(|&i| &studies[i]).collect();
    let text_emb = match texts {
        Some(field) => {
            let t: Vec<Option<String>> = kept.iter().map(|s| field.of(s)).collect();
            let present: Vec<String> = t.iter().flatten().cloned().collect();
            let mut emb = ev.embed_texts(&present)?.into_iter();
            Some(t.iter().map(|x| x.as_ref().and_then(|_| emb.next())).collect())
        }
        None => None,
    };
    Ok(SplitEmbeddings::new(split, &kept, res.embeddings, text_emb, res.bad.len()))
}
