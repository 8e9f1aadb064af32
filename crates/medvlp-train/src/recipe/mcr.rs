//! MCR (Wei, Jin, Zhou, "Masked Contrastive Reconstruction for Cross-modal Medical Image-Report
//! Retrieval", arXiv 2312.15840): masked inputs are the only stream. One pass over the masked image (visible patches) and one
//! over the masked report serve the contrastive loss, the local alignment (mapping before
//! aggregation) and both reconstructions. `stream = "dual"` adds unmasked passes for the
//! contrastive and local terms (the usual design), for the memory/time/retrieval comparison.

use super::steps::{
    itc, local, mask_text, mim, mlm, mlm_targets, narrow_rows, patch_mask, row_rngs, Terms,
};
use super::{Ablation, Batch, Method, MethodLoss, MimMasking, MlmMasking, ObjectiveConfig, Stream};
use crate::objectives::local::Aggregation;
use anyhow::{Context, Result};
use medvlp_model::{MedVlp, ModelConfig};

pub struct Mcr;

impl Method for Mcr {
    fn name(&self) -> &'static str {
        "mcr"
    }

    fn paper(&self) -> &'static str {
        "MCR, arXiv 2312.15840"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "itc",
            "mim",
            "mask_ratio",
            "mim_text_conditioned",
            "norm_pix",
            "mlm",
            "mlm_replace",
            "text_mask_ratio",
            "local",
            "aggregation",
            "local_tau",
            "stream",
        ]
    }

    fn ablations(&self) -> &'static [Ablation] {
        &[
            Ablation { label: "dual stream", overrides: &["objectives.stream=dual"] },
            Ablation {
                label: "aggregate-then-map",
                overrides: &["objectives.aggregation=aggregate_then_map"],
            },
        ]
    }

    fn configs(&self) -> &'static [(&'static str, &'static str)] {
        shipped_configs!("mcr")
    }

    fn defaults(&self) -> ObjectiveConfig {
        ObjectiveConfig {
            itc: 1.0,
            unpaired: 0.0,
            mim: 1.0,
            mim_masking: MimMasking::Random,
            mask_ratio: 0.5,
            mim_text_conditioned: false,
            mlm: 1.0,
            mlm_masking: MlmMasking::WholeWord,
            text_mask_ratio: 0.3,
            local: 1.0,
            aggregation: Aggregation::MapThenAggregate,
            stream: Stream::Single,
            ..Default::default()
        }
    }

    fn adapt_model(&self, cfg: &ObjectiveConfig, m: &mut ModelConfig) {
        if let Some(d) = m.decoder_config.as_mut() {
            d.cross_attention = cfg.mim_text_conditioned;
        }
        m.local_projection = cfg.local > 0.0;
        m.memory_config = None;
        m.itm_head = false;
    }

    fn loss(
        &self,
        model: &MedVlp,
        batch: &Batch,
        cfg: &ObjectiveConfig,
        seed: u64,
    ) -> Result<MethodLoss> {
        let px = batch.pixels.as_ref().context("mcr needs images")?;
        let n = batch.n_images();
        let rows = 0..n;
        let text_mask = narrow_rows(&batch.text.mask, &rows)?;
        let pm = patch_mask(
            model,
            cfg,
            MimMasking::Random,
            None,
            None,
            n,
            &mut row_rngs(seed, 1, batch),
        )?;
        let mt = mask_text(
            model,
            &batch.text,
            MlmMasking::WholeWord,
            cfg,
            &mut row_rngs(seed, 2, batch),
        )?;
        // The masked pass: the only pass in single-stream mode.
        let latent = model.image_features_masked(px, &pm)?;
        let need_cls = cfg.local > 0.0;
        let (txt_m, cls_m) = model.text_features_with_cls_attention(
            &narrow_rows(&mt.ids, &rows)?,
            &text_mask,
            need_cls && cfg.stream == Stream::Single,
        )?;
        let mut t = Terms::default();
        match cfg.stream {
            Stream::Single => {
                t.add("itc", cfg.itc, itc(model, &latent, &txt_m, &text_mask, batch.n_paired)?)?;
                if cfg.local > 0.0 {
                    t.add(
                        "local",
                        cfg.local,
                        Some(local(
                            model,
                            cfg,
                            &batch.text,
                            &txt_m,
                            cls_m.as_ref(),
                            &latent,
                            Some(&mt.masked),
                        )?),
                    )?;
                }
            }
            Stream::Dual => {
                let img = model.image_features(px)?;
                let (txt, cls) = model.text_features_with_cls_attention(
                    &narrow_rows(&batch.text.ids, &rows)?,
                    &text_mask,
                    need_cls,
                )?;
                t.add("itc", cfg.itc, itc(model, &img, &txt, &batch.text.mask, batch.n_paired)?)?;
                if cfg.local > 0.0 {
                    t.add(
                        "local",
                        cfg.local,
                        Some(local(model, cfg, &batch.text, &txt, cls.as_ref(), &img, None)?),
                    )?;
                }
            }
        }
        if cfg.mim > 0.0 {
            t.add(
                "mim",
                cfg.mim,
                Some(mim(model, cfg, px, &pm, &latent, Some((&txt_m, &text_mask)))?),
            )?;
        }
        if cfg.mlm > 0.0 {
            let (pos, lab) = mlm_targets(&batch.text, &mt, rows)?;
            t.add("mlm", cfg.mlm, mlm(model, &txt_m, &text_mask, Some(&latent), pos, lab)?)?;
        }
        t.finish()
    }
}
