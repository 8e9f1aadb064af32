//! XLIP: contrastive learning + AttMIM (mask the patches the report attends to, reconstruct them
//! conditioned on the report) + EntMLM (mask medical entities, reconstruct them with visual
//! support) + unpaired data: image-only samples with disease-kind prompts (soft-label contrastive
//! and AttMIM) and text-only reports (EntMLM only).

use super::steps::{itc, mask_text, mim, mlm, mlm_targets, narrow_rows, patch_mask, rng, unpaired_soft_itc, Terms};
use super::{Batch, Method, MethodLoss, MimMasking, MlmMasking, ObjectiveConfig, Stream};
use anyhow::Result;
use medvlp_model::{MedVlp, ModelConfig};

pub struct Xlip;

impl Method for Xlip {
    fn name(&self) -> &'static str {
        "xlip"
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
            local: 0.0,
            itm: 0.0,
            stream: Stream::Dual,
            ..Default::default()
        }
    }

    fn adapt_model(&self, cfg: &ObjectiveConfig, m: &mut ModelConfig) {
        if let Some(d) = m.decoder_config.as_mut() {
            // AttMIM scores come from the decoder's cross-attention to the report.
            d.cross_attention = cfg.mim_text_conditioned || cfg.mim_masking == MimMasking::Attention;
        }
        m.local_projection = cfg.local > 0.0;
        m.memory_config = None;
        m.itm_head = cfg.itm > 0.0;
    }

    fn loss(&self, model: &MedVlp, batch: &Batch, cfg: &ObjectiveConfig, seed: u64) -> Result<MethodLoss> {
        let mut t = Terms::default();
        let n = batch.n_images();
        let masked_text = if cfg.mlm > 0.0 { Some(mask_text(&batch.text, cfg.mlm_masking, cfg, &mut rng(seed, 2))?) } else { None };
        if let (Some(px), true) = (batch.pixels.as_ref(), n > 0) {
            let img_rows = 0..n;
            let (ids, mask) = (narrow_rows(&batch.text.ids, &img_rows)?, narrow_rows(&batch.text.mask, &img_rows)?);
            let img = model.image_features(px)?;
            let txt = model.text_features(&ids, &mask)?;
            t.add("itc", cfg.itc, itc(model, &img, &txt, &batch.text.mask, batch.n_paired)?)?;
            t.add("unpaired", cfg.unpaired, unpaired_soft_itc(model, batch, &img, &txt)?)?;
            if cfg.mim > 0.0 {
                let pm = patch_mask(model, cfg, cfg.mim_masking, Some(&img), Some((&txt, &mask)), n, &mut rng(seed, 1))?;
                let latent = model.image_features_masked(px, &pm)?;
                t.add("mim", cfg.mim, Some(mim(model, cfg, px, &pm, &latent, Some((&txt, &mask)))?))?;
            }
            if let Some(m) = &masked_text {
                let (pos, lab) = mlm_targets(&batch.text, m, img_rows.clone())?;
                let txt_m = model.text_features(&narrow_rows(&m.ids, &img_rows)?, &mask)?;
                t.add("mlm", cfg.mlm, mlm(model, &txt_m, &mask, Some(&img), pos, lab)?)?;
            }
        }
        if let (Some(m), true) = (&masked_text, batch.n_text_only > 0) {
            // Text-only reports: EntMLM without an image stream.
            let rows = n..batch.rows();
            let (pos, lab) = mlm_targets(&batch.text, m, rows.clone())?;
            let mask = narrow_rows(&batch.text.mask, &rows)?;
            let txt_m = model.text_features(&narrow_rows(&m.ids, &rows)?, &mask)?;
            t.add("mlm_text_only", cfg.mlm * cfg.unpaired, mlm(model, &txt_m, &mask, None, pos, lab)?)?;
        }
        t.finish()
    }
}
