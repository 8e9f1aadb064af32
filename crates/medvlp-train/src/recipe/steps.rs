//! Steps shared by the methods: masking, and each objective applied to a batch's streams.

use super::{Batch, MimMasking, MlmMasking, MlmReplace, ObjectiveConfig, TextBatch};
use crate::dist::gather_with_grad;
use crate::objectives::attmim::{patch_scores, select_visible_rows};
use crate::objectives::contrastive::{itc_loss, local_itc_loss, soft_itc_loss, soft_itc_loss_rows};
use crate::objectives::local::{local_alignment_loss, LocalText};
use crate::objectives::mim::mim_loss;
use crate::objectives::mlm::gather_positions;
use crate::objectives::text_masking::{entity_mask, whole_word_mask};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use medvlp_model::masking::PatchMask;
use medvlp_model::nn::additive_mask;
use medvlp_model::MedVlp;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::ops::Range;

/// Independent RNG streams per purpose within one batch.
pub fn rng(seed: u64, purpose: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ purpose.wrapping_mul(0x9E3779B97F4A7C15))
}

/// One stream per row of `batch` for `purpose`, keyed by the row's place in the global batch, so
/// that masks do not depend on how the global batch is split over data-parallel ranks.
pub fn row_rngs(seed: u64, purpose: u64, batch: &Batch) -> Vec<StdRng> {
    (0..batch.rows())
        .map(|i| {
            let (section, row) = batch.global_row(i);
            let key = ((section as u64) << 56) ^ row as u64;
            StdRng::seed_from_u64(
                seed ^ purpose.wrapping_mul(0x9E3779B97F4A7C15)
                    ^ key.wrapping_add(1).wrapping_mul(0xD1B54A32D192ED03),
            )
        })
        .collect()
}

/// The elements of `v` at `idx`, in that order.
pub fn select<T: Clone>(v: Vec<T>, idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| v[i].clone()).collect()
}

/// Masked copy of the text batch: ids with [MASK] at the chosen positions.
pub struct MaskedText {
    pub ids: Tensor,
    /// Masked token positions per row.
    pub masked: Vec<Vec<usize>>,
}

/// Chooses the tokens to predict (`how`) and replaces them as `cfg.mlm_replace` says: always
/// [MASK], or BERT's 80% [MASK], 10% a random token of the model's vocabulary, 10% unchanged.
pub fn mask_text(
    model: &MedVlp,
    text: &TextBatch,
    how: MlmMasking,
    cfg: &ObjectiveConfig,
    rngs: &mut [StdRng],
) -> Result<MaskedText> {
    let vocab = model.config.text_config.vocab_size as u32;
    let (rows, len) = text.ids.dims2()?;
    let mut ids: Vec<u32> = text.ids.flatten_all()?.to_vec1()?;
    let mut masked = Vec::with_capacity(rows);
    if rngs.len() < rows {
        anyhow::bail!("mask_text: {} random streams for {rows} rows", rngs.len());
    }
    for r in 0..rows {
        let rng = &mut rngs[r];
        let m = match how {
            MlmMasking::WholeWord => whole_word_mask(&text.word_ids[r], cfg.text_mask_ratio, rng),
            MlmMasking::Entity => entity_mask(
                &text.word_ids[r],
                &text.entities[r],
                cfg.entity_max_ratio,
                cfg.entity_min_ratio,
                rng,
            ),
        };
        for &t in &m {
            let u: f64 = match cfg.mlm_replace {
                MlmReplace::Mask => 0.0,
                MlmReplace::Bert => rng.random(),
            };
            if u < 0.8 {
                ids[r * len + t] = text.mask_id;
            } else if u < 0.9 {
                ids[r * len + t] = rng.random_range(0..vocab);
            }
        }
        masked.push(m);
    }
    Ok(MaskedText { ids: Tensor::from_vec(ids, (rows, len), text.ids.device())?, masked })
}

/// Flat positions (`i * len + t` for the `i`-th of `rows`) and original ids of the masked tokens
/// of `rows`, so that they index a tensor holding just those rows in that order.
pub fn mlm_targets(
    text: &TextBatch,
    m: &MaskedText,
    rows: impl IntoIterator<Item = usize>,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let len = text.ids.dim(1)?;
    let orig: Vec<u32> = text.ids.flatten_all()?.to_vec1()?;
    let (mut pos, mut lab) = (vec![], vec![]);
    for (i, r) in rows.into_iter().enumerate() {
        for &t in &m.masked[r] {
            pos.push((i * len + t) as u32);
            lab.push(orig[r * len + t]);
        }
    }
    Ok((pos, lab))
}

pub fn narrow_rows(t: &Tensor, rows: &Range<usize>) -> Result<Tensor> {
    Ok(t.narrow(0, rows.start, rows.len())?)
}

/// The listed rows of `t`, in that order.
pub fn select_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let idx = Tensor::from_vec(
        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        rows.len(),
        t.device(),
    )?;
    Ok(t.index_select(&idx, 0)?)
}

/// The first `ceil(fraction * len)` rows of each group (`fraction` in (0, 1]). Batches are
/// shuffled, so the first rows of a group are a random subset of it.
pub fn leading_rows(groups: &[Range<usize>], fraction: f64) -> Vec<usize> {
    groups
        .iter()
        .flat_map(|g| g.start..g.start + ((g.len() as f64 * fraction).ceil() as usize).min(g.len()))
        .collect()
}

/// Global contrastive loss over the paired rows.
pub fn itc(
    model: &MedVlp,
    image: &Tensor,
    text: &Tensor,
    text_mask: &Tensor,
    n_paired: usize,
) -> Result<Option<Tensor>> {
    if n_paired < 2 {
        return Ok(None);
    }
    let v = model.project_image(&image.narrow(0, 0, n_paired)?)?;
    let t =
        model.project_text(&text.narrow(0, 0, n_paired)?, &text_mask.narrow(0, 0, n_paired)?)?;
    // Data parallel: negatives from the whole global batch (open_clip's gather_with_grad).
    let scale = model.logit_scale_value()?;
    match crate::dist::group() {
        Some(g) if g.local_loss => {
            // This rank's rows against every rank's: targets sit at this rank's offset.
            let (gv, gt) = (gather_with_grad(&g.comm, &v)?, gather_with_grad(&g.comm, &t)?);
            let counts = g
                .comm
                .all_gather(&Tensor::new(&[n_paired as u32], &candle_core::Device::Cpu)?)?
                .to_vec1::<u32>()?;
            let offset: u32 = counts[..g.comm.rank()].iter().sum();
            Ok(Some(local_itc_loss(&v, &t, &gv, &gt, &scale, offset)?))
        }
        Some(g) => {
            let (v, t) = (gather_with_grad(&g.comm, &v)?, gather_with_grad(&g.comm, &t)?);
            Ok(Some(itc_loss(&v, &t, &scale)?))
        }
        None => Ok(Some(itc_loss(&v, &t, &scale)?)),
    }
}

/// Soft-label contrastive loss of the image-only rows (their images and prompts as queries, every
/// image row as a candidate), targets from label similarity. `None` without labels or image-only
/// samples.
pub fn unpaired_soft_itc(
    model: &MedVlp,
    batch: &Batch,
    image: &Tensor,
    text: &Tensor,
) -> Result<Option<Tensor>> {
    let (Some(labels), true) = (&batch.labels, batch.n_image_only > 0) else { return Ok(None) };
    let n = batch.n_images();
    let lab = labels.narrow(0, 0, n)?;
    let v = model.project_image(&image.narrow(0, 0, n)?)?;
    let t = model.project_text(&text.narrow(0, 0, n)?, &batch.text.mask.narrow(0, 0, n)?)?;
    let scale = model.logit_scale_value()?;
    match crate::dist::group() {
        // Every rank's image rows (its paired, then its image-only ones) are candidates; every
        // rank's image-only rows are queries.
        Some(g) => {
            let (v, t) = (gather_with_grad(&g.comm, &v)?, gather_with_grad(&g.comm, &t)?);
            let lab = gather_with_grad(&g.comm, &lab)?;
            // Each rank's (paired, image rows), which may differ after bad samples.
            let counts = g
                .comm
                .all_gather(&Tensor::new(
                    &[batch.n_paired as u32, n as u32],
                    &candle_core::Device::Cpu,
                )?)?
                .to_vec1::<u32>()?;
            let mut queries = vec![];
            let mut offset = 0;
            for c in counts.chunks(2) {
                let (p, rows) = (c[0] as usize, c[1] as usize);
                queries.extend(offset + p..offset + rows);
                offset += rows;
            }
            Ok(Some(soft_itc_loss_rows(&v, &t, &scale, &lab, &queries)?))
        }
        None => Ok(Some(soft_itc_loss(&v, &t, &scale, &lab, batch.n_paired..n)?)),
    }
}

/// Patch mask for the image rows: random (MAE) or attention-guided (AttMIM, scores from the
/// unmasked image features and the texts of those rows).
pub fn patch_mask(
    model: &MedVlp,
    cfg: &ObjectiveConfig,
    how: MimMasking,
    full_image: Option<&Tensor>,
    text: Option<(&Tensor, &Tensor)>,
    n: usize,
    rngs: &mut [StdRng],
) -> Result<PatchMask> {
    let np = model.config.vision_config.num_patches();
    let dev = model.logit_scale.device();
    Ok(match (how, full_image, text) {
        (MimMasking::Attention, Some(img), Some((txt, txt_mask))) if cfg.att_ratio > 0.0 => {
            let scores = patch_scores(model, img, txt, txt_mask, cfg.patch_score)?;
            PatchMask::from_keep(
                select_visible_rows(&scores, cfg.mask_ratio, cfg.att_ratio, rngs),
                np,
                dev,
            )?
        }
        _ => {
            // As PatchMask::random, one stream per image.
            let keep_n = np - ((cfg.mask_ratio * np as f64).round() as usize).min(np - 1);
            let keep = rngs[..n]
                .iter_mut()
                .map(|rng| {
                    let mut perm: Vec<usize> = (0..np).collect();
                    perm.shuffle(rng);
                    perm.truncate(keep_n);
                    perm
                })
                .collect();
            PatchMask::from_keep(keep, np, dev)?
        }
    })
}

/// Masked-image-modelling loss from the masked pass `latent`, optionally conditioned on text.
pub fn mim(
    model: &MedVlp,
    cfg: &ObjectiveConfig,
    pixels: &Tensor,
    pm: &PatchMask,
    latent: &Tensor,
    text: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let dec =
        model.mae_decoder.as_ref().context("this method needs an MAE decoder (decoder_config)")?;
    let ctx_mask = match text {
        Some((_, m)) if cfg.mim_text_conditioned => Some(additive_mask(m, latent.dtype())?),
        _ => None,
    };
    let ctx = match text {
        Some((t, _)) if cfg.mim_text_conditioned => Some((t, ctx_mask.as_ref())),
        _ => None,
    };
    let pred = dec.forward(latent, pm, ctx)?;
    Ok(mim_loss(&pred, pixels, model.config.vision_config.patch_size, &pm.mask, cfg.norm_pix)?)
}

/// MLM loss of `text_feats` rows (positions relative to them): fused with `image` (visual
/// support) when given, else from the text encoder alone.
pub fn mlm(
    model: &MedVlp,
    text_feats: &Tensor,
    text_mask: &Tensor,
    image: Option<&Tensor>,
    positions: Vec<u32>,
    labels: Vec<u32>,
) -> Result<Option<Tensor>> {
    // Data parallel: ranks mask different numbers of tokens, so each rank's mean is reweighted
    // to its share of the global count (times the world size, which the gradient average divides
    // out): the average over ranks is then the mean over every masked token of the global batch.
    let share = match crate::dist::group() {
        Some(g) => {
            let n = Tensor::new(&[positions.len() as f64], &candle_core::Device::Cpu)?;
            let total = g.comm.all_reduce_sum(&n)?.to_vec1::<f64>()?[0];
            Some(positions.len() as f64 * g.comm.world_size() as f64 / total.max(1.0))
        }
        None => None,
    };
    if positions.is_empty() {
        return Ok(None);
    }
    let head =
        model.mlm_head.as_ref().context("this method needs an MLM head (mlm_head = true)")?;
    let h = match image {
        Some(img) => model.fuse_text(text_feats, text_mask, img, false)?.0,
        None => text_feats.clone(),
    };
    let dev = text_feats.device();
    let sel = gather_positions(&h, &Tensor::new(positions, dev)?)?;
    let loss = head.loss(
        &sel,
        &model.text_model.embeddings.word_embeddings.weight,
        &Tensor::new(labels, dev)?,
    )?;
    Ok(Some(match share {
        Some(s) => (loss * s)?,
        None => loss,
    }))
}

/// Local alignment between the rows' token features and their images' patch features (CLS
/// excluded). Masked tokens (`dropped`) are left out of the words.
pub fn local(
    model: &MedVlp,
    cfg: &ObjectiveConfig,
    text: &TextBatch,
    text_feats: &Tensor,
    cls_attention: Option<&Tensor>,
    image_feats: &Tensor,
    dropped: Option<&[Vec<usize>]>,
) -> Result<Tensor> {
    let heads =
        model.local_projection.as_ref().context("local alignment needs local_projection = true")?;
    let n = image_feats.dim(0)?;
    let cls: Option<Vec<Vec<f32>>> =
        cls_attention.map(|c| c.narrow(0, 0, n)?.to_dtype(DType::F32)?.to_vec2()).transpose()?;
    let word_ids: Vec<Vec<Option<u32>>> = (0..n)
        .map(|r| {
            let mut w = text.word_ids[r].clone();
            if let Some(d) = dropped {
                for &t in &d[r] {
                    w[t] = None;
                }
            }
            w
        })
        .collect();
    let samples: Vec<LocalText> = (0..n)
        .map(|r| LocalText {
            word_ids: &word_ids[r],
            cls_attention: cls.as_ref().map(|c| c[r].as_slice()),
        })
        .collect();
    let np = image_feats.dim(1)? - 1;
    Ok(local_alignment_loss(
        &text_feats.narrow(0, 0, n)?,
        &samples,
        &image_feats.narrow(1, 1, np)?,
        heads,
        cfg.aggregation,
        cfg.local_tau,
    )?)
}

/// Accumulates weighted loss terms and their logged values.
#[derive(Default)]
pub struct Terms {
    total: Option<Tensor>,
    pub parts: Vec<(String, Tensor)>,
}

impl Terms {
    pub fn add(&mut self, name: &str, weight: f64, loss: Option<Tensor>) -> Result<()> {
        let Some(l) = loss else { return Ok(()) };
        if weight == 0.0 {
            return Ok(());
        }
        self.parts.push((name.to_string(), l.detach()));
        let w = (l * weight)?;
        self.total = Some(match self.total.take() {
            Some(t) => (t + w)?,
            None => w,
        });
        Ok(())
    }

    pub fn finish(self) -> Result<super::MethodLoss> {
        let loss = self.total.context("no objective produced a loss for this batch")?;
        Ok(super::MethodLoss { loss, parts: self.parts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_rows_takes_the_rounded_up_share_of_each_group() {
        assert_eq!(leading_rows(&[0..6, 6..8], 0.5), vec![0, 1, 2, 6]);
        assert_eq!(leading_rows(&[0..6, 6..8], 0.25), vec![0, 1, 6]);
        assert_eq!(leading_rows(&[0..3, 3..3], 1.0), vec![0, 1, 2]);
        assert_eq!(leading_rows(std::slice::from_ref(&(10..12)), 0.01), vec![10]);
    }
}
