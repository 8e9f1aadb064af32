//! The evaluation protocols on embeddings of a manifest split: zero-shot classification from a
//! prompt file, linear probes per label fraction, image<->report retrieval and the fine-tuning
//! protocol (label fractions, epoch selection on validation, test AUROC). Each returns result
//! records with their protocol and plots ([`TaskOutput`]).
//!
//! The model side stays outside: it embeds the splits ([`SplitEmbeddings`]), embeds prompt texts
//! through the `embed_texts` callback of [`zero_shot`] and trains through the callback of
//! [`finetune`]. `medvlp_train::evaluate::evaluate_model` wires a model directory to these.

use crate::metrics;
use crate::options::{EvalOptions, TextField};
use crate::plots::{self, Plot};
use crate::probe::{self, ProbeConfig, Targets};
use crate::results::{append_jsonl, write_markdown, Protocol, ResultRecord, Task};
use crate::retrieval::{evaluate_retrieval, Pool, RetrievalConfig};
use crate::splits::{fraction_ids, FinetuneSplits, SplitEmbeddings};
use crate::stats::Estimate;
use crate::zeroshot::{self, ClassPrompts, PromptMode};
use anyhow::{bail, Context, Result};
use medvlp_data::hash::sha256_hex;
use medvlp_data::loader::Item;
use medvlp_data::text::prompts::{ExpandedClass, ZeroShotPrompts};
use medvlp_data::text::PromptFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Records and plots of one or more tasks.
#[derive(Default)]
pub struct TaskOutput {
    pub records: Vec<ResultRecord>,
    pub plots: Vec<(String, Plot)>,
}

impl TaskOutput {
    pub fn extend(&mut self, other: TaskOutput) {
        self.records.extend(other.records);
        self.plots.extend(other.plots);
    }

    /// Writes `results.jsonl` (replacing an old one), `summary.md` (titled `title`) and the plots
    /// into `dir`.
    pub fn write(&self, dir: &Path, title: &str) -> Result<()> {
        let results = dir.join("results.jsonl");
        let _ = std::fs::remove_file(&results);
        append_jsonl(&results, &self.records)?;
        write_markdown(&dir.join("summary.md"), title, &self.records)?;
        write_plots(dir, &self.plots)?;
        Ok(())
    }
}

/// The model side's text embedding: L2-normalised embeddings of the texts, in input order.
pub type EmbedTexts<'a> = dyn Fn(&[String]) -> Result<Vec<Vec<f32>>> + 'a;

fn record(task: Task, metric: &str, est: &Estimate, p: &Protocol) -> ResultRecord {
    ResultRecord::new(task, metric, est, p)
}

/// The protocol every record of one evaluation starts from: the model and its weights' hash, the
/// manifest, the evaluated split, the text field, the image preprocessing and the skipped images.
pub fn base_protocol(
    model: &Path,
    model_hash: Option<String>,
    manifest: &Path,
    data: &SplitEmbeddings,
    text_field: Option<TextField>,
    preprocessing: serde_json::Value,
) -> Protocol {
    Protocol {
        model: model.display().to_string(),
        model_hash,
        manifest: manifest.display().to_string(),
        split_hash: Some(data.split_hash.clone()),
        split: data.split.as_str().to_string(),
        prompt_hashes: BTreeMap::new(),
        text_field: text_field.map(|t| t.as_str().to_string()),
        preprocessing,
        extra: BTreeMap::from([("skipped_images".to_string(), serde_json::json!(data.skipped))]),
    }
}

/// A class's negative prompts: its `negative` list, else `no {first positive or template}`.
fn negative_prompts(c: &ExpandedClass) -> Result<Vec<String>> {
    if !c.negative.is_empty() {
        return Ok(c.negative.clone());
    }
    let pos = c
        .positive
        .first()
        .or(c.templates.first())
        .with_context(|| format!("class {:?} has no positive prompt or template", c.name))?;
    Ok(vec![format!("no {pos}")])
}

/// The recorded form of a prompt side: a string for one prompt (as files with CheXzero pairs
/// have always recorded it), a list for an ensemble.
fn recorded(prompts: &[String]) -> serde_json::Value {
    match prompts {
        [one] => serde_json::json!(one),
        many => serde_json::json!(many),
    }
}

/// One class's prompt embeddings for `mode`, and the prompts used (as recorded in results):
/// `single` takes the first template (or the positive prompt) and scores by cosine; `pos_neg`
/// the positive and negative prompts, each side averaged when it lists several (`no {positive}`
/// when the file has no negative); `ensemble` the expanded ensemble (or all templates) as the
/// positive side against the first negative prompt, scored as `pos_neg`. The evaluation
/// protocol and the server both build prompts here.
pub fn class_prompts(
    c: &ExpandedClass,
    mode: PromptMode,
    embed_texts: &EmbedTexts,
) -> Result<(ClassPrompts, serde_json::Value)> {
    Ok(match mode {
        PromptMode::Single => {
            let t = c
                .templates
                .first()
                .or(c.positive.first())
                .with_context(|| format!("class {:?} has no single template", c.name))?
                .clone();
            (
                ClassPrompts::Single(embed_texts(std::slice::from_ref(&t))?.remove(0)),
                serde_json::json!(t),
            )
        }
        PromptMode::Ensemble => {
            let mut ts: Vec<String> = c.ensemble.clone();
            if ts.is_empty() {
                ts = c.templates.clone();
            }
            if ts.is_empty() {
                bail!("class {:?} has no ensemble or templates", c.name);
            }
            // Scored against the class's negative prompt, as pos_neg is: a one-sided cosine to
            // finding phrases ranks normal studies first, because normal reports name every
            // finding ("no effusion, no pneumothorax") and the prompts embed close to them
            // (docs/zero-shot-ensemble.md has the measurements).
            // Only the first negative prompt (the bare "no X" of CheXzero): the ensembles are
            // bare phrases, and a negative side that adds sentence forms ("no X.") would move the
            // score along the phrasing direction instead of the finding's (on the quickstart's
            // XLIP, seed 1, macro 0.745 with "no X" alone, 0.616 with chexpert5's four).
            let neg = negative_prompts(c)?[..1].to_vec();
            let e = embed_texts(&ts)?;
            let neg_e = embed_texts(&neg)?;
            (
                ClassPrompts::PosNeg { positive: e, negative: neg_e },
                serde_json::json!({"positive": ts, "negative": recorded(&neg)}),
            )
        }
        PromptMode::PosNeg => {
            let pos = if c.positive.is_empty() {
                vec![c
                    .templates
                    .first()
                    .cloned()
                    .with_context(|| format!("class {:?} has no positive prompt", c.name))?]
            } else {
                c.positive.clone()
            };
            let neg = negative_prompts(c)?;
            let mut e = embed_texts(&[&pos[..], &neg[..]].concat())?;
            let neg_e = e.split_off(pos.len());
            (
                ClassPrompts::PosNeg { positive: e, negative: neg_e },
                serde_json::json!({"positive": recorded(&pos), "negative": recorded(&neg)}),
            )
        }
    })
}

/// Zero-shot classification with a prompt file: per prompt mode (`opts.modes`), per-class AUROC
/// and macro AUROC (multi-label), and N-way accuracy on the studies positive for exactly one class
/// (5x200 style, up to `opts.nway_per_class` per class). The exact prompts go into the protocol.
/// `embed_texts` embeds prompts with the model; `temperature` is the model's (pos/neg mode).
pub fn zero_shot(
    data: &SplitEmbeddings,
    prompts: &ZeroShotPrompts,
    prompt_file_hash: &str,
    embed_texts: &EmbedTexts,
    temperature: f64,
    opts: &EvalOptions,
    base: &Protocol,
) -> Result<TaskOutput> {
    let modes = &opts.modes;
    let nway_per_class = opts.nway_per_class;
    let boot = opts.bootstrap_config();
    let boot = boot.as_ref();
    let expanded: Vec<ExpandedClass> = prompts.expand()?;
    let names: Vec<String> = expanded.iter().map(|c| c.name.clone()).collect();
    let classes = data.defined_classes(&names);
    if classes.is_empty() {
        bail!("zero-shot: none of the prompt file's classes ({}) has both positives and negatives in the {} split", names.join(", "), data.split.as_str());
    }
    let skipped: Vec<&String> = names.iter().filter(|n| !classes.contains(n)).collect();
    if !skipped.is_empty() {
        tracing::info!("zero-shot: classes without positives and negatives in this split are left out: {skipped:?}");
    }
    let ec: Vec<&ExpandedClass> =
        classes.iter().map(|c| expanded.iter().find(|e| &e.name == c).unwrap()).collect();
    let labels = data.indicators(&classes);
    let mut out = TaskOutput::default();
    for &mode in modes {
        let mut used: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut cps = vec![];
        for c in &ec {
            let (cp, shown) = class_prompts(c, mode, embed_texts)?;
            used.insert(c.name.clone(), shown);
            cps.push(cp);
        }
        let scores = zeroshot::zero_shot_scores(&data.images, &cps, temperature)?;
        let mut p = base.clone();
        p.prompt_hashes
            .insert(format!("{}@{}", prompts.name, prompts.version), prompt_file_hash.to_string());
        p.extra.insert("prompt_mode".into(), serde_json::json!(mode.as_str()));
        p.extra.insert("prompts".into(), serde_json::json!(used));
        let est = zeroshot::evaluate_multilabel(&scores, &labels, boot);
        if let Some(m) = &est.macro_ {
            out.records.push(record(Task::ZeroShot, "auroc_macro", m, &p));
        }
        for (ci, e) in est.per_class.iter().enumerate() {
            if let Some(e) = e {
                out.records.push(record(Task::ZeroShot, "auroc", e, &p).class(&classes[ci]));
            }
        }
        let auprc = metrics::auprc_with_ci(&scores, &labels, boot);
        if let Some(m) = &auprc.macro_ {
            out.records.push(record(Task::ZeroShot, "auprc_macro", m, &p));
        }
        if mode == PromptMode::PosNeg || modes.len() == 1 {
            let curves: Vec<(String, metrics::RocCurve)> = (0..classes.len())
                .filter_map(|c| {
                    let s: Vec<f64> = scores.iter().map(|r| r[c]).collect();
                    let y: Vec<bool> = labels.iter().map(|r| r[c]).collect();
                    metrics::roc_curve(&s, &y).map(|rc| (classes[c].clone(), rc))
                })
                .collect();
            out.plots.push((
                format!("zero_shot_roc_{}", mode.as_str()),
                plots::roc_plot(
                    &format!("Zero-shot ROC ({}, {})", prompts.name, mode.as_str()),
                    &curves,
                ),
            ));
        }
        // N-way: studies positive for exactly one class, at most `nway_per_class` each.
        let mut rows = vec![];
        let mut per = vec![0usize; classes.len()];
        for (i, l) in labels.iter().enumerate() {
            let pos: Vec<usize> = (0..classes.len()).filter(|&c| l[c]).collect();
            if pos.len() == 1 && per[pos[0]] < nway_per_class {
                per[pos[0]] += 1;
                rows.push((i, pos[0]));
            }
        }
        if classes.len() >= 2 && per.iter().filter(|&&n| n > 0).count() >= 2 {
            let s: Vec<Vec<f64>> = rows.iter().map(|&(i, _)| scores[i].clone()).collect();
            let truth: Vec<usize> = rows.iter().map(|&(_, c)| c).collect();
            if let Some(e) = zeroshot::evaluate_nway(&s, &truth, boot) {
                let mut p = p.clone();
                p.extra.insert("nway".into(), serde_json::json!({"classes": classes, "per_class": per, "max_per_class": nway_per_class}));
                out.records.push(record(Task::ZeroShot, "accuracy", &e, &p));
            }
        }
    }
    Ok(out)
}

/// Linear probe on frozen image embeddings: multi-label logistic regression per label fraction
/// (`opts.fractions`), regularisation chosen on the validation split, AUROC on the test split,
/// F1 with per-class thresholds chosen on validation.
pub fn linear_probe(
    train: &SplitEmbeddings,
    val: &SplitEmbeddings,
    test: &SplitEmbeddings,
    classes: &[String],
    opts: &EvalOptions,
    base: &Protocol,
) -> Result<TaskOutput> {
    let boot = opts.bootstrap_config();
    let boot = boot.as_ref();
    let classes =
        test.defined_classes(val.defined_classes(train.defined_classes(classes).iter()).iter());
    if classes.is_empty() {
        bail!("linear probe: no class has positives and negatives in train, validate and test");
    }
    let (ytr, yv, yt) =
        (train.indicators(&classes), val.indicators(&classes), test.indicators(&classes));
    let mut out = TaskOutput::default();
    for &f in &opts.fractions {
        let (idx, source) = fraction_ids(&opts.data, &train.ids, &ytr, f, opts.seed)?;
        let x: Vec<Vec<f32>> = idx.iter().map(|&i| train.images[i].clone()).collect();
        let y: Vec<Vec<bool>> = idx.iter().map(|&i| ytr[i].clone()).collect();
        // Classes without a positive (or negative) in a tiny subset get a constant prediction.
        let (probe, sel) = probe::fit_with_validation(
            &x,
            &Targets::MultiLabel(y),
            &val.images,
            &Targets::MultiLabel(yv.clone()),
            &ProbeConfig::default(),
        )?;
        let scores = probe.predict(&test.images)?;
        let est = metrics::auroc_with_ci(&scores, &yt, boot);
        let mut p = base.clone();
        p.extra.insert("train_studies".into(), serde_json::json!(idx.len()));
        p.extra.insert("fraction_ids".into(), serde_json::json!(source));
        p.extra.insert("lambda".into(), serde_json::json!(sel.lambda));
        if let Some(m) = &est.macro_ {
            out.records.push(record(Task::LinearProbe, "auroc_macro", m, &p).label_fraction(f));
        }
        for (ci, e) in est.per_class.iter().enumerate() {
            if let Some(e) = e {
                out.records.push(
                    record(Task::LinearProbe, "auroc", e, &p).class(&classes[ci]).label_fraction(f),
                );
            }
        }
        // F1 with per-class thresholds chosen on validation.
        let vs = probe.predict(&val.images)?;
        let thr = metrics::select_f1_thresholds(&vs, &yv);
        let pred = metrics::apply_thresholds(&scores, &thr, 0.5);
        let f1 = metrics::f1_multilabel(&pred, &yt);
        if let Some(m) = f1.macro_ {
            out.records.push(
                record(Task::LinearProbe, "f1_macro", &Estimate { value: m, ci: None }, &p)
                    .label_fraction(f),
            );
        }
    }
    Ok(out)
}

/// Image->report and report->image retrieval on the studies with both, exact-pair relevance
/// (R@K, mean/median rank) and, with `classes`, label-based Precision@K; candidate pools of
/// `opts.pool` (seeded with `opts.seed`) or the whole split.
pub fn retrieval(
    data: &SplitEmbeddings,
    classes: &[String],
    opts: &EvalOptions,
    base: &Protocol,
) -> Result<TaskOutput> {
    let boot = opts.bootstrap_config();
    let boot = boot.as_ref();
    let texts = data.texts.as_ref().context("retrieval needs report embeddings")?;
    let keep: Vec<usize> = (0..data.ids.len()).filter(|&i| texts[i].is_some()).collect();
    if keep.len() < 2 {
        bail!(
            "retrieval: fewer than 2 studies with both an image and a report in the {} split",
            data.split.as_str()
        );
    }
    let imgs: Vec<Vec<f32>> = keep.iter().map(|&i| data.images[i].clone()).collect();
    let txts: Vec<Vec<f32>> = keep.iter().map(|&i| texts[i].clone().unwrap()).collect();
    let all_labels = data.indicators(classes);
    let labels: Vec<Vec<bool>> = keep.iter().map(|&i| all_labels[i].clone()).collect();
    let pool = match opts.pool {
        Some(n) if n < keep.len() => Pool::Chunks { size: n, seed: opts.seed },
        _ => Pool::Full,
    };
    let cfg = RetrievalConfig { pool, ..Default::default() };
    let res = evaluate_retrieval(
        &imgs,
        &txts,
        if classes.is_empty() { None } else { Some(&labels) },
        &cfg,
    )?;
    let mut p = base.clone();
    p.extra.insert("pool".into(), serde_json::json!(res.image_to_text.pool_size));
    p.extra.insert("pairs".into(), serde_json::json!(keep.len()));
    let mut out = TaskOutput::default();
    let mut curves = vec![];
    for d in [&res.image_to_text, &res.text_to_image] {
        for m in d.metrics(&cfg.ks, boot) {
            out.records
                .push(record(Task::Retrieval, &m.metric, &m.estimate, &p).direction(d.direction));
        }
        curves.push((
            d.direction.as_str().to_string(),
            plots::recall_curve(&d.ranks, 50.min(d.pool_size)),
        ));
    }
    out.plots.push((
        "retrieval_recall".into(),
        plots::recall_plot(
            &format!("Retrieval Recall@K (pool {})", res.image_to_text.pool_size),
            &curves,
        ),
    ));
    Ok(out)
}

/// One fine-tuning run the protocol asks the model side for: train on `train`, select the epoch
/// with the best `val_score` of the validation items' scores, return the test items' scores.
pub struct FinetuneJob<'a> {
    pub train: Vec<Item>,
    pub val: Vec<Item>,
    pub test: Vec<Item>,
    pub classes: &'a [String],
    /// Macro AUROC of validation scores (epoch selection).
    pub val_score: &'a dyn Fn(&[Vec<f64>]) -> Option<f64>,
}

/// What a fine-tuning run returns.
pub struct FinetuneRun {
    /// Per test item (in [`FinetuneJob::test`] order), per class.
    pub test_scores: Vec<Vec<f64>>,
    pub best_epoch: usize,
    /// Optimiser steps taken (logged).
    pub steps: usize,
}

/// The fine-tuning protocol: at each label fraction (`opts.fractions`), `train` fine-tunes on the
/// fraction's training studies with the epoch chosen on validation (macro AUROC); the records
/// are test AUROC per class and macro (classes defined on the test split).
pub fn finetune(
    test: &SplitEmbeddings,
    classes: &[String],
    opts: &EvalOptions,
    base: &Protocol,
    train: &mut dyn FnMut(FinetuneJob) -> Result<FinetuneRun>,
) -> Result<TaskOutput> {
    let boot = opts.bootstrap_config();
    let boot = boot.as_ref();
    let s = FinetuneSplits::new(&opts.data, &opts.image_root(), test, classes)?;
    let mut out = TaskOutput::default();
    for &f in &opts.fractions {
        let (idx, source) = fraction_ids(&opts.data, &s.train_ids, &s.train_labels, f, opts.seed)?;
        let score = |v: &[Vec<f64>]| metrics::auroc_per_class(v, &s.val_labels).macro_;
        let t0 = std::time::Instant::now();
        let r = train(FinetuneJob {
            train: idx.iter().map(|&i| s.train[i].clone()).collect(),
            val: s.val.clone(),
            test: s.test.clone(),
            classes: &s.classes,
            val_score: &score,
        })?;
        tracing::info!(
            "fine-tuning at {}%: {} steps in {:.1}s, best epoch {}",
            f * 100.0,
            r.steps,
            t0.elapsed().as_secs_f64(),
            r.best_epoch
        );
        let est = metrics::auroc_with_ci(&r.test_scores, &s.test_labels, boot);
        let mut p = base.clone();
        p.extra.insert("train_studies".into(), serde_json::json!(idx.len()));
        p.extra.insert("fraction_ids".into(), serde_json::json!(source));
        p.extra.insert("epochs".into(), serde_json::json!(opts.epochs));
        p.extra.insert("best_epoch".into(), serde_json::json!(r.best_epoch));
        if let Some(m) = &est.macro_ {
            out.records.push(record(Task::Finetune, "auroc_macro", m, &p).label_fraction(f));
        }
        for (ci, e) in est.per_class.iter().enumerate() {
            if let Some(e) = e {
                out.records.push(
                    record(Task::Finetune, "auroc", e, &p).class(&s.classes[ci]).label_fraction(f),
                );
            }
        }
    }
    Ok(out)
}

/// A zero-shot prompt file (path or shipped name) and its content hash.
pub fn load_zero_shot_prompts(name_or_path: &str) -> Result<(ZeroShotPrompts, String)> {
    let p = Path::new(name_or_path);
    let text = if p.exists() {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
    } else {
        medvlp_data::text::prompts::BUILTIN_PROMPTS
            .iter()
            .find(|(n, _)| *n == name_or_path)
            .map(|(_, t)| t.to_string())
            .with_context(|| format!("{name_or_path} is neither a file nor a shipped prompt file (see `medvlp prompts list`)"))?
    };
    match PromptFile::from_toml_str(&text, name_or_path)? {
        PromptFile::ZeroShot(z) => Ok((z, sha256_hex(text.as_bytes()))),
        PromptFile::Disease(_) => {
            bail!("{name_or_path} is a disease-kind prompt file, not a zero-shot one")
        }
    }
}

/// Writes every plot as SVG (with text) and PNG (lines only) into `dir`.
pub fn write_plots(dir: &Path, plots: &[(String, Plot)]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = vec![];
    for (name, p) in plots {
        let svg = dir.join(format!("{name}.svg"));
        p.write_svg(&svg)?;
        p.write_png(&dir.join(format!("{name}.png")))?;
        files.push(svg);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use medvlp_data::dataset::{Split, Study};

    const CLASSES: [&str; 2] = ["Edema", "Mass"];

    fn study(id: usize, split: Split, edema: bool, mass: bool) -> Study {
        serde_json::from_value(serde_json::json!({
            "id": format!("s{id}"),
            "images": [{"path": format!("s{id}.png")}],
            "split": split.as_str(),
            "labels": {"Edema": edema as i8, "Mass": mass as i8},
        }))
        .unwrap()
    }

    /// Studies of a split: positives by `i % 3` (0 Edema, 1 Mass, 2 none) and an image embedding
    /// along the positive class's axis, with a little of a third axis so that none is zero.
    fn split(split: Split, n: usize, offset: usize) -> (Vec<Study>, SplitEmbeddings) {
        let studies: Vec<Study> =
            (0..n).map(|i| study(offset + i, split, i % 3 == 0, i % 3 == 1)).collect();
        let images: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let w = 1.0 + (i % 5) as f32 * 0.1;
                match i % 3 {
                    0 => vec![w, 0.0, 0.2],
                    1 => vec![0.0, w, 0.2],
                    _ => vec![0.1, 0.1, w],
                }
            })
            .collect();
        let refs: Vec<&Study> = studies.iter().collect();
        let texts =
            Some(images.iter().enumerate().map(|(i, e)| (i != 2).then(|| e.clone())).collect());
        let e = SplitEmbeddings::new(split, &refs, images, texts, 0);
        (studies, e)
    }

    fn options(dir: &Path) -> EvalOptions {
        EvalOptions {
            data: dir.join("manifest.jsonl"),
            root: None,
            split: Split::Test,
            prompts: "toy".into(),
            modes: vec![PromptMode::PosNeg, PromptMode::Ensemble, PromptMode::Single],
            nway_per_class: 200,
            fractions: vec![0.5, 1.0],
            classes: CLASSES.map(String::from).to_vec(),
            pool: Some(4),
            text_field: TextField::Report,
            bootstrap: 20,
            seed: 1,
            batch_size: 8,
            epochs: 2,
            bf16: false,
            device: "cpu".into(),
            out: dir.join("out"),
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("medvlp-eval-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn base(data: &SplitEmbeddings) -> Protocol {
        base_protocol(
            Path::new("model"),
            Some("abc".into()),
            Path::new("m.jsonl"),
            data,
            Some(TextField::Report),
            serde_json::Value::Null,
        )
    }

    #[test]
    fn zero_shot_records_per_mode_from_a_prompt_file() {
        let dir = tmp("zs");
        let file = dir.join("toy.toml");
        let toml = "kind = \"zero-shot\"\nname = \"toy\"\nversion = \"0.1\"\n\
            [[class]]\nname = \"Edema\"\ntemplates = [\"edema\", \"there is edema\"]\n\
            positive = \"edema\"\nnegative = \"no edema\"\n\
            [[class]]\nname = \"Mass\"\ntemplates = [\"mass\"]\n\
            [[class]]\nname = \"Nodule\"\ntemplates = [\"nodule\"]\n";
        std::fs::write(&file, toml).unwrap();
        let (prompts, hash) = load_zero_shot_prompts(file.to_str().unwrap()).unwrap();
        assert_eq!(hash, sha256_hex(toml.as_bytes()));
        assert!(load_zero_shot_prompts("no-such-prompts").is_err());
        // Prompt embeddings: the class's axis, negated by "no ".
        let embed = |texts: &[String]| -> Result<Vec<Vec<f32>>> {
            Ok(texts
                .iter()
                .map(|t| {
                    let sign = if t.starts_with("no ") { -1.0 } else { 1.0 };
                    let axis = if t.contains("edema") { 0 } else { 1 };
                    let mut v = vec![0.0, 0.0, 0.01];
                    v[axis] = sign;
                    v
                })
                .collect())
        };
        let (_, test) = split(Split::Test, 30, 0);
        let opts = options(&dir);
        let out = zero_shot(&test, &prompts, &hash, &embed, 0.1, &opts, &base(&test)).unwrap();
        for mode in ["pos_neg", "ensemble", "single"] {
            let recs: Vec<&ResultRecord> =
                out.records.iter().filter(|r| r.protocol.extra["prompt_mode"] == mode).collect();
            let metrics: Vec<(&str, Option<&str>)> =
                recs.iter().map(|r| (r.metric.as_str(), r.class.as_deref())).collect();
            // Nodule has no positive in the split: left out.
            assert_eq!(
                metrics,
                [
                    ("auroc_macro", None),
                    ("auroc", Some("Edema")),
                    ("auroc", Some("Mass")),
                    ("auprc_macro", None),
                    ("accuracy", None)
                ],
                "{mode}"
            );
            assert!(recs.iter().all(|r| r.value == 1.0 && r.ci_low.is_some()), "{mode}");
            assert_eq!(recs[0].protocol.prompt_hashes["toy@0.1"], hash);
            assert_eq!(recs[0].protocol.model_hash.as_deref(), Some("abc"));
        }
        let pn = out.records.iter().find(|r| r.protocol.extra["prompt_mode"] == "pos_neg").unwrap();
        assert_eq!(
            pn.protocol.extra["prompts"]["Mass"],
            serde_json::json!({"positive": "mass", "negative": "no mass"})
        );
        assert_eq!(pn.protocol.extra["skipped_images"], 0);
        // One ROC plot: the pos/neg mode's (several modes).
        assert_eq!(out.plots.len(), 1);
        assert_eq!(out.plots[0].0, "zero_shot_roc_pos_neg");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ensemble_mode_contrasts_with_the_negative_prompt() {
        // The quickstart's failure in miniature: prompts and their negations share one dominant
        // "normal report" direction (axis 2), as do normal images. A one-sided cosine ranks the
        // normal images first; the ensemble scored against the negative prompt does not.
        let dir = tmp("zs-ens");
        let file = dir.join("toy.toml");
        let toml = "kind = \"zero-shot\"\nname = \"toy\"\nversion = \"0.1\"\n\
            [[class]]\nname = \"Edema\"\ntemplates = [\"edema\"]\n\
            negative = \"no edema\"\n\
            [class.ensemble]\norder = [\"severity\", \"finding\"]\n\
            severity = [\"\", \"mild\"]\nfinding = [\"edema\", \"interstitial edema\"]\n";
        std::fs::write(&file, toml).unwrap();
        let (prompts, hash) = load_zero_shot_prompts(file.to_str().unwrap()).unwrap();
        let embed =
            |texts: &[String]| -> Result<Vec<Vec<f32>>> {
                Ok(texts
                    .iter()
                    .map(|t| {
                        if t.starts_with("no ") {
                            vec![-0.3, 0.0, 0.9]
                        } else {
                            vec![0.3, 0.0, 0.9]
                        }
                    })
                    .collect())
            };
        let (_, mut test) = split(Split::Test, 30, 0);
        // Edema positives (i % 3 == 0) carry the finding axis; the others are "normal".
        test.images = (0..30)
            .map(|i| if i % 3 == 0 { vec![0.6, 0.0, 0.5] } else { vec![0.1, 0.1, 1.0] })
            .collect();
        let mut opts = options(&dir);
        opts.modes = vec![PromptMode::Ensemble, PromptMode::Single];
        let out = zero_shot(&test, &prompts, &hash, &embed, 0.1, &opts, &base(&test)).unwrap();
        let auroc = |mode: &str| {
            out.records
                .iter()
                .find(|r| r.protocol.extra["prompt_mode"] == mode && r.metric == "auroc")
                .unwrap()
                .value
        };
        assert_eq!(auroc("ensemble"), 1.0);
        assert_eq!(auroc("single"), 0.0, "the one-sided cosine is inverted on such data");
        let ens =
            out.records.iter().find(|r| r.protocol.extra["prompt_mode"] == "ensemble").unwrap();
        assert_eq!(
            ens.protocol.extra["prompts"]["Edema"],
            serde_json::json!({
                "positive": ["edema", "interstitial edema", "mild edema", "mild interstitial edema"],
                "negative": "no edema"
            })
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pos_neg_sides_can_be_prompt_ensembles() {
        // A phrasing direction (axis 1: a final period) that half the images share, unrelated to
        // the finding. One mismatched pair ("edema." against "no edema") scores along it; lists
        // with the same phrasings on both sides cancel it.
        let dir = tmp("zs-lists");
        let file = dir.join("toy.toml");
        let write = |pos: &str, neg: &str| {
            let toml = format!(
                "kind = \"zero-shot\"\nname = \"toy\"\nversion = \"0.1\"\n\
                [[class]]\nname = \"Edema\"\ntemplates = [\"edema\"]\n\
                positive = {pos}\nnegative = {neg}\n\
                [class.ensemble]\norder = [\"finding\"]\nfinding = [\"edema\", \"mild edema\"]\n"
            );
            std::fs::write(&file, &toml).unwrap();
            load_zero_shot_prompts(file.to_str().unwrap()).unwrap()
        };
        let embed = |texts: &[String]| -> Result<Vec<Vec<f32>>> {
            Ok(texts
                .iter()
                .map(|t| {
                    let finding = if t.starts_with("no ") { -0.2 } else { 0.2 };
                    let period = if t.ends_with('.') { 1.0 } else { 0.0 };
                    vec![finding, period, 1.0]
                })
                .collect())
        };
        let (_, mut test) = split(Split::Test, 30, 0);
        // Edema positives (i % 3 == 0) carry the finding axis; the phrasing axis is strongest
        // on the negatives.
        test.images = (0..30)
            .map(|i| {
                let f = if i % 3 == 0 { 1.0 } else { 0.0 };
                vec![f, if i % 2 == 0 { 0.0 } else { 2.0 - f }, 1.0]
            })
            .collect();
        let mut opts = options(&dir);
        opts.modes = vec![PromptMode::PosNeg, PromptMode::Ensemble];
        let auroc = |prompts: &ZeroShotPrompts, hash: &str, mode: &str| {
            let out = zero_shot(&test, prompts, hash, &embed, 0.1, &opts, &base(&test)).unwrap();
            let r = out
                .records
                .iter()
                .find(|r| r.protocol.extra["prompt_mode"] == mode && r.metric == "auroc")
                .unwrap();
            (r.value, r.protocol.extra["prompts"]["Edema"].clone())
        };
        let (one, hash) = write("\"edema.\"", "\"no edema\"");
        assert!(auroc(&one, &hash, "pos_neg").0 < 0.8, "the mismatched pair follows the period");
        let (lists, hash) = write("[\"edema\", \"edema.\"]", "[\"no edema\", \"no edema.\"]");
        let (value, recorded) = auroc(&lists, &hash, "pos_neg");
        assert_eq!(value, 1.0);
        assert_eq!(
            recorded,
            serde_json::json!({"positive": ["edema", "edema."], "negative": ["no edema", "no edema."]})
        );
        // The ensemble mode contrasts its bare phrases with the first negative prompt only.
        let (value, recorded) = auroc(&lists, &hash, "ensemble");
        assert_eq!(value, 1.0);
        assert_eq!(recorded["negative"], "no edema");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retrieval_on_the_studies_with_reports() {
        let dir = tmp("ret");
        let (_, test) = split(Split::Test, 12, 0);
        let out =
            retrieval(&test, &CLASSES.map(String::from), &options(&dir), &base(&test)).unwrap();
        let r1: Vec<&ResultRecord> =
            out.records.iter().filter(|r| r.metric == "recall@1").collect();
        assert_eq!(r1.len(), 2, "both directions");
        assert_eq!(r1[0].protocol.extra["pairs"], 11, "study 2 has no report");
        assert_eq!(r1[0].protocol.extra["pool"], 4);
        assert!(out.records.iter().any(|r| r.metric == "precision@5"));
        assert_eq!(out.plots[0].0, "retrieval_recall");
        // Without labels: no label-based metrics; without reports: an error.
        let out = retrieval(&test, &[], &options(&dir), &base(&test)).unwrap();
        assert!(!out.records.iter().any(|r| r.metric.starts_with("precision")));
        let (_, mut bare) = split(Split::Test, 4, 0);
        bare.texts = None;
        assert!(retrieval(&bare, &[], &options(&dir), &base(&bare)).is_err());
    }

    #[test]
    fn linear_probe_and_finetune_per_label_fraction() {
        let dir = tmp("lp");
        let (tr_s, train) = split(Split::Train, 40, 0);
        let (va_s, val) = split(Split::Validate, 15, 100);
        let (te_s, test) = split(Split::Test, 15, 200);
        let opts = options(&dir);
        let out = linear_probe(&train, &val, &test, &opts.classes, &opts, &base(&test)).unwrap();
        let macros: Vec<(f64, f64, &serde_json::Value)> = out
            .records
            .iter()
            .filter(|r| r.metric == "auroc_macro")
            .map(|r| (r.label_fraction.unwrap(), r.value, &r.protocol.extra["train_studies"]))
            .collect();
        assert_eq!(
            macros,
            [(0.5, 1.0, &serde_json::json!(20)), (1.0, 1.0, &serde_json::json!(40))]
        );
        assert!(out.records.iter().any(|r| r.metric == "f1_macro"));

        // Fine-tuning reads the manifest; the trainer here scores test items by their labels.
        let all: String = tr_s
            .iter()
            .chain(&va_s)
            .chain(&te_s)
            .map(|s| serde_json::to_string(s).unwrap() + "\n")
            .collect();
        std::fs::write(&opts.data, all).unwrap();
        let mut jobs = vec![];
        let out = finetune(&test, &opts.classes, &opts, &base(&test), &mut |job| {
            jobs.push((job.train.len(), job.val.len(), job.classes.to_vec()));
            let truth = |it: &Item| -> Vec<f64> {
                job.classes.iter().map(|c| (it.labels.get(c) == Some(&1)) as u8 as f64).collect()
            };
            let val: Vec<Vec<f64>> = job.val.iter().map(truth).collect();
            assert_eq!((job.val_score)(&val), Some(1.0));
            Ok(FinetuneRun {
                test_scores: job.test.iter().map(truth).collect(),
                best_epoch: 1,
                steps: 3,
            })
        })
        .unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!((jobs[0].0, jobs[1].0, jobs[1].1), (20, 40, 15));
        assert_eq!(jobs[0].2, CLASSES.map(String::from));
        let m: Vec<&ResultRecord> =
            out.records.iter().filter(|r| r.metric == "auroc_macro").collect();
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|r| r.value == 1.0 && r.protocol.extra["epochs"] == 2));
        assert_eq!(m[0].protocol.extra["best_epoch"], 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
