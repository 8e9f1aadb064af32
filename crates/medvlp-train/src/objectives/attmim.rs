//! AttMIM (XLIP): mask the image patches that respond most to the report.
//!
//! Scores come from the text-conditioned MAE decoder's first cross-attention (the module that
//! learns, through reconstruction, which patches the report talks about): patches of the *unmasked*
//! image, embedded by `decoder_embed`, attend to the report tokens; patch i's score is
//! `s_i = || sum_j A_ij v(t_j) ||` (configurable: `norm` or `max` attention). The top
//! `att_ratio * N` patches are masked, the rest of the `mask_ratio * N` budget is random.

use candle_core::{Module, Result, Tensor, D};
use medvlp_model::nn::additive_mask;
use medvlp_model::MedVlp;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchScore {
    /// `|| a_i ||`, the norm of the attended text feature (the paper's formula).
    Norm,
    /// Largest attention probability of the patch over the report tokens (mean over heads).
    Max,
}

/// Per-patch scores `[b, patches]` (detached). `image_features`: unmasked encoder output
/// `[b, 1 + patches, width]`; `text_features`: `[b, l, text_width]`; `text_mask`: `[b, l]` 0/1.
pub fn patch_scores(
    model: &MedVlp,
    image_features: &Tensor,
    text_features: &Tensor,
    text_mask: &Tensor,
    how: PatchScore,
) -> Result<Vec<Vec<f32>>> {
    let dec = model
        .mae_decoder
        .as_ref()
        .ok_or_else(|| candle_core::Error::Msg("AttMIM needs an MAE decoder".into()))?;
    let block = dec
        .blocks
        .first()
        .ok_or_else(|| candle_core::Error::Msg("AttMIM needs a decoder block".into()))?;
    let (ln, cross) = block.cross.as_ref().ok_or_else(|| {
        candle_core::Error::Msg("AttMIM needs decoder_config.cross_attention = true".into())
    })?;
    let img = image_features.detach();
    let txt = text_features.detach();
    let n = img.dim(1)? - 1;
    let x = dec.decoder_embed.forward(&img.narrow(1, 1, n)?)?;
    let x = x.broadcast_add(&dec.pos_embed.narrow(0, 1, n)?)?;
    let mask = additive_mask(text_mask, txt.dtype())?;
    let (attended, probs) = cross.attend(&ln.forward(&x)?, &txt, Some(&mask))?;
    let s = match how {
        PatchScore::Norm => attended.sqr()?.sum(D::Minus1)?.sqrt()?,
        PatchScore::Max => probs.mean(1)?.max(D::Minus1)?,
    };
    s.to_dtype(candle_core::DType::F32)?.to_vec2()
}

/// Visible patch sets: the `round(att_ratio * N)` highest-scoring patches are masked, then random
/// patches until `round(mask_ratio * N)` are masked. `att_ratio = mask_ratio` is pure attention
/// masking, `att_ratio = 0` plain random MAE masking.
pub fn select_visible(
    scores: &[Vec<f32>],
    mask_ratio: f64,
    att_ratio: f64,
    rng: &mut impl Rng,
) -> Vec<Vec<usize>> {
    scores.iter().map(|s| visible_of(s, mask_ratio, att_ratio, rng)).collect()
}

/// [`select_visible`] with one random stream per row (`rngs[i]` for row `i`).
pub fn select_visible_rows(
    scores: &[Vec<f32>],
    mask_ratio: f64,
    att_ratio: f64,
    rngs: &mut [impl Rng],
) -> Vec<Vec<usize>> {
    scores.iter().zip(rngs).map(|(s, rng)| visible_of(s, mask_ratio, att_ratio, rng)).collect()
}

fn visible_of(s: &[f32], mask_ratio: f64, att_ratio: f64, rng: &mut impl Rng) -> Vec<usize> {
    {
        {
            let n = s.len();
            let n_mask = ((mask_ratio * n as f64).round() as usize).min(n - 1);
            let n_att = ((att_ratio * n as f64).round() as usize).min(n_mask);
            let mut order: Vec<usize> = (0..n).collect();
            // Highest score first; ties broken by index for determinism.
            order.sort_by(|&a, &b| {
                s[b].partial_cmp(&s[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
            });
            let mut rest: Vec<usize> = order[n_att..].to_vec();
            rest.shuffle(rng);
            let mut visible: Vec<usize> = rest[n_mask - n_att..].to_vec();
            visible.sort_unstable();
            visible
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn masks_exactly_the_top_scoring_patches() {
        let scores = vec![vec![0.1, 0.9, 0.3, 0.8, 0.2, 0.05, 0.7, 0.0]];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        // pure attention masking: mask 4 of 8 = the four highest (1, 3, 6, 2)
        let v = select_visible(&scores, 0.5, 0.5, &mut rng);
        assert_eq!(v[0], vec![0, 4, 5, 7]);
        // half attention, half random: the top 2 are always masked, 2 more at random
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let v = select_visible(&scores, 0.5, 0.25, &mut rng);
            assert_eq!(v[0].len(), 4);
            assert!(!v[0].contains(&1) && !v[0].contains(&3), "{:?}", v[0]);
        }
        // att_ratio = 0: random masking only, the top patch is sometimes visible
        let visible_top = (0..50)
            .filter(|&seed| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                select_visible(&scores, 0.5, 0.0, &mut rng)[0].contains(&1)
            })
            .count();
        assert!(visible_top > 5 && visible_top < 45, "{visible_top}");
    }
}
