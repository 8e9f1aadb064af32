//! Per-sample patch subsets for MAE-style encoding: which patches each image keeps, and how the
//! decoder restores the original order.

use candle_core::{Device, Result, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;

/// A set of visible patches per sample (the same count for every sample, as batching requires).
#[derive(Clone, Debug)]
pub struct PatchMask {
    pub batch: usize,
    pub num_patches: usize,
    /// Visible patch indices per sample, in the order the encoder sees them.
    pub keep: Vec<Vec<usize>>,
    /// `[batch * keep]` u32: flat indices `b * num_patches + p` of the visible patches.
    pub keep_flat: Tensor,
    /// `[batch * num_patches]` u32: for each original position `p` of sample `b`, the flat index
    /// into `cat([visible, mask tokens])` (`b * num_patches + slot`) that holds it (MAE's ids_restore).
    pub restore_flat: Tensor,
    /// `[batch, num_patches]` f32: 1 where the patch is masked (hidden from the encoder).
    pub mask: Tensor,
}

impl PatchMask {
    /// Build from explicit visible sets (each of the same length, indices < `num_patches`, distinct).
    pub fn from_keep(keep: Vec<Vec<usize>>, num_patches: usize, device: &Device) -> Result<Self> {
        let batch = keep.len();
        let k = keep.first().map(|v| v.len()).unwrap_or(0);
        let mut keep_flat = Vec::with_capacity(batch * k);
        let mut restore = vec![0u32; batch * num_patches];
        let mut mask = vec![1f32; batch * num_patches];
        for (b, kb) in keep.iter().enumerate() {
            if kb.len() != k {
                candle_core::bail!(
                    "patch mask: sample {b} keeps {} patches, sample 0 keeps {k}",
                    kb.len()
                );
            }
            let mut seen = vec![false; num_patches];
            for (slot, &p) in kb.iter().enumerate() {
                if p >= num_patches || seen[p] {
                    candle_core::bail!(
                        "patch mask: sample {b} has invalid or repeated patch index {p}"
                    );
                }
                seen[p] = true;
                keep_flat.push((b * num_patches + p) as u32);
                restore[b * num_patches + p] = (b * num_patches + slot) as u32;
                mask[b * num_patches + p] = 0.0;
            }
            // Masked patches fill the slots after the visible ones, in ascending patch order.
            let mut slot = k;
            for p in 0..num_patches {
                if !seen[p] {
                    restore[b * num_patches + p] = (b * num_patches + slot) as u32;
                    slot += 1;
                }
            }
        }
        Ok(Self {
            batch,
            num_patches,
            keep_flat: Tensor::from_vec(keep_flat, batch * k, device)?,
            restore_flat: Tensor::from_vec(restore, batch * num_patches, device)?,
            mask: Tensor::from_vec(mask, (batch, num_patches), device)?,
            keep,
        })
    }

    /// MAE random masking: each sample hides `round(mask_ratio * num_patches)` random patches.
    pub fn random(
        batch: usize,
        num_patches: usize,
        mask_ratio: f64,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Self> {
        let keep_n =
            num_patches - ((mask_ratio * num_patches as f64).round() as usize).min(num_patches - 1);
        let keep = (0..batch)
            .map(|_| {
                let mut perm: Vec<usize> = (0..num_patches).collect();
                perm.shuffle(rng);
                perm.truncate(keep_n);
                perm
            })
            .collect();
        Self::from_keep(keep, num_patches, device)
    }

    pub fn num_keep(&self) -> usize {
        self.keep.first().map(|v| v.len()).unwrap_or(0)
    }
}
