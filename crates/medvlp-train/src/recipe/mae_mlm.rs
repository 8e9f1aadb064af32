//! Dual-stream baseline after M3AE (Chen et al., "Multi-Modal Masked Autoencoders for Medical
//! Vision-and-Language Pre-Training", arXiv 2209.07098): contrastive loss on unmasked inputs, plus
//! random-mask MIM and random whole-word MLM (with visual support) on separate masked passes, and
//! optionally the local word<->patch alignment.

use super::steps::{itc, local, mask_text, mim, mlm, mlm_targets, patch_mask, row_rngs, Terms};
use super::{Batch, Method, MethodLoss, MimMasking, MlmMasking, ObjectiveConfig};
use anyhow::{Context, Result};
use medvlp_model::{MedVlp, ModelConfig};

pub struct MaeMlm;

impl Method for MaeMlm {
    fn name(&self) -> &'static str {
        "mae-mlm"
    }

    fn paper(&self) -> &'static str {
        "baseline: M3AE-style dual stream (arXiv 2209.07098)"
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
        ]
    }

    fn configs(&self) -> &'static [(&'static str, &'static str)] {
        shipped_configs!("mae-mlm")
    }

    fn defaults(&self) -> ObjectiveConfig {
        ObjectiveConfig {
            unpaired: 0.0,
            mim_masking: MimMasking::Random,
            mim_text_conditioned: false,
            mlm_masking: MlmMasking::WholeWord,
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
        let px = batch.pixels.as_ref().context("mae-mlm needs images")?;
        let n = batch.n_images();
        let (ids, mask) = (batch.text.ids.narrow(0, 0, n)?, batch.text.mask.narrow(0, 0, n)?);
        let img = model.image_features(px)?;
        let (txt, cls) = model.text_features_with_cls_attention(&ids, &mask, cfg.local > 0.0)?;
        let mut t = Terms::default();
        t.add("itc", cfg.itc, itc(model, &img, &txt, &batch.text.mask, batch.n_paired)?)?;
        if cfg.local > 0.0 {
            t.add(
                "local",
                cfg.local,
                Some(local(model, cfg, &batch.text, &txt, cls.as_ref(), &img, None)?),
            )?;
        }
        if cfg.mim > 0.0 {
            let pm = patch_mask(
                model,
                cfg,
                MimMasking::Random,
                None,
                None,
                n,
                &mut row_rngs(seed, 1, batch),
            )?;
            let latent = model.image_features_masked(px, &pm)?;
            t.add("mim", cfg.mim, Some(mim(model, cfg, px, &pm, &latent, Some((&txt, &mask)))?))?;
        }
        if cfg.mlm > 0.0 {
            let m = mask_text(
                model,
                &batch.text,
                MlmMasking::WholeWord,
                cfg,
                &mut row_rngs(seed, 2, batch),
            )?;
            let rows = 0..n;
            let (pos, lab) = mlm_targets(&batch.text, &m, rows)?;
            let txt_m = model.text_features(&m.ids.narrow(0, 0, n)?, &mask)?;
            t.add("mlm", cfg.mlm, mlm(model, &txt_m, &mask, Some(&img), pos, lab)?)?;
        }
        t.finish()
    }
}
