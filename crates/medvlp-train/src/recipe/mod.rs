//! Pre-training methods as recipes composed from the shared objectives.
//!
//! A recipe is one file implementing [`Method`] plus its configs (`configs/<name>-<preset>.toml`,
//! embedded by the recipe itself). The recipe declares everything the rest of the program needs:
//! the paper it implements, the objective keys it reads (a config setting any other key is
//! refused), their defaults, its ablations and its shipped configs. The [`registry`] holds every
//! recipe; the CLI's errors, `medvlp compare`'s defaults and ablations, the quickstart's configs
//! and the tests all read it, so adding a method is one file here (plus one line in
//! [`registry::BUILT_IN`]) and its configs; `register` adds one at run time.

/// The `tiny`, `small` and `base` configs of a recipe, `configs/<name>-<preset>.toml`, embedded so
/// that the binary works from any directory.
macro_rules! shipped_configs {
    ($name:literal) => {
        &[
            ("tiny", include_str!(concat!("../../../../configs/", $name, "-tiny.toml"))),
            ("small", include_str!(concat!("../../../../configs/", $name, "-small.toml"))),
            ("base", include_str!(concat!("../../../../configs/", $name, "-base.toml"))),
        ]
    };
}

pub mod batch;
pub mod clip;
pub mod mae_mlm;
pub mod mcr;
pub mod mpma;
pub mod registry;
pub mod steps;
pub mod xlip;

pub use batch::{Batch, TextBatch};
pub use registry::{recipe, recipes, register, shipped_config, variants, Variant};

use crate::objectives::attmim::PatchScore;
use crate::objectives::local::Aggregation;
use anyhow::Result;
use candle_core::Tensor;
use medvlp_model::config::MemoryQuery;
use medvlp_model::MedVlp;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MimMasking {
    Random,
    Attention,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlmMasking {
    WholeWord,
    Entity,
}

/// What a token selected for MLM becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlmReplace {
    /// BERT's 80/10/10: [MASK] 80% of the time, a random vocabulary token 10%, unchanged 10% (the
    /// convention the seeds' text encoders were pre-trained with).
    Bert,
    /// Always [MASK].
    Mask,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// One masked pass per modality serves every objective (MCR).
    Single,
    /// An unmasked pass for the contrastive/local terms plus a masked pass for reconstruction.
    Dual,
}

/// Objective weights and settings: the union of every recipe's keys. Each recipe declares the keys
/// it reads ([`Method::keys`]) and its defaults ([`Method::defaults`]); a config that sets a key the
/// chosen recipe does not read is refused. The `Default` values are XLIP's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// Global image-report contrastive loss.
    pub itc: f64,
    /// Soft-label contrastive loss of image-only pseudo-pairs (disease-kind prompts, XLIP).
    pub unpaired: f64,
    pub mim: f64,
    pub mim_masking: MimMasking,
    /// Share of patches hidden from the encoder.
    pub mask_ratio: f64,
    /// AttMIM: share of patches masked by attention score (the rest of the budget is random).
    pub att_ratio: f64,
    pub patch_score: PatchScore,
    /// The MAE decoder cross-attends to the report.
    pub mim_text_conditioned: bool,
    pub norm_pix: bool,
    pub mlm: f64,
    pub mlm_masking: MlmMasking,
    /// What a selected token becomes (BERT's 80/10/10 or always [MASK]).
    pub mlm_replace: MlmReplace,
    /// Whole-word masking ratio (random MLM, MCR, MPMA).
    pub text_mask_ratio: f64,
    pub entity_max_ratio: f64,
    pub entity_min_ratio: f64,
    /// Local word<->patch alignment.
    pub local: f64,
    pub aggregation: Aggregation,
    pub local_tau: f64,
    pub itm: f64,
    pub stream: Stream,
    /// MPMA: mask image and report in the same pass (false: one modality per pass, M3AE).
    pub paired_masking: bool,
    /// MPMA: memory-augmented cross-modal fusion (MA-CMF) on/off.
    pub memory: bool,
    /// MPMA: which tokens read the MA-CMF memory (text, the method spec; image, the earlier design).
    pub memory_query: MemoryQuery,
    /// XLIP: share of the batch's paired, image-only and text-only rows that the reconstruction
    /// terms (AttMIM, EntMLM) run on; the contrastive terms always see every row. 1.0 is the
    /// paper's recipe; less buys step time on a small compute budget.
    pub aux_fraction: f64,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            itc: 1.0,
            unpaired: 1.0,
            mim: 1.0,
            mim_masking: MimMasking::Attention,
            mask_ratio: 0.75,
            att_ratio: 0.375,
            patch_score: PatchScore::Norm,
            mim_text_conditioned: true,
            norm_pix: true,
            mlm: 1.0,
            mlm_masking: MlmMasking::Entity,
            mlm_replace: MlmReplace::Bert,
            text_mask_ratio: 0.15,
            entity_max_ratio: 0.5,
            entity_min_ratio: 0.15,
            local: 0.0,
            aggregation: Aggregation::MapThenAggregate,
            local_tau: 0.1,
            itm: 0.0,
            stream: Stream::Dual,
            paired_masking: true,
            memory: true,
            memory_query: MemoryQuery::Text,
            aux_fraction: 1.0,
        }
    }
}

/// The loss of one batch and its named parts (detached scalars, still on the device: reading them
/// inside the forward pass would make a GPU wait before the backward pass is queued).
pub struct MethodLoss {
    pub loss: Tensor,
    pub parts: Vec<(String, Tensor)>,
}

impl MethodLoss {
    /// The parts' values, read from the device in one transfer.
    pub fn part_values(&self) -> candle_core::Result<Vec<(String, f64)>> {
        part_values(&self.parts)
    }
}

/// Values of named scalar tensors, read in one transfer.
pub fn part_values(parts: &[(String, Tensor)]) -> candle_core::Result<Vec<(String, f64)>> {
    if parts.is_empty() {
        return Ok(vec![]);
    }
    let all: Vec<Tensor> = parts
        .iter()
        .map(|(_, t)| t.to_dtype(candle_core::DType::F64)?.reshape(1))
        .collect::<candle_core::Result<_>>()?;
    let v = Tensor::cat(&all, 0)?.to_vec1::<f64>()?;
    Ok(parts.iter().map(|(n, _)| n.clone()).zip(v).collect())
}

/// A named variant of a recipe: config overrides (`objectives.*`, `data.*`) that switch one of the
/// paper's components off or to its baseline.
#[derive(Clone, Copy, Debug)]
pub struct Ablation {
    /// Short label, e.g. "random MIM"; tables show it as "<recipe>, <label>".
    pub label: &'static str,
    pub overrides: &'static [&'static str],
}

/// A pre-training method: which objectives run on which stream, and what it declares about itself.
pub trait Method: Send + Sync {
    fn name(&self) -> &'static str;
    /// The paper the recipe implements ("arXiv 2407.19546", ...), or what it is a baseline of.
    fn paper(&self) -> &'static str;
    /// The `[objectives]` keys the recipe reads; a config setting any other key is refused.
    fn keys(&self) -> &'static [&'static str];
    /// Objective settings of the method's published recipe.
    fn defaults(&self) -> ObjectiveConfig;
    /// The paper's ablations, each a set of config overrides.
    fn ablations(&self) -> &'static [Ablation] {
        &[]
    }
    /// The shipped configs: (preset, TOML text), e.g. `("tiny", include_str!(...))`.
    fn configs(&self) -> &'static [(&'static str, &'static str)];
    /// Checks of combinations of the recipe's keys (ranges are checked for every recipe).
    fn validate(&self, _cfg: &ObjectiveConfig) -> Result<()> {
        Ok(())
    }
    /// What the model must carry (fusion, decoder, local heads, memory, ITM head).
    fn adapt_model(&self, cfg: &ObjectiveConfig, model: &mut medvlp_model::ModelConfig);
    /// `seed` drives every random choice (masks, negatives) of this batch.
    fn loss(
        &self,
        model: &MedVlp,
        batch: &Batch,
        cfg: &ObjectiveConfig,
        seed: u64,
    ) -> Result<MethodLoss>;
}
