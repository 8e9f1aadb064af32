//! MPMA (Zhang et al., "Multi-task Paired Masking with Alignment Modeling for Medical
//! Vision-Language Pre-training", IEEE TMM 2024, arXiv 2305.07920): paired masking (image patches and report tokens masked in the same pass, reconstructed
//! jointly through the fusion module), global and local alignment (GLA) on the uni-modal features,
//! and memory-augmented cross-modal fusion (MA-CMF) feeding the report reconstruction; optional ITM.
//! `paired_masking = false` masks one modality per pass (M3AE), for the ablation.

use super::steps::{
    itc, local, mask_text, mim, mlm, mlm_targets, narrow_rows, patch_mask, rng, row_rngs, Terms,
};
use super::{Ablation, Batch, Method, MethodLoss, MimMasking, MlmMasking, ObjectiveConfig};
use crate::objectives::itm::itm_loss;
use anyhow::{Context, Result};
use medvlp_model::config::{MemoryConfig, MemoryQuery};
use medvlp_model::{MedVlp, ModelConfig};

pub struct Mpma;

impl Method for Mpma {
    fn name(&self) -> &'static str {
        "mpma"
    }

    fn paper(&self) -> &'static str {
        "MPMA, arXiv 2305.07920"
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
            "itm",
            "paired_masking",
            "memory",
            "memory_query",
        ]
    }

    fn ablations(&self) -> &'static [Ablation] {
        &[
            Ablation { label: "separate masking", overrides: &["objectives.paired_masking=false"] },
            Ablation { label: "no local alignment", overrides: &["objectives.local=0.0"] },
            Ablation { label: "no memory", overrides: &["objectives.memory=false"] },
        ]
    }

    fn configs(&self) -> &'static [(&'static str, &'static str)] {
        shipped_configs!("mpma")
    }

    fn defaults(&self) -> ObjectiveConfig {
        ObjectiveConfig {
            itc: 1.0,
            unpaired: 0.0,
            mim: 1.0,
            mim_masking: MimMasking::Random,
            mask_ratio: 0.75,
            mim_text_conditioned: true,
            mlm: 1.0,
            mlm_masking: MlmMasking::WholeWord,
            text_mask_ratio: 0.15,
            local: 1.0,
            itm: 0.0,
            paired_masking: true,
            memory: true,
            memory_query: MemoryQuery::Text,
            ..Default::default()
        }
    }

    fn adapt_model(&self, cfg: &ObjectiveConfig, m: &mut ModelConfig) {
        if let Some(d) = m.decoder_config.as_mut() {
            d.cross_attention = cfg.mim_text_conditioned;
        }
        m.local_projection = cfg.local > 0.0;
        m.itm_head = cfg.itm > 0.0;
        if !cfg.memory {
            m.memory_config = None;
        } else if m.memory_config.is_none() {
            // MA-CMF defaults: 2048 slots (fewer for tiny widths), top-32, every fusion layer.
            let width = m.text_config.hidden_size;
            let slots = if width < 128 { 64 } else { 2048 };
            let heads = m.fusion_config.as_ref().map(|f| f.num_attention_heads).unwrap_or(1);
            m.memory_config = Some(MemoryConfig {
                slots,
                top_k: 32.min(slots),
                num_heads: heads,
                layers: vec![],
                query: cfg.memory_query,
            });
        }
    }

    fn loss(
        &self,
        model: &MedVlp,
        batch: &Batch,
        cfg: &ObjectiveConfig,
        seed: u64,
    ) -> Result<MethodLoss> {
        let px = batch.pixels.as_ref().context("mpma needs images")?;
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
        let latent = model.image_features_masked(px, &pm)?;
        let mut t = Terms::default();
        // Uni-modal features for GLA: from the unmasked inputs.
        let img = model.image_features(px)?;
        let (txt, cls) = model.text_features_with_cls_attention(
            &narrow_rows(&batch.text.ids, &rows)?,
            &text_mask,
            cfg.local > 0.0,
        )?;
        t.add("itc", cfg.itc, itc(model, &img, &txt, &batch.text.mask, batch.n_paired)?)?;
        if cfg.local > 0.0 {
            t.add(
                "local",
                cfg.local,
                Some(local(model, cfg, &batch.text, &txt, cls.as_ref(), &img, None)?),
            )?;
        }
        // Paired masking: the masked report is reconstructed from the masked image and vice versa.
        let txt_m = model.text_features(&narrow_rows(&mt.ids, &rows)?, &text_mask)?;
        let (img_ctx, txt_ctx) = if cfg.paired_masking { (&latent, &txt_m) } else { (&img, &txt) };
        if cfg.mim > 0.0 {
            t.add(
                "mim",
                cfg.mim,
                Some(mim(model, cfg, px, &pm, &latent, Some((txt_ctx, &text_mask)))?),
            )?;
        }
        if cfg.mlm > 0.0 {
            let (pos, lab) = mlm_targets(&batch.text, &mt, rows)?;
            t.add("mlm", cfg.mlm, mlm(model, &txt_m, &text_mask, Some(img_ctx), pos, lab)?)?;
        }
        if cfg.itm > 0.0 && batch.n_paired >= 2 {
            let np = batch.n_paired;
            let v = model.project_image(&img.narrow(0, 0, np)?)?;
            let w = model.project_text(&txt.narrow(0, 0, np)?, &text_mask.narrow(0, 0, np)?)?;
            let sim: Vec<Vec<f32>> = v.matmul(&w.t()?)?.detach().to_vec2()?;
            let l = itm_loss(
                model,
                &img.narrow(0, 0, np)?,
                &txt.narrow(0, 0, np)?,
                &text_mask.narrow(0, 0, np)?,
                &sim,
                &mut rng(seed, 3),
            )?;
            t.add("itm", cfg.itm, Some(l))?;
        }
        t.finish()
    }
}
