//! The options of one evaluation run: what `medvlp eval` reads from its flags and what
//! `medvlp quickstart` / `medvlp compare` set directly. Plain data, no command-line parsing here.

use crate::stats::BootstrapConfig;
use crate::zeroshot::PromptMode;
use medvlp_data::dataset::{Split, Study};
use medvlp_data::text::prompts::ZeroShotPrompts;
use std::path::PathBuf;

/// Which report text stands for a study (retrieval).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    /// The study's text for this field; `None` when it is missing or blank.
    pub fn of(self, s: &Study) -> Option<String> {
        let t = match self {
            TextField::Report => s.text.clone().or_else(|| s.findings_impression()),
            TextField::Impression => s.sections.get("impression").cloned(),
            TextField::Findings => s.sections.get("findings").cloned(),
        };
        t.filter(|t| !t.trim().is_empty())
    }
}

/// Options of the evaluation protocols (the model directory is passed separately, so that one set
/// of options evaluates several models).
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// JSONL manifest (`medvlp prepare` or `medvlp synth`).
    pub data: PathBuf,
    /// Image root for relative paths (`None`: the manifest's folder).
    pub root: Option<PathBuf>,
    /// The split evaluated (the probes and fine-tuning also use train and validate).
    pub split: Split,
    /// Zero-shot prompt file: a path or a shipped name (`medvlp prompts list`).
    pub prompts: String,
    /// Zero-shot prompt modes, in output order.
    pub modes: Vec<PromptMode>,
    /// Studies per class of the N-way zero-shot task (5x200 style).
    pub nway_per_class: usize,
    /// Label fractions of the linear probe and fine-tuning.
    pub fractions: Vec<f64>,
    /// Classes of the probes, fine-tuning and label-based retrieval (empty: the prompt file's).
    pub classes: Vec<String>,
    /// Retrieval candidate pool (`None`: the whole split).
    pub pool: Option<usize>,
    /// Report text used for retrieval.
    pub text_field: TextField,
    /// Bootstrap resamples for the 95% confidence intervals (0: none).
    pub bootstrap: usize,
    /// Seed of the bootstrap, label-fraction subsets, retrieval pools and fine-tuning.
    pub seed: u64,
    /// Embedding batch size.
    pub batch_size: usize,
    /// Fine-tuning epochs.
    pub epochs: usize,
    /// Embed with bf16 products (bf16 operands, f32 accumulation), as `medvlp embed --bf16`.
    pub bf16: bool,
    /// Output folder: `results.jsonl`, `summary.md`, plots.
    /// Device the model runs on: `cpu`, `cuda` or `cuda:N` (parsed by
    /// `medvlp_model::runtime::device`).
    pub device: String,
    pub out: PathBuf,
}

impl EvalOptions {
    /// The folder that relative image paths start from.
    pub fn image_root(&self) -> PathBuf {
        self.root
            .clone()
            .unwrap_or_else(|| self.data.parent().map(|p| p.to_path_buf()).unwrap_or_default())
    }

    /// The bootstrap of every reported interval; `None` when `bootstrap` is 0.
    pub fn bootstrap_config(&self) -> Option<BootstrapConfig> {
        (self.bootstrap > 0).then(|| BootstrapConfig {
            resamples: self.bootstrap,
            seed: self.seed,
            ..Default::default()
        })
    }

    /// The classes of the probes, fine-tuning and retrieval: `classes`, else the prompt file's.
    pub fn classes_or_prompts(&self, prompts: &ZeroShotPrompts) -> Vec<String> {
        if self.classes.is_empty() {
            prompts.class.iter().map(|k| k.name.clone()).collect()
        } else {
            self.classes.clone()
        }
    }
}

/// A split name as the datasets spell it (`train`, `val`, `validate`, `test`, ...).
pub fn parse_split(s: &str) -> anyhow::Result<Split> {
    Split::parse(s).ok_or_else(|| anyhow::anyhow!("unknown split {s:?} (train, validate, test)"))
}
