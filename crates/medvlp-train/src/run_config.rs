//! The TOML configuration of a training run, with dotted-key overrides from the command line
//! (`train.steps=100 data.manifest=/data/mimic.jsonl objectives.mim_masking=random`). The resolved
//! configuration (defaults, file, overrides) is saved in the run folder.

use crate::recipe::{method, ObjectiveConfig};
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
    pub max_bad_fraction: f64,
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
            max_bad_fraction: 0.01,
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
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
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

/// The candle device a config names.
pub fn device(name: &str) -> Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = n
                .strip_prefix("cuda:")
                .map(|o| o.parse::<usize>())
                .transpose()
                .with_context(|| format!("bad device '{n}'"))?
                .unwrap_or(0);
            candle_core::Device::new_cuda(ordinal).with_context(|| {
                format!(
                    "device '{n}': is this a build with --features cuda on a machine with a GPU?"
                )
            })
        }
        n => bail!("unknown device '{n}' (cpu, cuda, cuda:N)"),
    }
}

/// Parse `value` as TOML (number, bool, array, quoted string), or take it as a bare string.
fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
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
    /// Load a config file, apply overrides, fill the method's objective defaults, validate.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<(Self, String)> {
        let mut table: toml::Table = match path {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .parse()
                .with_context(|| format!("parsing {}", p.display()))?,
            None => toml::Table::new(),
        };
        apply_overrides(&mut table, overrides)?;
        let name = table
            .get("method")
            .and_then(|m| m.as_str())
            .context("the config names no method (method = \"xlip\" | \"mcr\" | ...)")?
            .to_string();
        // Objectives: the method's defaults, overlaid with what the file and flags set.
        let mut obj = toml::Table::try_from(method(&name)?.defaults())?;
        if let Some(user) = table.get("objectives").and_then(|v| v.as_table()) {
            for (k, v) in user {
                obj.insert(k.clone(), v.clone());
            }
        }
        table.insert("objectives".into(), toml::Value::Table(obj));
        let where_ =
            path.map(|p| p.display().to_string()).unwrap_or_else(|| "the command line".into());
        let cfg: RunConfig = table
            .clone()
            .try_into()
            .with_context(|| format!("invalid configuration in {where_}"))?;
        cfg.validate()?;
        let resolved = toml::to_string_pretty(&cfg)?;
        Ok((cfg, resolved))
    }

    pub fn objectives(&self) -> ObjectiveConfig {
        self.objectives.clone().unwrap_or_default()
    }

    pub fn validate(&self) -> Result<()> {
        let o = self.objectives();
        for (n, v) in [
            ("objectives.mask_ratio", o.mask_ratio),
            ("objectives.att_ratio", o.att_ratio),
            ("objectives.text_mask_ratio", o.text_mask_ratio),
        ] {
            if !(0.0..1.0).contains(&v) {
                bail!("{n} = {v} must be in [0, 1)");
            }
        }
        if !(o.aux_fraction > 0.0 && o.aux_fraction <= 1.0) {
            bail!("objectives.aux_fraction = {} must be in (0, 1]", o.aux_fraction);
        }
        if o.att_ratio > o.mask_ratio {
            bail!(
                "objectives.att_ratio ({}) cannot exceed objectives.mask_ratio ({})",
                o.att_ratio,
                o.mask_ratio
            );
        }
        if let Some(a) = &self.data.augment {
            a.validate().context("data.augment")?;
        }
        if self.data.batch_size < 2 {
            bail!("data.batch_size must be at least 2 (contrastive learning needs negatives)");
        }
        // train.steps = 0 is allowed: the run writes the initialised model (e.g. after importing
        // Hugging Face weights) as `final/`, a random-init baseline.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for m in crate::recipe::METHODS {
            for size in ["tiny", "small", "base"] {
                let p = dir.join(format!("{m}-{size}.toml"));
                let (c, _) = RunConfig::load(Some(&p), &[])
                    .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                assert_eq!(c.method, m);
                assert_eq!(c.model.preset, size);
                n += 1;
            }
        }
        assert_eq!(n, 15);
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
        // The resolved config round-trips.
        let again: RunConfig = toml::from_str(&resolved).unwrap();
        assert_eq!(again, c);
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
    }
}
