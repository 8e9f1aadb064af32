//! XLIP (arXiv 2407.19546): contrastive learning + AttMIM (mask the patches the report attends
//! to, reconstruct them conditioned on the report) + EntMLM (mask medical entities, reconstruct
//! them with visual support) + unpaired data: image-only samples with disease-kind prompts
//! (soft-label contrastive and AttMIM) and text-only reports (EntMLM only).
//!
//! The unpaired term follows MedCLIP's semantic matching loss (arXiv 2210.10163): label vectors
//! over the CheXpert observations with "No Finding" set when no pathology is positive, label
//! similarity as the cosine of those vectors, targets the row-normalised similarities (MedCLIP
//! takes a softmax of them; row normalisation keeps unrelated pairs at target 0, as the method
//! spec's `Y = rownorm(l_img l_txt^T)`). Only the image-only rows are its queries (their images
//! against every text, their prompts against every image): paired rows are trained by the hard
//! ITC target alone and serve as candidates.

use super::steps::{
    itc, leading_rows, mask_text, mim, mlm, mlm_targets, narrow_rows, patch_mask, row_rngs, select,
    select_rows, unpaired_soft_itc, Terms,
};
use super::{Ablation, Batch, Method, MethodLoss, MimMasking, MlmMasking, ObjectiveConfig};
use anyhow::Result;
use candle_core::Tensor;
use medvlp_model::{MedVlp, ModelConfig};

pub struct Xlip;

impl Method for Xlip {
    fn name(&self) -> &'static str {
        "xlip"
    }

    fn paper(&self) -> &'static str {
        "XLIP, arXiv 2407.19546"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "itc",
            "unpaired",
            "mim",
            "mim_masking",
            "mask_ratio",
            "att_ratio",
            "patch_score",
            "mim_text_conditioned",
            "norm_pix",
            "mlm",
            "mlm_masking",
            "mlm_replace",
            "text_mask_ratio",
            "entity_max_ratio",
            "entity_min_ratio",
            "aux_fraction",
        ]
    }

    fn ablations(&self) -> &'static [Ablation] {
        &[
            Ablation { label: "random MIM", overrides: &["objectives.mim_masking=random"] },
            Ablation { label: "whole-word MLM", overrides: &["objectives.mlm_masking=whole_word"] },
            Ablation {
                label: "no unpaired data",
                overrides: &[
                    "objectives.unpaired=0.0",
                    "data.image_only_rate=0.0",
                    "data.text_only_rate=0.0",
                ],
            },
        ]
    }

    fn configs(&self) -> &'static [(&'static str, &'static str)] {
        shipped_configs!("xlip")
    }

    fn validate(&self, cfg: &ObjectiveConfig) -> Result<()> {
        // AttMIM scores patches with the MAE decoder's cross-attention to the report; without text
        // conditioning that attention never receives a gradient, so the masks would come from
        // frozen random projections.
        if cfg.mim > 0.0 && cfg.mim_masking == MimMasking::Attention && !cfg.mim_text_conditioned {
            anyhow::bail!(
                "objectives.mim_masking = \"attention\" needs objectives.mim_text_conditioned = \
                 true: the patch scorer is the decoder's cross-attention, trained only when the \
                 decoder reads the report (use mim_masking = \"random\" for an unconditioned decoder)"
            );
        }
        Ok(())
    }

    fn defaults(&self) -> ObjectiveConfig {
        ObjectiveConfig {
            itc: 1.0,
            unpaired: 1.0,
            mim: 1.0,
            mim_masking: MimMasking::Attention,
            mask_ratio: 0.75,
            att_ratio: 0.375,
            mim_text_conditioned: true,
            mlm: 1.0,
            mlm_masking: MlmMasking::Entity,
            ..Default::default()
        }
    }

    fn adapt_model(&self, cfg: &ObjectiveConfig, m: &mut ModelConfig) {
        if let Some(d) = m.decoder_config.as_mut() {
            // AttMIM scores come from the decoder's cross-attention to the report.
            d.cross_attention = cfg.mim_text_conditioned;
        }
        m.local_projection = false;
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
        let mut t = Terms::default();
        let n = batch.n_images();
        let masked_text = if cfg.mlm > 0.0 {
            Some(mask_text(
                model,
                &batch.text,
                cfg.mlm_masking,
                cfg,
                &mut row_rngs(seed, 2, batch),
            )?)
        } else {
            None
        };
        if let (Some(px), true) = (batch.pixels.as_ref(), n > 0) {
            let img_rows = 0..n;
            let (ids, mask) = (
                narrow_rows(&batch.text.ids, &img_rows)?,
                narrow_rows(&batch.text.mask, &img_rows)?,
            );
            let img = model.image_features(px)?;
            let txt = model.text_features(&ids, &mask)?;
            t.add("itc", cfg.itc, itc(model, &img, &txt, &batch.text.mask, batch.n_paired)?)?;
            t.add("unpaired", cfg.unpaired, unpaired_soft_itc(model, batch, &img, &txt)?)?;
            // The reconstruction terms see `aux_fraction` of the paired and of the image-only rows.
            let aux = leading_rows(&[0..batch.n_paired, batch.n_paired..n], cfg.aux_fraction);
            // Of tensors over the image rows (`0..n`); with every row, the tensors themselves.
            let aux_rows =
                |x: &Tensor| if aux.len() == n { Ok(x.clone()) } else { select_rows(x, &aux) };
            let (img_a, txt_a, mask_a) = (aux_rows(&img)?, aux_rows(&txt)?, aux_rows(&mask)?);
            if cfg.mim > 0.0 {
                let px_a = aux_rows(px)?;
                let pm = patch_mask(
                    model,
                    cfg,
                    cfg.mim_masking,
                    Some(&img_a),
                    Some((&txt_a, &mask_a)),
                    aux.len(),
                    &mut select(row_rngs(seed, 1, batch), &aux),
                )?;
                let latent = model.image_features_masked(&px_a, &pm)?;
                t.add(
                    "mim",
                    cfg.mim,
                    Some(mim(model, cfg, &px_a, &pm, &latent, Some((&txt_a, &mask_a)))?),
                )?;
            }
            if let Some(m) = &masked_text {
                let (pos, lab) = mlm_targets(&batch.text, m, aux.iter().copied())?;
                let txt_m =
                    model.text_features(&aux_rows(&narrow_rows(&m.ids, &img_rows)?)?, &mask_a)?;
                t.add("mlm", cfg.mlm, mlm(model, &txt_m, &mask_a, Some(&img_a), pos, lab)?)?;
            }
        }
        if let (Some(m), true) = (&masked_text, batch.n_text_only > 0) {
            // Text-only reports: EntMLM without an image stream.
            let rows = leading_rows(std::slice::from_ref(&(n..batch.rows())), cfg.aux_fraction);
            let (pos, lab) = mlm_targets(&batch.text, m, rows.iter().copied())?;
            let mask = select_rows(&batch.text.mask, &rows)?;
            let txt_m = model.text_features(&select_rows(&m.ids, &rows)?, &mask)?;
            t.add(
                "mlm_text_only",
                cfg.mlm * cfg.unpaired,
                mlm(model, &txt_m, &mask, None, pos, lab)?,
            )?;
        }
        t.finish()
    }
}
