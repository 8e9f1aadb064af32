//! Projection heads to the joint space and the masked-language-modelling head.

use crate::config::{ProjectionKind, TextConfig};
use crate::nn::{Activation, LayerNorm, Linear};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// `x / max(||x||, 1e-12)` over the last dimension (torch's `F.normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&n)
}

/// Linear (no bias, as CLIP) or 2-layer MLP (`fc1` -> GELU -> `fc2`) projection.
#[derive(Clone, Debug)]
pub enum ProjectionHead {
    Linear(Linear),
    Mlp { fc1: Linear, fc2: Linear },
}

impl ProjectionHead {
    pub fn new(
        kind: ProjectionKind,
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(match kind {
            ProjectionKind::Linear => Self::Linear(Linear::new(in_dim, out_dim, false, vb)?),
            ProjectionKind::Mlp => Self::Mlp {
                fc1: Linear::new(in_dim, in_dim, true, vb.pp("fc1"))?,
                fc2: Linear::new(in_dim, out_dim, true, vb.pp("fc2"))?,
            },
        })
    }
}

impl Module for ProjectionHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Linear(l) => l.forward(x),
            Self::Mlp { fc1, fc2 } => fc2.forward(&fc1.forward_act(x, Activation::Gelu)?),
        }
    }
}

/// Hugging Face `BertOnlyMLMHead` (`transform.dense`, `transform.LayerNorm`, `bias`); the vocabulary
/// projection is the word-embedding matrix (tied weights), passed in at call time.
#[derive(Clone, Debug)]
pub struct MlmHead {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
    pub bias: Tensor,
}

impl MlmHead {
    pub fn new(c: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense: Linear::new(c.hidden_size, c.hidden_size, true, vb.pp("transform").pp("dense"))?,
            layer_norm: LayerNorm::new(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("transform").pp("LayerNorm"),
            )?,
            bias: vb.get_with_hints(c.vocab_size, "bias", Init::Const(0.0))?,
        })
    }

    /// `hidden`: `[n, hidden]` states of the masked positions; `word_embeddings`: `[vocab, hidden]`.
    /// Returns `[n, vocab]` logits.
    pub fn forward(&self, hidden: &Tensor, word_embeddings: &Tensor) -> Result<Tensor> {
        crate::nn::linear(
            &self.transform(hidden)?,
            word_embeddings,
            Some(&self.bias),
            Activation::Identity,
        )
    }

    /// `dense` -> GELU -> LayerNorm, before the vocabulary projection.
    pub fn transform(&self, hidden: &Tensor) -> Result<Tensor> {
        self.layer_norm.forward(&self.dense.forward_act(hidden, Activation::Gelu)?)
    }

    /// Mean cross-entropy of the predictions for `hidden` against `labels` `[n]` (u32), with the
    /// vocabulary projection fused into the loss (the `[n, vocab]` logits are not kept).
    pub fn loss(
        &self,
        hidden: &Tensor,
        word_embeddings: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor> {
        crate::nn::fused::cross_entropy::linear_cross_entropy(
            &self.transform(hidden)?,
            word_embeddings,
            &self.bias,
            labels,
        )
    }
}
