//! `medvlp eval zero-shot|linear-probe|finetune|retrieval|all --model DIR --data MANIFEST`:
//! the field's evaluation protocols. Writes `results.jsonl` (one JSON object per metric),
//! `summary.md` and ROC / Recall@K plots (SVG and PNG) into `--out`.

use crate::evaluate::{self, Evaluator, SplitEmbeddings, TaskOutput, TextField};
use anyhow::{bail, Result};
use medvlp_data::dataset::{read_manifest, Split};
use medvlp_data::loader::Loader;
use medvlp_eval::metrics;
use medvlp_eval::results::{append_jsonl, write_markdown, ResultRecord, Task};
use medvlp_eval::stats::BootstrapConfig;
use medvlp_eval::zeroshot::PromptMode;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub task: EvalTask,
}

#[derive(clap::Subcommand)]
pub enum EvalTask {
    /// Zero-shot classification from prompt files (per-class and macro AUROC, N-way accuracy).
    ZeroShot(Common),
    /// Logistic regression on frozen image embeddings at 1%, 10% and 100% of the training labels.
    LinearProbe(Common),
    /// Fine-tune the image encoder with a linear head at each label fraction.
    Finetune(Common),
    /// Image->report and report->image retrieval (R@K, mean/median rank, Precision@K by label).
    Retrieval(Common),
    /// Zero-shot, linear probe and retrieval (and fine-tuning with --with-finetune).
    All(Common),
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// medvlp model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL manifest (`medvlp prepare` or `medvlp synth`).
    #[arg(long)]
    pub data: PathBuf,
    /// Image root for relative paths (default: the manifest's folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Split evaluated (train and validate are used by the probes).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Zero-shot prompt file (path or shipped name, see `medvlp prompts list`).
    #[arg(long, default_value = "chexpert5")]
    pub prompts: String,
    /// Prompt modes for zero-shot.
    #[arg(long, value_delimiter = ',', default_value = "pos_neg,ensemble,single")]
    pub modes: Vec<String>,
    /// Studies per class of the N-way zero-shot task (5x200 style).
    #[arg(long, default_value_t = 200)]
    pub nway_per_class: usize,
    /// Label fractions of the probes.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.1,1.0")]
    pub fractions: Vec<f64>,
    /// Classes of the probes (default: the prompt file's classes).
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Retrieval candidate pool (default: the whole split).
    #[arg(long)]
    pub pool: Option<usize>,
    /// Report text used for retrieval.
    #[arg(long, value_enum, default_value = "report")]
    pub text_field: TextField,
    /// Bootstrap resamples for the 95% confidence intervals (0 = none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Include fine-tuning in `eval all`.
    #[arg(long)]
    pub with_finetune: bool,
    /// Output folder.
    #[arg(long, default_value = "eval")]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let (which, c) = match args.task {
        EvalTask::ZeroShot(c) => (vec![Task::ZeroShot], c),
        EvalTask::LinearProbe(c) => (vec![Task::LinearProbe], c),
        EvalTask::Finetune(c) => (vec![Task::Finetune], c),
        EvalTask::Retrieval(c) => (vec![Task::Retrieval], c),
        EvalTask::All(c) => {
            let mut t = vec![Task::ZeroShot, Task::LinearProbe, Task::Retrieval];
            if c.with_finetune {
                t.push(Task::Finetune);
            }
            (t, c)
        }
    };
    let records = evaluate_model(&c, &which)?;
    print!("{}", medvlp_eval::results::markdown_summary(&records));
    eprintln!("results in {}", c.out.join("results.jsonl").display());
    Ok(())
}

fn parse_split(s: &str) -> Result<Split> {
    Split::parse(s).ok_or_else(|| anyhow::anyhow!("unknown split {s:?} (train, validate, test)"))
}

/// Runs `tasks` for one model; writes results.jsonl, summary.md and plots into `c.out`.
pub fn evaluate_model(c: &Common, tasks: &[Task]) -> Result<Vec<ResultRecord>> {
    let split = parse_split(&c.split)?;
    std::fs::create_dir_all(&c.out)?;
    let ev = Evaluator::load(&c.model, c.batch_size)?;
    let boot = (c.bootstrap > 0).then(|| BootstrapConfig {
        resamples: c.bootstrap,
        seed: c.seed,
        ..Default::default()
    });
    let (prompts, prompt_hash) = evaluate::load_zero_shot_prompts(&c.prompts)?;
    let classes: Vec<String> = if c.classes.is_empty() {
        prompts.class.iter().map(|k| k.name.clone()).collect()
    } else {
        c.classes.clone()
    };
    let need_text = tasks.contains(&Task::Retrieval);
    let t0 = std::time::Instant::now();
    let test =
        ev.embed_split(&c.data, c.root.as_deref(), split, need_text.then_some(c.text_field))?;
    tracing::info!(
        "embedded {} {} studies in {:.1}s",
        test.ids.len(),
        split.as_str(),
        t0.elapsed().as_secs_f64()
    );
    let base = ev.protocol(&c.data, &test, need_text.then_some(c.text_field));
    let mut all = TaskOutput::default();
    let mut probe_splits: Option<(SplitEmbeddings, SplitEmbeddings)> = None;
    for &t in tasks {
        let out = match t {
            Task::ZeroShot => {
                let modes: Vec<PromptMode> =
                    c.modes.iter().map(|m| PromptMode::parse(m)).collect::<Result<_>>()?;
                evaluate::zero_shot(
                    &ev,
                    &test,
                    &prompts,
                    &prompt_hash,
                    &modes,
                    c.nway_per_class,
                    boot.as_ref(),
                    &base,
                )?
            }
            Task::LinearProbe => {
                if probe_splits.is_none() {
                    let tr = ev.embed_split(&c.data, c.root.as_deref(), Split::Train, None)?;
                    let va = ev.embed_split(&c.data, c.root.as_deref(), Split::Validate, None)?;
                    probe_splits = Some((tr, va));
                }
                let (tr, va) = probe_splits.as_ref().unwrap();
                evaluate::linear_probe(
                    &c.data,
                    tr,
                    va,
                    &test,
                    &classes,
                    &c.fractions,
                    c.seed,
                    boot.as_ref(),
                    &base,
                )?
            }
            Task::Retrieval => {
                evaluate::retrieval(&test, &classes, c.pool, c.seed, boot.as_ref(), &base)?
            }
            Task::Finetune => finetune(c, &ev, &test, &classes, boot.as_ref(), &base)?,
        };
        all.records.extend(out.records);
        all.plots.extend(out.plots);
    }
    let results = c.out.join("results.jsonl");
    let _ = std::fs::remove_file(&results);
    append_jsonl(&results, &all.records)?;
    write_markdown(
        &c.out.join("summary.md"),
        &format!("Evaluation of {}", c.model.display()),
        &all.records,
    )?;
    evaluate::write_plots(&c.out, &all.plots)?;
    Ok(all.records)
}

/// Fine-tuning at each label fraction: train on the fraction, select the epoch on validation
/// (macro AUROC), report test AUROC.
fn finetune(
    c: &Common,
    ev: &Evaluator,
    test: &SplitEmbeddings,
    classes: &[String],
    boot: Option<&BootstrapConfig>,
    base: &medvlp_eval::results::Protocol,
) -> Result<TaskOutput> {
    let studies = read_manifest(&c.data)?;
    let root = c
        .root
        .clone()
        .unwrap_or_else(|| c.data.parent().map(Path::to_path_buf).unwrap_or_default());
    let items = |s: Split| Loader::items_from_studies(&studies, &root, Some(s));
    let train_all = items(Split::Train);
    let classes = test.defined_classes(classes);
    if classes.is_empty() {
        bail!("fine-tuning: no class has positives and negatives in the test split");
    }
    // Test items in the order of `test` (the embedded split), so labels line up.
    let test_items: Vec<_> = {
        let all = items(test.split);
        let by_id: std::collections::HashMap<&str, &medvlp_data::loader::Item> =
            all.iter().map(|i| (i.id.as_str(), i)).collect();
        test.ids.iter().map(|id| (*by_id[id.as_str()]).clone()).collect()
    };
    let val_items = items(Split::Validate);
    let yv: Vec<Vec<bool>> = val_items
        .iter()
        .map(|i| classes.iter().map(|k| i.labels.get(k) == Some(&1)).collect())
        .collect();
    let yt = test.indicators(&classes);
    let train_ids: Vec<String> = train_all.iter().map(|i| i.id.clone()).collect();
    let ytrain: Vec<Vec<bool>> = train_all
        .iter()
        .map(|i| classes.iter().map(|k| i.labels.get(k) == Some(&1)).collect())
        .collect();
    let mut out = TaskOutput::default();
    for &f in &c.fractions {
        let (idx, source) = evaluate::fraction_ids(&c.data, &train_ids, &ytrain, f, c.seed)?;
        let train: Vec<_> = idx.iter().map(|&i| train_all[i].clone()).collect();
        let cfg = medvlp_train::finetune::FinetuneConfig {
            epochs: c.epochs,
            batch_size: 32,
            seed: c.seed,
            ..Default::default()
        };
        let score = |s: &[Vec<f64>]| metrics::auroc_per_class(s, &yv).macro_;
        let t0 = std::time::Instant::now();
        let r = medvlp_train::finetune::finetune(
            &c.model,
            train,
            val_items.clone(),
            test_items.clone(),
            &classes,
            &cfg,
            &score,
            &ev.device,
        )?;
        tracing::info!(
            "fine-tuning at {}%: {} steps in {:.1}s, best epoch {}",
            f * 100.0,
            r.steps,
            t0.elapsed().as_secs_f64(),
            r.best_epoch
        );
        let est = metrics::auroc_with_ci(&r.test_scores, &yt, boot);
        let mut p = base.clone();
        p.extra.insert("train_studies".into(), serde_json::json!(idx.len()));
        p.extra.insert("fraction_ids".into(), serde_json::json!(source));
        p.extra.insert("epochs".into(), serde_json::json!(c.epochs));
        p.extra.insert("best_epoch".into(), serde_json::json!(r.best_epoch));
        if let Some(m) = &est.macro_ {
            out.records
                .push(ResultRecord::new(Task::Finetune, "auroc_macro", m, &p).label_fraction(f));
        }
        for (ci, e) in est.per_class.iter().enumerate() {
            if let Some(e) = e {
                out.records.push(
                    ResultRecord::new(Task::Finetune, "auroc", e, &p)
                        .class(&classes[ci])
                        .label_fraction(f),
                );
            }
        }
    }
    Ok(out)
}
