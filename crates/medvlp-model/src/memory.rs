//! MA-CMF memory (MPMA, after R2GenCMN's cross-modal memory): a learnable matrix `M [slots, d]`
//! (init N(0, 1/d)) read by multi-head attention that keeps only the top-k scores per query.
//!
//! In the fusion stack either the report's tokens query the memory (the method spec) and the
//! response is added to them before they attend to the image, or the image tokens (the keys/values
//! of the text->image cross-attention) query it and the response is added to them; see
//! [`crate::config::MemoryQuery`].

use crate::config::MemoryConfig;
use crate::nn::{softmax_last_dim, Linear};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

#[derive(Clone, Debug)]
pub struct CrossModalMemory {
    pub config: MemoryConfig,
    pub memory: Tensor,
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    pub dim: usize,
}

impl CrossModalMemory {
    /// `in_dim`: width of the tokens that read the memory; `dim`: memory width.
    pub fn new(c: &MemoryConfig, in_dim: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        if !dim.is_multiple_of(c.num_heads) || c.top_k == 0 || c.top_k > c.slots {
            candle_core::bail!(
                "memory: width {dim} must divide into {} heads and 0 < top_k {} <= slots {}",
                c.num_heads,
                c.top_k,
                c.slots
            );
        }
        Ok(Self {
            config: c.clone(),
            memory: vb.get_with_hints(
                (c.slots, dim),
                "memory",
                Init::Randn { mean: 0.0, stdev: 1.0 / (dim as f64).sqrt() },
            )?,
            query: Linear::new(in_dim, dim, true, vb.pp("query"))?,
            key: Linear::new(dim, dim, true, vb.pp("key"))?,
            value: Linear::new(dim, dim, true, vb.pp("value"))?,
            output: Linear::new(dim, in_dim, true, vb.pp("output"))?,
            dim,
        })
    }

    /// Response `[b, l, in_dim]` of queries `x` `[b, l, in_dim]`.
    pub fn read(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let h = self.config.num_heads;
        let dh = self.dim / h;
        let m = self.config.slots;
        let k_top = self.config.top_k;
        let q = self.query.forward(x)?.reshape((b, l, h, dh))?.transpose(1, 2)?.contiguous()?; // [b, h, l, dh]
        let keys =
            self.key.forward(&self.memory)?.reshape((m, h, dh))?.transpose(0, 1)?.contiguous()?; // [h, m, dh]
        let vals =
            self.value.forward(&self.memory)?.reshape((m, h, dh))?.transpose(0, 1)?.contiguous()?; // [h, m, dh]
        let scores = (q.broadcast_matmul(&keys.t()?)? / (dh as f64).sqrt())?; // [b, h, l, m]
                                                                              // Top-k per query row, chosen on detached scores on the scores' device (no copy to the
                                                                              // host inside a step); gather keeps the gradient of the chosen.
        let dev = x.device();
        let idx = scores
            .detach()
            .contiguous()?
            .arg_sort_last_dim(false)?
            .narrow(D::Minus1, 0, k_top)?
            .contiguous()?; // [b, h, l, k] u32
                            // Row of head `hd`'s slot `j` in the `[h * m, dh]` values: hd * m + j.
        let head_base =
            Tensor::arange(0u32, h as u32, dev)?.affine(m as f64, 0.0)?.reshape((1, h, 1, 1))?;
        let val_idx = idx.broadcast_add(&head_base)?.flatten_all()?;
        let top = scores.contiguous()?.gather(&idx, D::Minus1)?; // [b, h, l, k]
        let w = softmax_last_dim(&top)?;
        let picked =
            vals.reshape((h * m, dh))?.index_select(&val_idx, 0)?.reshape((b, h, l, k_top, dh))?;
        let y = w.unsqueeze(D::Minus1)?.broadcast_mul(&picked)?.sum(3)?; // [b, h, l, dh]
        let y = y.transpose(1, 2)?.reshape((b, l, self.dim))?;
        self.output.forward(&y)
    }

    pub fn reads_layer(&self, layer: usize) -> bool {
        self.config.layers.is_empty() || self.config.layers.contains(&layer)
    }
}
