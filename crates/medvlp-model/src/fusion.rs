//! Cross-modal fusion block (M3AE's co-attention layer, pre-LN): self-attention, cross-attention
//! to the other modality, MLP. Returns the cross-attention probabilities on request. The same block
//! (with or without its cross-attention) builds the MAE decoder.

use crate::nn::{Attention, LayerNorm, Mlp};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct FusionLayer {
    pub layernorm_before: LayerNorm,
    pub attention: Attention,
    /// Absent in decoder blocks that do not look at the other modality.
    pub cross: Option<(LayerNorm, Attention)>,
    pub layernorm_after: LayerNorm,
    pub mlp: Mlp,
}

/// What one fusion layer produced.
pub struct FusionOutput {
    pub hidden: Tensor,
    /// `[b, heads, queries, context]` cross-attention probabilities (when asked for).
    pub cross_probs: Option<Tensor>,
}

impl FusionLayer {
    /// `context_dim`: width of the other modality's tokens; `None` builds a plain pre-LN block.
    pub fn new(
        dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        mlp: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let att = vb.pp("attention");
        let cross = match context_dim {
            Some(cd) => {
                let ca = vb.pp("crossattention");
                Some((
                    LayerNorm::new(dim, eps, vb.pp("layernorm_cross"))?,
                    Attention::new(dim, cd, heads, ca.pp("self"), ca.pp("output").pp("dense"))?,
                ))
            }
            None => None,
        };
        Ok(Self {
            layernorm_before: LayerNorm::new(dim, eps, vb.pp("layernorm_before"))?,
            attention: Attention::new(
                dim,
                dim,
                heads,
                att.pp("self"),
                att.pp("output").pp("dense"),
            )?,
            cross,
            layernorm_after: LayerNorm::new(dim, eps, vb.pp("layernorm_after"))?,
            mlp: Mlp::new(
                dim,
                mlp,
                vb.pp("intermediate").pp("dense"),
                vb.pp("output").pp("dense"),
            )?,
        })
    }

    /// `x`: `[b, lq, dim]` with additive `self_mask`; `context`: `[b, lk, context_dim]` with additive
    /// `context_mask` (see [`crate::nn::additive_mask`]).
    pub fn forward(
        &self,
        x: &Tensor,
        self_mask: Option<&Tensor>,
        context: Option<&Tensor>,
        context_mask: Option<&Tensor>,
        return_probs: bool,
    ) -> Result<FusionOutput> {
        let (a, _) =
            self.attention.forward(&self.layernorm_before.forward(x)?, None, self_mask, false)?;
        let mut x = (x + a)?;
        let mut cross_probs = None;
        // Without a context (e.g. an MAE decoder run on image-only data) the cross-attention is skipped.
        if let (Some((ln, cross)), Some(ctx)) = (&self.cross, context) {
            let (c, p) = cross.forward(&ln.forward(&x)?, Some(ctx), context_mask, return_probs)?;
            x = (x + c)?;
            cross_probs = p;
        }
        let m = self.mlp.forward(&self.layernorm_after.forward(&x)?)?;
        Ok(FusionOutput { hidden: (x + m)?, cross_probs })
    }
}
