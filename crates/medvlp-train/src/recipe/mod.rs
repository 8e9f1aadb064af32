//! Pre-training methods as recipes composed from the shared objectives.
//!
//! A recipe is one file implementing [`Method`] (which objectives run on which stream) plus a
//! config preset. Every objective and weight is a key of [`ObjectiveConfig`], so each paper's
//! ablation is one flag (`objectives.mim_masking = "random"`, `objectives.stream = "dual"`, ...).

pub mod batch;
pub mod clip;
pub mod mae_mlm;
pub mod mcr;
pub mod mpma;
pub mod steps;
pub mod xlip;

pub use batch::{Batch, TextBatch};

use crate::objectives::attmim::PatchScore;
use crate::objectives::local::Aggregation;
use anyhow::Result;
use candle_core::Tensor;
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// One masked pass per modality serves every objective (MCR).
    Single,
    /// An unmasked pass for the contrastive/local terms plus a masked pass for reconstruction.
    Dual,
}

/// Objective weights and settings. Defaults are XLIP's; each method's preset overrides them.
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
            aux_fraction: 1.0,
        }
    }
}

/// The loss of one batch and its named parts.
pub struct MethodLoss {
    pub loss: Tensor,
    pub parts: Vec<(String, f64)>,
}

/// A pre-training method: which objectives run on which stream.
pub trait Method: Send + Sync {
    fn name(&self) -> &'static str;
    /// Objective settings of the method's published recipe.
    fn defaults(&self) -> ObjectiveConfig;
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

/// All methods by name.
pub fn method(name: &str) -> Result<Box<dyn Method>> {
    Ok(match name {
        "clip" => Box::new(clip::Clip),
        "mae-mlm" => Box::new(mae_mlm::MaeMlm),
        "xlip" => Box::new(xlip::Xlip),
        "mcr" => Box::new(mcr::Mcr),
        "mpma" => Box::new(mpma::Mpma),
        _ => anyhow::bail!("unknown method '{name}' (clip, mae-mlm, xlip, mcr, mpma)"),
    })
}

pub const METHODS: [&str; 5] = ["clip", "mae-mlm", "xlip", "mcr", "mpma"];
