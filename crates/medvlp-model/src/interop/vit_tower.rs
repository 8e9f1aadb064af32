//! A Vision Transformer read from any of the field's layouts (OpenAI CLIP, Hugging Face CLIP and
//! ViT, open_clip, timm): patch projection (bias optional), class token, positions, optional
//! `ln_pre`, pre-LN blocks, final norm before or after pooling, class-token or mean pooling, head.

use crate::interop::layers::{l2, Block, Head};
use crate::nn::fused::linear::{linear_with_cache, PackCache};
use crate::nn::{Activation, LayerNorm};
use anyhow::Result;
use candle_core::{Module, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPool {
    /// The class token.
    Cls,
    /// Mean of the patch tokens (prefix tokens excluded).
    Avg,
}

#[derive(Clone, Debug)]
pub struct VitTower {
    pub image_size: usize,
    pub channels: usize,
    pub patch_size: usize,
    /// `[width, c * p * p]`.
    pub patch_weight: Tensor,
    pub patch_bias: Option<Tensor>,
    /// `patch_weight` packed for inference (see [`PackCache`]).
    pub patch_packed: PackCache,
    /// `[1, width]`.
    pub class_embedding: Tensor,
    /// `[1 + patches, width]`.
    pub positional_embedding: Tensor,
    pub ln_pre: Option<LayerNorm>,
    pub blocks: Vec<Block>,
    /// Final norm (`ln_post`, `norm`, `layernorm`, `post_layernorm`).
    pub norm: Option<LayerNorm>,
    /// Apply `norm` to the pooled vector instead of every token (open_clip's
    /// `final_ln_after_pool`; OpenAI's `ln_post` on the class token is the same either way).
    pub norm_after_pool: bool,
    pub pool: TokenPool,
    /// timm's `fc_norm` after pooling.
    pub fc_norm: Option<LayerNorm>,
    pub head: Head,
}

impl VitTower {
    pub fn width(&self) -> usize {
        self.patch_weight.dims()[0]
    }

    /// Projected image features `[b, dim]` (not normalised).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        if c != self.channels || h != self.image_size || w != self.image_size {
            anyhow::bail!(
                "the image encoder expects [b, {}, {}, {}], got {:?}",
                self.channels,
                self.image_size,
                self.image_size,
                pixel_values.dims()
            );
        }
        let patches = crate::vit::patchify(pixel_values, self.patch_size)?;
        let (_, n, pd) = patches.dims3()?;
        let d = self.width();
        let x = linear_with_cache(
            &patches.reshape((b * n, pd))?,
            &self.patch_weight,
            self.patch_bias.as_ref(),
            Activation::Identity,
            Some(&self.patch_packed),
        )?
        .reshape((b, n, d))?;
        let cls = self.class_embedding.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.positional_embedding)?;
        if let Some(ln) = &self.ln_pre {
            x = ln.forward(&x)?;
        }
        // Class-token pooling reads only the class token: the last block computes that token
        // alone (a per-token final norm gives the same value before or after pooling).
        let last = match (self.pool, self.blocks.split_last()) {
            (TokenPool::Cls, Some((last, _))) => Some(last),
            _ => None,
        };
        for blk in &self.blocks[..self.blocks.len() - last.is_some() as usize] {
            x = blk.forward(&x, None)?;
        }
        if let Some(last) = last {
            x = last.forward_first(&x)?;
        }
        let norm_tokens = !self.norm_after_pool;
        if let (Some(ln), true) = (&self.norm, norm_tokens) {
            x = ln.forward(&x)?;
        }
        let mut pooled = match self.pool {
            TokenPool::Cls => x.narrow(1, 0, 1)?.squeeze(1)?,
            TokenPool::Avg => x.narrow(1, 1, n)?.mean(1)?,
        };
        if let (Some(ln), false) = (&self.norm, norm_tokens) {
            pooled = ln.forward(&pooled)?;
        }
        if let Some(ln) = &self.fc_norm {
            pooled = ln.forward(&pooled)?;
        }
        Ok(self.head.forward(&pooled)?)
    }

    pub fn embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(l2(&self.forward(pixel_values)?)?)
    }
}
