//! The evaluation protocols on a model directory: embeddings of a manifest split (the model side),
//! then zero-shot classification, linear probes and retrieval from `medvlp_eval` (the numeric
//! side). Shared by `medvlp eval`, `medvlp quickstart` and `medvlp compare`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use medvlp_data::dataset::{read_manifest, sibling, Split, Study};
use medvlp_data::loader::Loader;
use medvlp_data::text::prompts::{ExpandedClass, ZeroShotPrompts};
use medvlp_data::text::PromptFile;
use medvlp_data::tokenizer::Tokenizer;
use medvlp_eval::metrics;
use medvlp_eval::plots::{self, Plot};
use medvlp_eval::probe::{self, ProbeConfig, Targets};
use medvlp_eval::results::{sha256_file, sha256_hex, Protocol, ResultRecord, Task};
use medvlp_eval::retrieval::{evaluate_retrieval, Pool, RetrievalConfig};
use medvlp_eval::stats::{BootstrapConfig, Estimate};
use medvlp_eval::zeroshot::{self, ClassPrompts, PromptMode};
use medvlp_model::encode::{encode_images, encode_texts};
use medvlp_model::model_dir::{self, LoadedModel};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which report text stands for a study.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TextField {
    /// `text`, else findings + impression.
    Report,
    Impression,
    Findings,
}

impl TextField {
    pub fn as_str(self) -> &'static str {
        match self {
            TextField::Report => "report",
            TextField::Impression => "impression",
            TextField::Findings => "findings",
        }
    }

    fn of(self, s: &Study) -> Option<String> {
        let t = match self {
            TextField::Report => s.text.clone().or_else(|| s.findings_impression()),
            TextField::Impression => s.sections.get("impression").cloned(),
            TextField::Findings => s.sections.get("findings").cloned(),
        };
        t.filter(|t| !t.trim().is_empty())
    }
}

/// A loaded model ready to embed.
pub struct Evaluator {
    pub model: LoadedModel,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
    pub model_hash: Option<String>,
    pub batch_size: usize,
    pub device: Device,
}

impl Evaluator {
    pub fn load(dir: &Path, batch_size: usize) -> Result<Self> {
        let device = Device::Cpu;
        let model = model_dir::load(dir, DType::F32, &device, false)?;
        let tok = model
            .tokenizer
            .clone()
            .with_context(|| format!("{} has no tokenizer.json", dir.display()))?;
        let tokenizer = Tokenizer::from_file(&tok, model.config.text_config.max_length)?;
        let model_hash = sha256_file(&dir.join("model.safetensors")).ok();
        Ok(Self { model, tokenizer, dir: dir.to_path_buf(), model_hash, batch_size, device })
    }

    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        encode_texts(&self.model.model, &self.tokenizer, &refs, self.batch_size, &self.device)
    }

    /// `1 / exp(logit_scale)`: the temperature of the positive/negative prompt softmax.
    pub fn temperature(&self) -> Result<f64> {
        Ok(1.0 / self.model.model.logit_scale_value()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }

    /// Embeds the studies of one split that have an image (and, with `texts`, their reports).
    pub fn embed_split(
        &self,
        manifest: &Path,
        root: Option<&Path>,
        split: Split,
        texts: Option<TextField>,
    ) -> Result<SplitEmbeddings> {
        let studies: Vec<Study> = read_manifest(manifest)?
            .into_iter()
            .filter(|s| s.split == Some(split) && !s.images.is_empty())
            .collect();
        if studies.is_empty() {
            bail!("{}: no {} studies with images", manifest.display(), split.as_str());
        }
        let root = root
            .map(|r| r.to_path_buf())
            .unwrap_or_else(|| manifest.parent().map(|p| p.to_path_buf()).unwrap_or_default());
        let items = Loader::items_from_studies(&studies, &root, None);
        let res = encode_images(
            &self.model.model,
            &self.model.config.preprocess,
            items,
            self.batch_size,
            0.05,
            &self.device,
        )?;
        for (p, why) in res.bad.iter().take(10) {
            tracing::warn!("{p}: {why}; skipped");
        }
        let kept: Vec<&Study> = res.indices.iter().map(|&i| &studies[i]).collect();
        let text_emb = match texts {
            Some(field) => {
                let t: Vec<Option<String>> = kept.iter().map(|s| field.of(s)).collect();
                let present: Vec<String> = t.iter().flatten().cloned().collect();
                let mut emb = self.embed_texts(&present)?.into_iter();
                Some(t.iter().map(|x| x.as_ref().and_then(|_| emb.next())).collect())
            }
            None => None,
        };
        let ids: Vec<String> = kept.iter().map(|s| s.id.clone()).collect();
        let split_hash = {
            let mut sorted = ids.clone();
            sorted.sort();
            sha256_hex(sorted.join("\n").as_bytes())
        };
        Ok(SplitEmbeddings {
            split,
            ids,
            images: res.embeddings,
            texts: text_emb,
            labels: kept.iter().map(|s| s.labels.clone()).collect(),
            split_hash,
            skipped: res.bad.len(),
        })
    }

    pub fn protocol(
        &self,
        manifest: &Path,
        data: &SplitEmbeddings,
        text_field: Option<TextField>,
    ) -> Protocol {
        Protocol {
            model: self.dir.display().to_string(),
            model_hash: self.model_hash.clone(),
            manifest: manifest.display().to_string(),
            split_hash: Some(data.split_hash.clone()),
            split: data.split.as_str().to_string(),
            prompt_hashes: BTreeMap::new(),
            text_field: text_field.map(|t| t.as_str().to_string()),
            preprocessing: serde_json::to_value(&self.model.config.preprocess).unwrap_or_default(),
            extra: BTreeMap::from([(
                "skipped_images".to_string(),
                serde_json::json!(data.skipped),
            )]),
        }
    }
}

/// Embeddings of one split, in manifest order (studies whose image failed to load left out).
pub struct SplitEmbeddings {
    pub split: Split,
    pub ids: Vec<String>,
    pub images: Vec<Vec<f32>>,
    /// Report embeddings, `None` for studies without the text field.
    pub texts: Option<Vec<Option<Vec<f32>>>>,
    pub labels: Vec<BTreeMap<String, i8>>,
    pub split_hash: String,
    pub skipped: usize,
}

impl SplitEmbeddings {
    /// Indicator matrix for `classes`: 1 is positive; 0, -1 (uncertain) and absent are negative.
    pub fn indicators(&self, classes: &[String]) -> Vec<Vec<bool>> {
        self.labels.iter().map(|l| classes.iter().map(|c| l.get(c) == Some(&1)).collect()).collect()
    }

    /// Classes with at least one positive and one negative in this split.
    pub fn defined_classes<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a String>,
    ) -> Vec<String> {
        candidates
            .into_iter()
            .filter(|c| {
                let pos = self.labels.iter().filter(|l| l.get(*c) == Some(&1)).count();
                pos > 0 && pos < self.labels.len()
            })
            .cloned()
            .collect()
    }
}

/// Records and plots of one task.
#[derive(Default)]
pub struct TaskOutput {
    pub records: Vec<ResultRecord>,
    pub plots: Vec<(String, Plot)>,
}

fn record(task: Task, metric: &str, est: &Estimate, p: &Protocol) -> ResultRecord {
    ResultRecord::new(task, metric, est, p)
}

/// Zero-shot classification with a prompt file: per prompt mode, per-class AUROC and macro AUROC
/// (multi-label), and N-way accuracy on the studies positive for exactly one class (5x200 style,
/// up to `nway_per_class` per class). The exact prompts go into the protocol.
pub fn zero_shot(
    ev: &Evaluator,
    data: &SplitEmbeddings,
    prompts: &ZeroShotPrompts,
    prompt_file_hash: &str,
    modes: &[PromptMode],
    nway_per_class: usize,
    boot: Option<&BootstrapConfig>,
    base: &Protocol,
) -> Result<TaskOutput> {
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
    let temperature = ev.temperature()?;
    let mut out = TaskOutput::default();
    for &mode in modes {
        let mut used: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut cps = vec![];
        for c in &ec {
            let (cp, shown) = match mode {
                PromptMode::Single => {
                    let t = c
                        .templates
                        .first()
                        .or(c.positive.as_ref())
                        .with_context(|| format!("class {:?} has no single template", c.name))?
                        .clone();
                    (
                        ClassPrompts::Single(ev.embed_texts(std::slice::from_ref(&t))?.remove(0)),
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
                    (ClassPrompts::Ensemble(ev.embed_texts(&ts)?), serde_json::json!(ts))
                }
                PromptMode::PosNeg => {
                    let pos =
                        c.positive.clone().or_else(|| c.templates.first().cloned()).with_context(
                            || format!("class {:?} has no positive prompt", c.name),
                        )?;
                    let neg = c.negative.clone().unwrap_or_else(|| format!("no {pos}"));
                    let e = ev.embed_texts(&[pos.clone(), neg.clone()])?;
                    (
                        ClassPrompts::PosNeg {
                            positive: vec![e[0].clone()],
                            negative: vec![e[1].clone()],
                        },
                        serde_json::json!({"positive": pos, "negative": neg}),
                    )
                }
            };
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

/// The training IDs of a label fraction: `prepare`'s fixed lists (`<manifest>.train_1pct.txt`,
/// `.train_10pct.txt`) when they exist, else a seeded subset keeping a positive per class.
/// `ids` and `labels` (indicators of the classes) are the training studies'.
pub fn fraction_ids(
    manifest: &Path,
    ids: &[String],
    labels: &[Vec<bool>],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, String)> {
    if fraction >= 1.0 {
        return Ok(((0..ids.len()).collect(), "all".into()));
    }
    let name = format!("train_{}pct.txt", (fraction * 100.0).round() as u32);
    let list = sibling(manifest, &name);
    if list.exists() {
        let text = std::fs::read_to_string(&list)
            .with_context(|| format!("reading {}", list.display()))?;
        let wanted: std::collections::HashSet<&str> =
            text.lines().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
        let idx: Vec<usize> =
            (0..ids.len()).filter(|&i| wanted.contains(ids[i].as_str())).collect();
        if !idx.is_empty() {
            return Ok((idx, list.display().to_string()));
        }
        tracing::warn!(
            "{}: none of its IDs are training studies here; using a seeded subset",
            list.display()
        );
    }
    Ok((
        probe::subsample_indices(ids.len(), labels, fraction, seed)?,
        format!("seeded subset (seed {seed})"),
    ))
}

/// Linear probe on frozen image embeddings: multi-label logistic regression per label fraction,
/// regularisation chosen on the validation split, AUROC on the test split.
#[allow(clippy::too_many_arguments)]
pub fn linear_probe(
    manifest: &Path,
    train: &SplitEmbeddings,
    val: &SplitEmbeddings,
    test: &SplitEmbeddings,
    classes: &[String],
    fractions: &[f64],
    seed: u64,
    boot: Option<&BootstrapConfig>,
    base: &Protocol,
) -> Result<TaskOutput> {
    let classes =
        test.defined_classes(val.defined_classes(train.defined_classes(classes).iter()).iter());
    if classes.is_empty() {
        bail!("linear probe: no class has positives and negatives in train, validate and test");
    }
    let (ytr, yv, yt) =
        (train.indicators(&classes), val.indicators(&classes), test.indicators(&classes));
    let mut out = TaskOutput::default();
    for &f in fractions {
        let (idx, source) = fraction_ids(manifest, &train.ids, &ytr, f, seed)?;
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
/// (R@K, mean/median rank) and, with labels, label-based Precision@K.
pub fn retrieval(
    data: &SplitEmbeddings,
    classes: &[String],
    pool: Option<usize>,
    seed: u64,
    boot: Option<&BootstrapConfig>,
    base: &Protocol,
) -> Result<TaskOutput> {
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
    let pool = match pool {
        Some(n) if n < keep.len() => Pool::Chunks { size: n, seed },
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
