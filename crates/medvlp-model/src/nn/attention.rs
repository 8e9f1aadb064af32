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

/// The real (non-padding) tokens of a padded `[b, l]` batch, so that position-wise layers can run
/// on `[tokens, d]` instead of `[b * l, d]`: reports vary in length, and a batch padded to its
/// longest report is often half padding (quickstart data: 36 words on average, 128 at most).
/// Only attention needs the padded layout back.
#[derive(Clone, Debug)]
pub struct TokenPacking {
    /// Flat positions (`row * l + t`) of the real tokens, `[tokens]` u32.
    pub index: Tensor,
    /// For every flat position its packed row; padding points at row 0 (attention masks those
    /// keys, and outputs at padded queries are dropped again by [`TokenPacking::pack`]).
    pub unpack_index: Tensor,
    /// The same with padding pointing at an extra zero row (index `tokens`).
    pub unpack_zero_index: Tensor,
    pub batch: usize,
    pub len: usize,
    pub tokens: usize,
}

impl TokenPacking {
    /// `None` when `attention_mask` (`[b, l]`, 1 = token) has no padding or no token at all.
    pub fn new(attention_mask: &Tensor) -> Result<Option<Self>> {
        let (b, l) = attention_mask.dims2()?;
        let m: Vec<f32> = attention_mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let index: Vec<u32> = (0..b * l).filter(|&i| m[i] > 0.5).map(|i| i as u32).collect();
        let n = index.len();
        if n == b * l || n == 0 {
            return Ok(None);
        }
        let (mut un, mut unz) = (vec![0u32; b * l], vec![n as u32; b * l]);
        for (row, &pos) in index.iter().enumerate() {
            un[pos as usize] = row as u32;
            unz[pos as usize] = row as u32;
        }
        let dev = attention_mask.device();
        Ok(Some(Self {
            index: Tensor::from_vec(index, n, dev)?,
            unpack_index: Tensor::from_vec(un, b * l, dev)?,
            unpack_zero_index: Tensor::from_vec(unz, b * l, dev)?,
            batch: b,
            len: l,
            tokens: n,
        }))
    }

    /// `[b, l, d]` -> `[tokens, d]`.
    pub fn pack(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(2)?;
        x.reshape((self.batch * self.len, d))?.index_select(&self.index, 0)
    }

    /// `[tokens, d]` -> `[b, l, d]` for attention (padding holds copies of a real token).
    pub fn unpack_for_attention(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(1)?;
        x.index_select(&self.unpack_index, 0)?.reshape((self.batch, self.len, d))
    }

    /// `[tokens, d]` -> `[b, l, d]` with zeros at the padding.
    pub fn unpack(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(1)?;
        let x = Tensor::cat(&[x, &Tensor::zeros((1, d), x.dtype(), x.device())?], 0)?;
        x.index_select(&self.unpack_zero_index, 0)?.reshape((self.batch, self.len, d))
    }
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
    pub fn new(
        dim: usize,
        kv_dim: usize,
        num_heads: usize,
        vb_qkv: VarBuilder,
        vb_out: VarBuilder,
    ) -> Result<Self> {
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
    pub fn attend(
        &self,
        x: &Tensor,
        context: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let q = self.query.forward(x)?;
        let k = self.key.forward(context)?;
        let v = self.value.forward(context)?;
        attention(&q, &k, &v, self.num_heads, mask)
    }

    /// Self-attention over packed tokens `x` (`[tokens, dim]`, see [`TokenPacking`]); `mask` is
    /// the padded batch's additive mask. Returns the packed output and, when asked, the
    /// `[b, heads, l, l]` probabilities.
    pub fn forward_packed(
        &self,
        x: &Tensor,
        packing: &TokenPacking,
        mask: Option<&Tensor>,
        return_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let [q, k, v] = [&self.query, &self.key, &self.value]
            .map(|l| l.forward(x).and_then(|t| packing.unpack_for_attention(&t)));
        let (y, probs) = attention(&q?, &k?, &v?, self.num_heads, mask)?;
        let y = self.output.forward(&packing.pack(&y)?)?;
        Ok((y, if return_probs { Some(probs) } else { None }))
    }

    /// Queries `x` (`[b, lq, dim]`, padded layout) against the keys and values of the packed
    /// tokens `context` (`[tokens, dim]`, see [`TokenPacking`]): the projected output
    /// `[b, lq, dim]`. Keys and values are projected on the real tokens only.
    pub fn forward_packed_context(
        &self,
        x: &Tensor,
        context: &Tensor,
        packing: &TokenPacking,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let [k, v] = [&self.key, &self.value]
            .map(|l| l.forward(context).and_then(|t| packing.unpack_for_attention(&t)));
        let (y, _) = attention(&self.query.forward(x)?, &k?, &v?, self.num_heads, mask)?;
        self.output.forward(&y)
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
