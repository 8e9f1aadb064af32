//! Global image-text contrastive loss (ITC, CLIP/ConVIRT): `S = scale * v t^T`,
//! `L = (CE(S, I) + CE(S^T, I)) / 2` on L2-normalised embeddings.

use super::{cross_entropy, soft_cross_entropy};
use candle_core::{Result, Tensor};

/// `image`, `text`: `[b, d]` L2-normalised; `scale`: rank-0 `exp(logit_scale)` (already clamped).
pub fn itc_loss(image: &Tensor, text: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let logits = image.matmul(&text.t()?)?.broadcast_mul(scale)?;
    let b = logits.dim(0)?;
    let targets = Tensor::arange(0u32, b as u32, logits.device())?;
    let l_i2t = cross_entropy(&logits, &targets)?;
    let l_t2i = cross_entropy(&logits.t()?, &targets)?;
    (l_i2t + l_t2i)? * 0.5
}

/// [`itc_loss`] of a data-parallel rank with open_clip's `local_loss`: its `image` / `text` rows
/// (`[b, d]`) are the queries, the gathered global `all_image` / `all_text` the candidates, and
/// the matching pairs sit at `offset + i`. The mean over ranks equals [`itc_loss`] of the global
/// batch when every rank holds the same number of rows.
pub fn local_itc_loss(
    image: &Tensor,
    text: &Tensor,
    all_image: &Tensor,
    all_text: &Tensor,
    scale: &Tensor,
    offset: u32,
) -> Result<Tensor> {
    let b = image.dim(0)? as u32;
    let targets = Tensor::arange(offset, offset + b, image.device())?;
    let i2t = image.matmul(&all_text.t()?)?.broadcast_mul(scale)?;
    let t2i = text.matmul(&all_image.t()?)?.broadcast_mul(scale)?;
    (cross_entropy(&i2t, &targets)? + cross_entropy(&t2i, &targets)?)? * 0.5
}

/// Soft-label contrastive loss after MedCLIP's semantic matching: row `i` of `image` (`[b, d]`)
/// and of `text` belong to one study with label vector `labels[i]` (`[b, classes]`, 0/1, never
/// all zero: see `medvlp_data::text::labels::label_vector`). Label similarity is the cosine of the
/// label vectors; each query's target over the `b` candidates is its row of similarities,
/// normalised to sum to 1. Only the rows in `queries` are queries, in both directions (their image
/// against every text, their text against every image); the loss is the mean over them.
pub fn soft_itc_loss(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    labels: &Tensor,
    queries: std::ops::Range<usize>,
) -> Result<Tensor> {
    soft_itc_loss_rows(image, text, scale, labels, &queries.collect::<Vec<_>>())
}

/// [`soft_itc_loss`] with any set of query rows (a gathered global batch holds each rank's
/// image-only rows after its paired ones).
pub fn soft_itc_loss_rows(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    labels: &Tensor,
    queries: &[usize],
) -> Result<Tensor> {
    let logits = image.matmul(&text.t()?)?.broadcast_mul(scale)?;
    let norm = labels.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    let unit = labels.broadcast_div(&norm)?;
    let q: Vec<u32> = queries.iter().map(|&i| i as u32).collect();
    let q = Tensor::new(q, logits.device())?;
    // Symmetric: the same label vector stands for a study's image and its text.
    let sim = unit.index_select(&q, 0)?.matmul(&unit.t()?)?;
    let y = sim.broadcast_div(&sim.sum_keepdim(1)?)?;
    let i2t = logits.index_select(&q, 0)?;
    let t2i = logits.index_select(&q, 1)?.t()?;
    (soft_cross_entropy(&i2t, &y)? + soft_cross_entropy(&t2i, &y)?)? * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn itc_matches_hand_computation() {
        let dev = Device::Cpu;
        let v = Tensor::new(&[[1.0f64, 0.0], [0.6, 0.8]], &dev).unwrap();
        let t = Tensor::new(&[[0.8f64, 0.6], [0.0, 1.0]], &dev).unwrap();
        let s = Tensor::new(2.0f64, &dev).unwrap();
        let got = itc_loss(&v, &t, &s).unwrap().to_scalar::<f64>().unwrap();
        // logits = 2 * [[0.8, 0], [0.96, 0.8]]
        let l = [[1.6f64, 0.0], [1.92, 1.6]];
        let ce = |row: [f64; 2], k: usize| -(row[k] - (row[0].exp() + row[1].exp()).ln());
        let i2t = (ce(l[0], 0) + ce(l[1], 1)) / 2.0;
        let t2i = (ce([l[0][0], l[1][0]], 0) + ce([l[0][1], l[1][1]], 1)) / 2.0;
        assert!((got - (i2t + t2i) / 2.0).abs() < 1e-12, "{got}");
    }

    #[test]
    fn soft_itc_equals_itc_with_disjoint_labels() {
        let dev = Device::Cpu;
        let v = Tensor::new(&[[1.0f64, 0.0], [0.6, 0.8], [0.0, 1.0]], &dev).unwrap();
        let t = Tensor::new(&[[0.8f64, 0.6], [0.0, 1.0], [1.0, 0.0]], &dev).unwrap();
        let s = Tensor::new(3.0f64, &dev).unwrap();
        let lab =
            Tensor::new(&[[1.0f64, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], &dev).unwrap();
        // disjoint labels: cosine similarity is the identity, so is the target
        let a = soft_itc_loss(&v, &t, &s, &lab, 0..3).unwrap().to_scalar::<f64>().unwrap();
        let b = itc_loss(&v, &t, &s).unwrap().to_scalar::<f64>().unwrap();
        assert!((a - b).abs() < 1e-12);
        // shared labels change the target and the loss
        let lab2 = Tensor::new(&[[1.0f64, 0.0], [1.0, 0.0], [0.0, 1.0]], &dev).unwrap();
        let c = soft_itc_loss(&v, &t, &s, &lab2, 0..3).unwrap().to_scalar::<f64>().unwrap();
        assert!((c - b).abs() > 1e-3);
        let _ = DType::F64;
    }

    #[test]
    fn soft_itc_targets_are_label_cosines_over_the_query_rows() {
        let dev = Device::Cpu;
        let v = Tensor::new(&[[1.0f64, 0.0], [0.6, 0.8], [0.0, 1.0]], &dev).unwrap();
        let t = Tensor::new(&[[0.8f64, 0.6], [0.0, 1.0], [1.0, 0.0]], &dev).unwrap();
        let s = Tensor::new(2.0f64, &dev).unwrap();
        // row 2 shares one of row 1's two labels: cosine 1/sqrt(2)
        let lab =
            Tensor::new(&[[1.0f64, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0]], &dev).unwrap();
        let got = soft_itc_loss(&v, &t, &s, &lab, 2..3).unwrap().to_scalar::<f64>().unwrap();
        let c = 0.5f64.sqrt();
        let y = [0.0, c / (1.0 + c), 1.0 / (1.0 + c)];
        let logits: Vec<Vec<f64>> = v.matmul(&t.t().unwrap()).unwrap().to_vec2().unwrap();
        let xent = |row: [f64; 3]| {
            let lse = row.iter().map(|x| (2.0 * x).exp()).sum::<f64>().ln();
            -(0..3).map(|j| y[j] * (2.0 * row[j] - lse)).sum::<f64>()
        };
        let i2t = xent([logits[2][0], logits[2][1], logits[2][2]]);
        let t2i = xent([logits[0][2], logits[1][2], logits[2][2]]);
        assert!((got - (i2t + t2i) / 2.0).abs() < 1e-12, "{got}");
    }
}
