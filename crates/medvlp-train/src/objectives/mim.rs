//! Masked image modelling loss (MAE): MSE between predicted and per-patch normalised pixels,
//! averaged over masked patches only.

use candle_core::{Result, Tensor, D};
use medvlp_model::vit::patchify;

/// `pred`: `[b, patches, patch_dim]` decoder output; `pixel_values`: `[b, c, h, w]`;
/// `mask`: `[b, patches]` with 1 on masked patches. With `norm_pix`, each target patch is
/// normalised by its mean and (unbiased) variance, as MAE does.
pub fn mim_loss(
    pred: &Tensor,
    pixel_values: &Tensor,
    patch_size: usize,
    mask: &Tensor,
    norm_pix: bool,
) -> Result<Tensor> {
    let target = patchify(pixel_values, patch_size)?;
    let target = if norm_pix {
        let n = target.dim(D::Minus1)? as f64;
        let mean = target.mean_keepdim(D::Minus1)?;
        let c = target.broadcast_sub(&mean)?;
        let var = (c.sqr()?.sum_keepdim(D::Minus1)? / (n - 1.0).max(1.0))?;
        c.broadcast_div(&(var + 1e-6)?.sqrt()?)?
    } else {
        target
    };
    let per_patch = (pred - target)?.sqr()?.mean(D::Minus1)?;
    let mask = mask.to_dtype(per_patch.dtype())?;
    let denom = mask.sum_all()?.clamp(1.0, f64::MAX)?;
    (per_patch * mask)?.sum_all()?.div(&denom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn only_masked_patches_count() {
        let dev = Device::Cpu;
        let px = Tensor::arange(0f64, 64.0, &dev).unwrap().reshape((1, 1, 8, 8)).unwrap();
        let target = patchify(&px, 4).unwrap();
        // perfect prediction on patch 0 and 3, garbage on 1 and 2
        let garbage = (target.ones_like().unwrap() * 100.0).unwrap();
        let pred = Tensor::cat(
            &[
                target.narrow(1, 0, 1).unwrap(),
                garbage.narrow(1, 1, 2).unwrap(),
                target.narrow(1, 3, 1).unwrap(),
            ],
            1,
        )
        .unwrap();
        let m_good = Tensor::new(&[[1.0f64, 0.0, 0.0, 1.0]], &dev).unwrap();
        let l = mim_loss(&pred, &px, 4, &m_good, false).unwrap().to_scalar::<f64>().unwrap();
        assert_eq!(l, 0.0);
        let m_bad = Tensor::new(&[[0.0f64, 1.0, 0.0, 0.0]], &dev).unwrap();
        let l = mim_loss(&pred, &px, 4, &m_bad, false).unwrap().to_scalar::<f64>().unwrap();
        assert!(l > 100.0);
        let _ = DType::F64;
    }
}
