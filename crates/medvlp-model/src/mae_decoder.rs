//! MAE decoder: embeds the visible tokens, inserts mask tokens, restores patch order, adds fixed
//! sin-cos positions, runs a small transformer (optionally cross-attending to text), and predicts
//! the pixels of every patch. Names follow MAE (`decoder_embed`, `mask_token`, `decoder_blocks`, ...).

use crate::config::{DecoderConfig, VisionConfig};
use crate::fusion::FusionLayer;
use crate::masking::PatchMask;
use crate::nn::{LayerNorm, Linear};
use crate::vit::sincos_2d;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Clone, Debug)]
pub struct MaeDecoder {
    pub config: DecoderConfig,
    pub num_patches: usize,
    pub decoder_embed: Linear,
    pub mask_token: Tensor,
    pub pos_embed: Tensor,
    pub blocks: Vec<FusionLayer>,
    pub decoder_norm: LayerNorm,
    pub decoder_pred: Linear,
}

impl MaeDecoder {
    /// `text_dim`: width of the text features the blocks cross-attend to (when configured).
    pub fn new(
        c: &DecoderConfig,
        vision: &VisionConfig,
        text_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = c.hidden_size;
        let ctx = if c.cross_attention { Some(text_dim) } else { None };
        let blocks = (0..c.num_layers)
            .map(|i| {
                FusionLayer::new(
                    d,
                    ctx,
                    c.num_attention_heads,
                    c.intermediate_size,
                    1e-6,
                    vb.pp("decoder_blocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: c.clone(),
            num_patches: vision.num_patches(),
            decoder_embed: Linear::new(vision.hidden_size, d, true, vb.pp("decoder_embed"))?,
            mask_token: vb.get_with_hints(
                (1, 1, d),
                "mask_token",
                Init::Randn { mean: 0.0, stdev: 0.02 },
            )?,
            pos_embed: sincos_2d(d, vision.grid(), true, vb.dtype(), vb.device())?,
            blocks,
            decoder_norm: LayerNorm::new(d, 1e-6, vb.pp("decoder_norm"))?,
            decoder_pred: Linear::new(d, vision.patch_dim(), true, vb.pp("decoder_pred"))?,
        })
    }

    /// `latent`: encoder output `[b, 1 + keep, vision_width]` (CLS first) for `mask`;
    /// `text`: optional `(features [b, l, text_dim], additive mask)` for cross-attention.
    /// Returns predictions `[b, patches, patch_dim]` in the original patch order.
    pub fn forward(
        &self,
        latent: &Tensor,
        mask: &PatchMask,
        text: Option<(&Tensor, Option<&Tensor>)>,
    ) -> Result<Tensor> {
        let x = self.decoder_embed.forward(latent)?;
        let (b, l, d) = x.dims3()?;
        let n = self.num_patches;
        let keep = l - 1;
        let cls = x.narrow(1, 0, 1)?;
        let vis = x.narrow(1, 1, keep)?;
        let full = if keep < n {
            let m = self.mask_token.broadcast_as((b, n - keep, d))?;
            Tensor::cat(&[&vis, &m], 1)?
        } else {
            vis
        };
        let full =
            full.reshape((b * n, d))?.index_select(&mask.restore_flat, 0)?.reshape((b, n, d))?;
        let mut h = Tensor::cat(&[&cls, &full], 1)?.broadcast_add(&self.pos_embed)?;
        let (ctx, ctx_mask) = match text {
            Some((t, m)) => (Some(t), m),
            None => (None, None),
        };
        for blk in &self.blocks {
            h = blk.forward(&h, None, ctx, ctx_mask, false)?.hidden;
        }
        let h = self.decoder_norm.forward(&h)?;
        self.decoder_pred.forward(&h.narrow(1, 1, n)?)
    }
}
