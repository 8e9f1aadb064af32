//! Image-text matching with hard negatives (ALBEF/M3AE): for each image, a non-matching report
//! drawn in proportion to its contrastive similarity; the fused [CLS] state classifies matched vs
//! unmatched pairs.

use super::cross_entropy;
use candle_core::{Module, Result, Tensor};
use medvlp_model::MedVlp;
use rand::Rng;

/// Index of a hard negative text per image from the similarity matrix `sim[i][j]` (image i, text j):
/// sampled with weights `exp(sim)` over j != i.
pub fn hard_negatives(sim: &[Vec<f32>], rng: &mut impl Rng) -> Vec<usize> {
    sim.iter()
        .enumerate()
        .map(|(i, row)| {
            let w: Vec<f64> = row
                .iter()
                .enumerate()
                .map(|(j, &s)| if j == i { 0.0 } else { (s as f64).exp() })
                .collect();
            let total: f64 = w.iter().sum();
            if total <= 0.0 {
                return (i + 1) % row.len();
            }
            let mut u = rng.random::<f64>() * total;
            for (j, &x) in w.iter().enumerate() {
                if u < x {
                    return j;
                }
                u -= x;
            }
            (i + 1) % row.len()
        })
        .collect()
}

/// ITM loss over `b` positive pairs and `b` hard-negative pairs. `image`: `[b, 1 + n, wv]`;
/// `text`: `[b, l, wt]`; `text_mask`: `[b, l]`; `sim`: image-text similarities (detached).
pub fn itm_loss(
    model: &MedVlp,
    image: &Tensor,
    text: &Tensor,
    text_mask: &Tensor,
    sim: &[Vec<f32>],
    rng: &mut impl Rng,
) -> Result<Tensor> {
    let head = model
        .itm_head
        .as_ref()
        .ok_or_else(|| candle_core::Error::Msg("ITM needs itm_head = true".into()))?;
    let b = image.dim(0)?;
    if b < 2 {
        candle_core::bail!("ITM needs at least 2 samples per batch");
    }
    let neg = Tensor::new(
        hard_negatives(sim, rng).iter().map(|&j| j as u32).collect::<Vec<_>>(),
        image.device(),
    )?;
    let texts = Tensor::cat(&[text, &text.index_select(&neg, 0)?], 0)?;
    let masks = Tensor::cat(&[text_mask, &text_mask.index_select(&neg, 0)?], 0)?;
    let images = Tensor::cat(&[image, image], 0)?;
    let (fused, _) = model.fuse_text(&texts, &masks, &images, false)?;
    let logits = head.forward(&fused.narrow(1, 0, 1)?.squeeze(1)?)?;
    let labels: Vec<u32> = (0..2 * b).map(|i| if i < b { 1 } else { 0 }).collect();
    cross_entropy(&logits, &Tensor::new(labels, image.device())?)
}
