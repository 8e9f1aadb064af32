//! The TOML configuration of a training run, with dotted-key overrides from the command line
//! (`train.steps=100 data.manifest=/data/mimic.jsonl objectives.mim_masking=random`). The resolved
//! configuration (defaults, file, overrides) is saved in the run folder.

use crate::recipe::{recipe, ObjectiveConfig};
use crate::trainer::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// tiny, small or base.
    pub preset: String,
    /// tokenizer.json; when absent a WordPiece vocabulary is trained on the training reports.
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size when training a tokenizer.
    pub vocab_size: usize,
    /// Hugging Face BERT directory to initialise the text encoder (and tokenizer) from.
    pub text_init: Option<PathBuf>,
    /// ViT safetensors (Hugging Face `ViTModel` names, optionally `vit.`-prefixed) for the image encoder.
    pub image_init: Option<PathBuf>,
    /// Image size / channels overriding the preset (e.g. 224 for the small model).
    pub image_size: Option<usize>,
    pub max_length: Option<usize>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            preset: "tiny".into(),
            tokenizer: None,
            vocab_size: 4000,
            text_init: None,
            image_init: None,
            image_size: None,
            max_length: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Paired manifest (JSONL, `medvlp prepare` / `medvlp synth` format).
    pub manifest: Option<PathBuf>,
    /// Image root for relative paths (default: the manifest's folder).
    pub root: Option<PathBuf>,
    /// Image-only manifest (labels, no report): disease-kind prompts stand in for reports.
    pub image_only: Option<PathBuf>,
    /// Text-only manifest (reports, no image).
    pub text_only: Option<PathBuf>,
    /// Paired samples per micro-batch.
    pub batch_size: usize,
    /// Image-only and text-only samples per micro-batch, as fractions of `batch_size`.
    pub image_only_rate: f64,
    pub text_only_rate: f64,
    /// Probability that a training report's sentences are shuffled (BioViL); reports of paired
    /// and text-only rows, never the disease prompts of image-only rows.
    pub sentence_shuffle: f64,
    /// Probability that a training report is cut to a random non-empty subset of its sentences.
    pub sentence_sample: f64,
    pub max_bad_fraction: f64,
    /// Pixel budget of one image (rows x columns): a file whose header declares more is a bad
    /// sample, refused before it is decoded.
    pub max_pixels: u64,
    /// Decode threads (0 = all cores).
    pub threads: usize,
    /// Validation samples used by the periodic quick evaluation.
    pub val_samples: usize,
    /// Training augmentation (`[data.augment]`, keys of `AugmentConfig`); absent: the preset's.
    pub augment: Option<medvlp_data::image::preprocess::AugmentConfig>,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            manifest: None,
            root: None,
            image_only: None,
            text_only: None,
            batch_size: 32,
            image_only_rate: 0.0,
            text_only_rate: 0.0,
            sentence_shuffle: 0.0,
            sentence_sample: 0.0,
            max_bad_fraction: 0.01,
            max_pixels: medvlp_data::image::DEFAULT_MAX_PIXELS,
            threads: 0,
            val_samples: 256,
            augment: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub method: String,
    #[serde(default)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`); see
    /// `medvlp_model::runtime::device`.
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainConfig,
    /// Missing keys take the method's published defaults.
    #[serde(default)]
    pub objectives: Option<ObjectiveConfig>,
}

fn default_device() -> String {
    "cpu".into()
}

/// Parse `value` as TOML (number, bool, array, quoted string), or take it as a bare string.
fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// A recipe's default objectives with the `objectives.*` entries of `overrides` applied (other
/// sections' entries, e.g. an ablation's `data.*` rates, are left out).
pub fn objectives_with(
    m: &dyn crate::recipe::Method,
    overrides: &[&str],
) -> Result<ObjectiveConfig> {
    let mut t = toml::Table::new();
    t.insert("objectives".into(), toml::Value::Table(toml::Table::try_from(m.defaults())?));
    let ov: Vec<String> =
        overrides.iter().filter(|o| o.starts_with("objectives.")).map(|o| o.to_string()).collect();
    apply_overrides(&mut t, &ov)?;
    let cfg: ObjectiveConfig = t["objectives"]
        .clone()
        .try_into()
        .with_context(|| format!("recipe '{}': overrides {}", m.name(), ov.join(" ")))?;
    Ok(cfg)
}

/// Apply `a.b.c=value` overrides to a TOML table.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<()> {
    for o in overrides {
        let (key, raw) =
            o.split_once('=').with_context(|| format!("override '{o}' is not key=value"))?;
        let parts: Vec<&str> = key.trim().split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            bail!("override '{o}': empty key segment");
        }
        let mut t = &mut *table;
        for p in &parts[..parts.len() - 1] {
            let entry =
                t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            t = entry
                .as_table_mut()
                .with_context(|| format!("override '{o}': '{p}' is not a table"))?;
        }
        t.insert(parts[parts.len() - 1].to_string(), parse_value(raw.trim()));
    }
    Ok(())
}

impl RunConfig {
    /// Load a config file, apply overrides, fill the recipe's objective defaults, validate. An
    /// `[objectives]` key the recipe does not read is an error naming the recipe, the key and
    /// where it was set. Returns the config and its resolved TOML, whose `[objectives]` lists the
    /// recipe's keys only.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<(Self, String)> {
        let mut table: toml::Table = match path {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .parse()
                .with_context(|| format!("parsing {}", p.display()))?,
            None => toml::Table::new(),
        };
        apply_overrides(&mut table, overrides)?;
        let file =
            path.map(|p| p.display().to_string()).unwrap_or_else(|| "the command line".into());
        // Which source set a key: the last override naming it, else the file.
        let source = |key: &str| {
            overrides
                .iter()
                .rev()
                .find(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == key))
                .map(|o| format!("the override '{o}'"))
                .unwrap_or_else(|| file.clone())
        };
        let name = table
            .get("method")
            .and_then(|m| m.as_str())
            .with_context(|| {
                format!("{file}: the config names no method (method = \"xlip\" | \"mcr\" | ...)")
            })?
            .to_string();
        let m = recipe(&name).with_context(|| format!("method in {}", source("method")))?;
        // Objectives: the recipe's defaults, overlaid with what the file and flags set.
        let mut obj = toml::Table::try_from(m.defaults())?;
        match table.get("objectives") {
            None => {}
            Some(toml::Value::Table(user)) => {
                for (k, v) in user {
                    if !m.keys().contains(&k.as_str()) {
                        bail!(
                            "{}: recipe '{name}' does not use objectives.{k} (its keys: {})",
                            source(&format!("objectives.{k}")),
                            m.keys().join(", ")
                        );
                    }
                    obj.insert(k.clone(), v.clone());
                }
            }
            Some(_) => bail!("{}: objectives must be a table", source("objectives")),
        }
        table.insert("objectives".into(), toml::Value::Table(obj));
        let cfg: RunConfig = table.clone().try_into().with_context(|| {
            let set: Vec<String> = overrides.iter().map(|o| format!("'{o}'")).collect();
            if set.is_empty() {
                format!("invalid configuration in {file}")
            } else {
                format!("invalid configuration in {file} with the overrides {}", set.join(" "))
            }
        })?;
        cfg.validate().map_err(|e| match e.downcast_ref::<BadValue>() {
            Some(b) => {
                let from = source(&b.key);
                e.context(format!("in {from}"))
            }
            None => e,
        })?;
        let mut resolved = toml::Table::try_from(&cfg)?;
        resolved.insert("objectives".into(), toml::Value::Table(cfg.objectives_table()?));
        Ok((cfg, toml::to_string_pretty(&resolved)?))
    }

    pub fn objectives(&self) -> ObjectiveConfig {
        self.objectives
            .clone()
            .unwrap_or_else(|| recipe(&self.method).map(|m| m.defaults()).unwrap_or_default())
    }

    /// The objective settings the recipe reads, by key (what the run folder and model record).
    pub fn objectives_table(&self) -> Result<toml::Table> {
        let m = recipe(&self.method)?;
        let mut t = toml::Table::try_from(self.objectives())?;
        t.retain(|k, _| {
            let k: &str = k;
            m.keys().contains(&k)
        });
        Ok(t)
    }

    /// Every numeric key's valid range, checked in one place ([`RANGES`] documents them); then the
    /// combinations of keys. An out-of-range value is a [`BadValue`] naming the key.
    pub fn validate(&self) -> Result<()> {
        let o = self.objectives();
        let (t, d, opt) = (&self.train, &self.data, &self.train.optimizer);
        let values: [(&str, f64); 31] = [
            ("objectives.itc", o.itc),
            ("objectives.unpaired", o.unpaired),
            ("objectives.mim", o.mim),
            ("objectives.mlm", o.mlm),
            ("objectives.local", o.local),
            ("objectives.itm", o.itm),
            ("objectives.mask_ratio", o.mask_ratio),
            ("objectives.att_ratio", o.att_ratio),
            ("objectives.text_mask_ratio", o.text_mask_ratio),
            ("objectives.entity_min_ratio", o.entity_min_ratio),
            ("objectives.entity_max_ratio", o.entity_max_ratio),
            ("objectives.local_tau", o.local_tau),
            ("objectives.aux_fraction", o.aux_fraction),
            ("train.optimizer.lr", opt.lr),
            ("train.optimizer.beta1", opt.beta1),
            ("train.optimizer.beta2", opt.beta2),
            ("train.optimizer.eps", opt.eps),
            ("train.optimizer.weight_decay", opt.weight_decay),
            ("train.optimizer.grad_clip", opt.grad_clip),
            ("train.min_lr_ratio", t.min_lr_ratio),
            ("train.max_minutes", t.max_minutes),
            ("train.budget_minutes", t.budget_minutes),
            ("train.grad_accum", t.grad_accum as f64),
            ("data.batch_size", d.batch_size as f64),
            ("data.image_only_rate", d.image_only_rate),
            ("data.text_only_rate", d.text_only_rate),
            ("data.sentence_shuffle", d.sentence_shuffle),
            ("data.sentence_sample", d.sentence_sample),
            ("data.max_bad_fraction", d.max_bad_fraction),
            ("data.val_samples", d.val_samples as f64),
            ("data.max_pixels", d.max_pixels as f64),
        ];
        for (key, v) in values {
            let (_, range) = RANGES.iter().find(|(k, _)| *k == key).expect("every key has a range");
            if !range.contains(v) {
                return Err(BadValue { key: key.into(), value: v, range: range.describe() }.into());
            }
        }
        for (k, m) in &opt.lr_multipliers {
            if !(m.is_finite() && *m >= 0.0) {
                return Err(BadValue {
                    key: format!("train.optimizer.lr_multipliers.{k}"),
                    value: *m,
                    range: "a finite number >= 0".into(),
                }
                .into());
            }
        }
        if o.entity_min_ratio > o.entity_max_ratio {
            bail!(
                "objectives.entity_min_ratio ({}) cannot exceed objectives.entity_max_ratio ({})",
                o.entity_min_ratio,
                o.entity_max_ratio
            );
        }
        if o.att_ratio > o.mask_ratio {
            bail!(
                "objectives.att_ratio ({}) cannot exceed objectives.mask_ratio ({})",
                o.att_ratio,
                o.mask_ratio
            );
        }
        recipe(&self.method)?.validate(&o)?;
        if let Some(a) = &self.data.augment {
            a.validate().context("data.augment")?;
        }
        // train.steps = 0 is allowed: the run writes the initialised model (e.g. after importing
        // Hugging Face weights) as `final/`, a random-init baseline.
        Ok(())
    }
}

/// A valid range of a numeric key.
#[derive(Clone, Copy, Debug)]
pub enum Range {
    /// `[lo, hi]`.
    Closed(f64, f64),
    /// `[lo, hi)`.
    ClosedOpen(f64, f64),
    /// `(lo, hi]`.
    OpenClosed(f64, f64),
    /// Finite and `> lo`.
    Above(f64),
    /// Finite and `>= lo`.
    AtLeast(f64),
}

impl Range {
    pub fn contains(&self, v: f64) -> bool {
        v.is_finite()
            && match *self {
                Range::Closed(lo, hi) => v >= lo && v <= hi,
                Range::ClosedOpen(lo, hi) => v >= lo && v < hi,
                Range::OpenClosed(lo, hi) => v > lo && v <= hi,
                Range::Above(lo) => v > lo,
                Range::AtLeast(lo) => v >= lo,
            }
    }

    pub fn describe(&self) -> String {
        match *self {
            Range::Closed(lo, hi) => format!("in [{lo}, {hi}]"),
            Range::ClosedOpen(lo, hi) => format!("in [{lo}, {hi})"),
            Range::OpenClosed(lo, hi) => format!("in ({lo}, {hi}]"),
            Range::Above(lo) => format!("a finite number > {lo}"),
            Range::AtLeast(lo) => format!("a finite number >= {lo}"),
        }
    }
}

/// The valid range of every numeric key of a run config (integer keys whose type already bounds
/// them, such as `train.steps`, are not listed).
pub const RANGES: [(&str, Range); 31] = [
    ("objectives.itc", Range::AtLeast(0.0)),
    ("objectives.unpaired", Range::AtLeast(0.0)),
    ("objectives.mim", Range::AtLeast(0.0)),
    ("objectives.mlm", Range::AtLeast(0.0)),
    ("objectives.local", Range::AtLeast(0.0)),
    ("objectives.itm", Range::AtLeast(0.0)),
    ("objectives.mask_ratio", Range::ClosedOpen(0.0, 1.0)),
    ("objectives.att_ratio", Range::ClosedOpen(0.0, 1.0)),
    ("objectives.text_mask_ratio", Range::ClosedOpen(0.0, 1.0)),
    ("objectives.entity_min_ratio", Range::ClosedOpen(0.0, 1.0)),
    ("objectives.entity_max_ratio", Range::OpenClosed(0.0, 1.0)),
    ("objectives.local_tau", Range::Above(0.0)),
    ("objectives.aux_fraction", Range::OpenClosed(0.0, 1.0)),
    ("train.optimizer.lr", Range::Above(0.0)),
    ("train.optimizer.beta1", Range::ClosedOpen(0.0, 1.0)),
    ("train.optimizer.beta2", Range::ClosedOpen(0.0, 1.0)),
    ("train.optimizer.eps", Range::Above(0.0)),
    ("train.optimizer.weight_decay", Range::AtLeast(0.0)),
    ("train.optimizer.grad_clip", Range::AtLeast(0.0)),
    ("train.min_lr_ratio", Range::Closed(0.0, 1.0)),
    ("train.max_minutes", Range::AtLeast(0.0)),
    ("train.budget_minutes", Range::AtLeast(0.0)),
    ("train.grad_accum", Range::AtLeast(1.0)),
    // Contrastive learning needs negatives.
    ("data.batch_size", Range::AtLeast(2.0)),
    ("data.image_only_rate", Range::Closed(0.0, 1.0)),
    ("data.text_only_rate", Range::Closed(0.0, 1.0)),
    ("data.sentence_shuffle", Range::Closed(0.0, 1.0)),
    ("data.sentence_sample", Range::Closed(0.0, 1.0)),
    ("data.max_bad_fraction", Range::Closed(0.0, 1.0)),
    ("data.val_samples", Range::AtLeast(1.0)),
    ("data.max_pixels", Range::AtLeast(1.0)),
];

/// A config value outside its key's range.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {value} must be {range}")]
pub struct BadValue {
    pub key: String,
    pub value: f64,
    pub range: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for m in crate::recipe::recipes() {
            for (size, text) in m.configs() {
                let p = dir.join(format!("{}-{size}.toml", m.name()));
                assert_eq!(&std::fs::read_to_string(&p).unwrap(), text, "{}", p.display());
                let (c, _) = RunConfig::load(Some(&p), &[])
                    .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                assert_eq!(c.method, m.name());
                assert_eq!(&c.model.preset, size);
                n += 1;
            }
        }
        // Every file in configs/ belongs to a recipe.
        assert_eq!(n, std::fs::read_dir(&dir).unwrap().count());
    }

    #[test]
    fn overrides_and_method_defaults() {
        let dir = std::env::temp_dir().join(format!("medvlp-rc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(&p, "method = \"xlip\"\n[train]\nsteps = 10\n[objectives]\nmim = 0.5\n")
            .unwrap();
        let (c, resolved) = RunConfig::load(
            Some(&p),
            &[
                "train.steps=20".into(),
                "seed=3".into(),
                "data.manifest=/x/m.jsonl".into(),
                "objectives.mim_masking=random".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.steps, 20);
        assert_eq!(c.seed, 3);
        assert_eq!(c.data.manifest.as_deref(), Some(Path::new("/x/m.jsonl")));
        let o = c.objectives();
        assert_eq!(o.mim, 0.5);
        assert_eq!(o.mim_masking, crate::recipe::MimMasking::Random);
        assert_eq!(o.mlm_masking, crate::recipe::MlmMasking::Entity, "xlip default kept");
        // The resolved config lists the recipe's keys only, and loads back to the same config.
        let rp = dir.join("resolved.toml");
        std::fs::write(&rp, &resolved).unwrap();
        let (again, resolved2) = RunConfig::load(Some(&rp), &[]).unwrap();
        assert_eq!(again, c);
        assert_eq!(resolved2, resolved);
        let table: toml::Table = resolved.parse().unwrap();
        let keys: Vec<&String> = table["objectives"].as_table().unwrap().keys().collect();
        let xlip = crate::recipe::recipe("xlip").unwrap();
        assert_eq!(keys.len(), xlip.keys().len());
        assert!(!resolved.contains("memory_query") && !resolved.contains("local_tau"));
        // Unknown keys and bad values are errors naming the problem.
        let e = RunConfig::load(Some(&p), &["train.stepz=3".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("stepz"), "{e:#}");
        let e = RunConfig::load(Some(&p), &["objectives.mask_ratio=1.5".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("mask_ratio"));
        let e = RunConfig::load(Some(&p), &["objectives.aux_fraction=0".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("aux_fraction"));
        // Training augmentation: a partial table keeps the other defaults; bad ranges are named.
        let (c, _) = RunConfig::load(Some(&p), &["data.augment.rotation_deg=3".into()]).unwrap();
        let a = c.data.augment.expect("augment set");
        assert_eq!(a.rotation_deg, 3.0);
        assert_eq!(a.rrc_scale, medvlp_data::image::preprocess::AugmentConfig::default().rrc_scale);
        assert!(!a.hflip);
        let e =
            RunConfig::load(Some(&p), &["data.augment.rrc_scale=[0.9, 0.5]".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("rrc_scale"), "{e:#}");
        let e = RunConfig::load(Some(&p), &["method=nope".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("nope"));
        // Weights are finite and non-negative.
        let e = RunConfig::load(Some(&p), &["objectives.mim=-1".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("objectives.mim"), "{e:#}");
        // Out-of-range values name the key, its range and the override that set them.
        for (ov, key) in [
            ("train.optimizer.lr=-1", "train.optimizer.lr"),
            ("train.optimizer.lr=nan", "train.optimizer.lr"),
            ("data.image_only_rate=-0.5", "data.image_only_rate"),
            ("data.sentence_shuffle=1.5", "data.sentence_shuffle"),
            ("data.max_bad_fraction=2", "data.max_bad_fraction"),
            ("train.optimizer.beta2=1", "train.optimizer.beta2"),
        ] {
            let e = format!("{:#}", RunConfig::load(Some(&p), &[ov.into()]).unwrap_err());
            assert!(e.contains(&format!("the override '{ov}'")) && e.contains(key), "{e}");
            assert!(e.contains("must be"), "{e}");
        }
        // ... or the file.
        let q = dir.join("lr.toml");
        std::fs::write(&q, "method = \"clip\"\n[train.optimizer]\nlr = -0.1\n").unwrap();
        let e = format!("{:#}", RunConfig::load(Some(&q), &[]).unwrap_err());
        assert!(e.contains(&q.display().to_string()) && e.contains("train.optimizer.lr"), "{e}");
    }

    #[test]
    fn a_key_the_recipe_does_not_read_is_refused_naming_its_source() {
        let dir = std::env::temp_dir().join(format!("medvlp-rc-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("mcr.toml");
        std::fs::write(&p, "method = \"mcr\"\n[objectives]\nlocal = 0.5\n").unwrap();
        RunConfig::load(Some(&p), &[]).unwrap();
        // From an override: the override is named, with the recipe and the key.
        let e = RunConfig::load(Some(&p), &["objectives.mim_masking=attention".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'objectives.mim_masking=attention'"), "{e}");
        assert!(e.contains("recipe 'mcr'") && e.contains("objectives.mim_masking"), "{e}");
        // From the file: the file is named.
        std::fs::write(&p, "method = \"xlip\"\n[objectives]\nlocal = 0.5\n").unwrap();
        let e = RunConfig::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains("objectives.local"), "{e}");
        assert!(e.contains("recipe 'xlip'"), "{e}");
        // A combination the recipe cannot train (AttMIM needs a text-conditioned decoder).
        std::fs::write(&p, "method = \"xlip\"\n").unwrap();
        let e = RunConfig::load(Some(&p), &["objectives.mim_text_conditioned=false".into()])
            .unwrap_err();
        assert!(format!("{e:#}").contains("mim_text_conditioned"), "{e:#}");
        RunConfig::load(
            Some(&p),
            &[
                "objectives.mim_text_conditioned=false".into(),
                "objectives.mim_masking=random".into(),
            ],
        )
        .unwrap();
    }
}
