//! Multi-head attention (self or cross) with padding masks, returning its probabilities on request.

use super::fused::attention::attention;
use super::Linear;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Additive value for masked keys: large enough that `exp` underflows to exactly 0 in f32 and f64,
/// finite so that a fully masked row gives a uniform distribution instead of NaN.
const MASK_VALUE: f64 = -1e9;

/// Turn a `[batch, keys]` 0/1 attention mask (1 = attend) into an additive `[batch, 1, 1, keys]` mask.
pub fn additive_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, k) = mask.dims2()?;
    let m = mask.to_dtype(dtype)?;
    // (m - 1) * 1e9: 0 where m = 1, -1e9 where m = 0
    ((m - 1.0)? * (-MASK_VALUE))?.reshape((b, 1, 1, k))
}

/// `query`, `key`, `value` projections and an output projection, `num_heads` heads.
#[derive(Clone, Debug)]
pub struct Attention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    pub num_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `vb_qkv` holds `query`/`key`/`value`; `vb_out` is the output projection itself.
    /// `kv_dim` is the width of the attended sequence (differs from `dim` in cross-attention).
    pub fn new(dim: usize, kv_dim: usize, num_heads: usize, vb_qkv: VarBuilder, vb_out: VarBuilder) -> Result<Self> {
        if !dim.is_multiple_of(num_heads) {
            candle_core::bail!("attention width {dim} is not divisible by {num_heads} heads");
        }
        Ok(Self {
            query: Linear::new(dim, dim, true, vb_qkv.pp("query"))?,
            key: Linear::new(kv_dim, dim, true, vb_qkv.pp("key"))?,
            value: Linear::new(kv_dim, dim, true, vb_qkv.pp("value"))?,
            output: Linear::new(dim, dim, true, vb_out)?,
            num_heads,
            head_dim: dim / num_heads,
        })
    }

    /// The attended values before the output projection, `[b, lq, dim]` (heads concatenated), and
    /// the probabilities `[b, heads, lq, lk]`: `a_i = sum_j A_ij v(t_j)` (used to score patches by
    /// their response to a report, AttMIM).
    pub fn attend(&self, x: &Tensor, context: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let q = self.query.forward(x)?;
        let k = self.key.forward(context)?;
        let v = self.value.forward(context)?;
        attention(&q, &k, &v, self.num_heads, mask)
    }

    /// `x`: `[b, lq, dim]` queries; `context`: `[b, lk, kv_dim]` (None = self-attention);
    /// `mask`: additive `[b, 1, 1|lq, lk]` (see [`additive_mask`]).
    /// Returns the projected output and, when `return_probs`, the `[b, heads, lq, lk]` probabilities.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        return_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (y, probs) = self.attend(x, context.unwrap_or(x), mask)?;
        let y = self.output.forward(&y)?;
        Ok((y, if return_probs { Some(probs) } else { None }))
    }
}
