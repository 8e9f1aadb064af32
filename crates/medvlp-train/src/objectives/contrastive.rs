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

/// Soft-label contrastive loss (MedCLIP): targets `Y = rownorm(l_img l_txt^T)` from label vectors
/// `[b, classes]` (0/1) instead of the identity.
pub fn soft_itc_loss(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    img_labels: &Tensor,
    txt_labels: &Tensor,
) -> Result<Tensor> {
    let logits = image.matmul(&text.t()?)?.broadcast_mul(scale)?;
    let sim = img_labels.matmul(&txt_labels.t()?)?;
    // Rows without any shared label fall back to the identity (the pair itself).
    let eye = Tensor::eye(sim.dim(0)?, sim.dtype(), sim.device())?;
    let sim = (sim + eye)?;
    let y = sim.broadcast_div(&sim.sum_keepdim(1)?)?;
    let yt = sim.t()?.broadcast_div(&sim.t()?.sum_keepdim(1)?)?;
    (soft_cross_entropy(&logits, &y)? + soft_cross_entropy(&logits.t()?, &yt)?)? * 0.5
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
        // identity labels: Y = rownorm(2I) = I
        let a = soft_itc_loss(&v, &t, &s, &lab, &lab).unwrap().to_scalar::<f64>().unwrap();
        let b = itc_loss(&v, &t, &s).unwrap().to_scalar::<f64>().unwrap();
        assert!((a - b).abs() < 1e-12);
        // shared labels change the target and the loss
        let lab2 = Tensor::new(&[[1.0f64, 0.0], [1.0, 0.0], [0.0, 1.0]], &dev).unwrap();
        let c = soft_itc_loss(&v, &t, &s, &lab2, &lab2).unwrap().to_scalar::<f64>().unwrap();
        assert!((c - b).abs() > 1e-3);
        let _ = DType::F64;
    }
}
