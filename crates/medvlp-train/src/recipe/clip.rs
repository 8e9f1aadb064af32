//! CLIP / ConVIRT baseline: the global contrastive loss only. CLIP: Radford et al., "Learning
//! Transferable Visual Models From Natural Language Supervision", arXiv 2103.00020; ConVIRT: Zhang
//! et al., arXiv 2010.00747. With `unpaired > 0`, image-only rows join through the soft-label
//! loss (MedCLIP, arXiv 2210.10163).

use super::steps::{itc, unpaired_soft_itc, Terms};
use super::{Batch, Method, MethodLoss, ObjectiveConfig};
use anyhow::{Context, Result};
use medvlp_model::{MedVlp, ModelConfig};

pub struct Clip;

impl Method for Clip {
    fn name(&self) -> &'static str {
        "clip"
    }

    fn paper(&self) -> &'static str {
        "baseline: CLIP (arXiv 2103.00020) / ConVIRT (arXiv 2010.00747)"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["itc", "unpaired"]
    }

    fn configs(&self) -> &'static [(&'static str, &'static str)] {
        shipped_configs!("clip")
    }

    fn defaults(&self) -> ObjectiveConfig {
        ObjectiveConfig {
            itc: 1.0,
            unpaired: 0.0,
            mim: 0.0,
            mlm: 0.0,
            local: 0.0,
            itm: 0.0,
            ..Default::default()
        }
    }

    fn adapt_model(&self, _cfg: &ObjectiveConfig, m: &mut ModelConfig) {
        m.fusion_config = None;
        m.decoder_config = None;
        m.mlm_head = false;
        m.local_projection = false;
        m.memory_config = None;
        m.itm_head = false;
    }

    fn loss(
        &self,
        model: &MedVlp,
        batch: &Batch,
        cfg: &ObjectiveConfig,
        _seed: u64,
    ) -> Result<MethodLoss> {
        let px = batch.pixels.as_ref().context("clip needs images")?;
        let n = batch.n_images();
        let img = model.image_features(px)?;
        let txt = model
            .text_features(&batch.text.ids.narrow(0, 0, n)?, &batch.text.mask.narrow(0, 0, n)?)?;
        let mut t = Terms::default();
        t.add("itc", cfg.itc, itc(model, &img, &txt, &batch.text.mask, batch.n_paired)?)?;
        t.add("unpaired", cfg.unpaired, unpaired_soft_itc(model, batch, &img, &txt)?)?;
        t.finish()
    }
}
