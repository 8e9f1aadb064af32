//! MA-CMF memory (MPMA, after R2GenCMN's cross-modal memory): a learnable matrix `M [slots, d]`
//! (init N(0, 1/d)) read by multi-head attention that keeps only the top-k scores per query.
//!
//! In the fusion stack either the report's tokens query the memory (the method spec) and the
//! response is added to them before they attend to the image, or the image tokens (the keys/values
//! of the text->image cross-attention) query it and the response is added to them; see
//! [`crate::config::MemoryQuery`].

use crate::config::MemoryConfig;
use crate::nn::{softmax_last_dim, Linear};
use candle_core::{DType, Module, Result, Tensor, D};
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
                                                                              // Top-k per query row, chosen on detached scores; gather keeps the gradient of the chosen.
        let flat: Vec<f32> = scores.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let rows = b * h * l;
        let mut idx = Vec::with_capacity(rows * k_top);
        let mut val_idx = Vec::with_capacity(rows * k_top);
        let mut order: Vec<u32> = (0..m as u32).collect();
        for r in 0..rows {
            let row = &flat[r * m..(r + 1) * m];
            order.sort_unstable_by(|&a, &c| {
                row[c as usize].partial_cmp(&row[a as usize]).unwrap_or(std::cmp::Ordering::Equal)
            });
            let head = ((r / l) % h) as u32;
            for &j in &order[..k_top] {
                idx.push(j);
                val_idx.push(head * m as u32 + j);
            }
        }
        let dev = x.device();
        let idx = Tensor::from_vec(idx, (b, h, l, k_top), dev)?;
        let top = scores.contiguous()?.gather(&idx, D::Minus1)?; // [b, h, l, k]
        let w = softmax_last_dim(&top)?;
        let picked = vals
            .reshape((h * m, dh))?
            .index_select(&Tensor::from_vec(val_idx, rows * k_top, dev)?, 0)?
            .reshape((b, h, l, k_top, dh))?;
        let y = w.unsqueeze(D::Minus1)?.broadcast_mul(&picked)?.sum(3)?; // [b, h, l, dh]
        let y = y.transpose(1, 2)?.reshape((b, l, self.dim))?;
        self.output.forward(&y)
    }

    pub fn reads_layer(&self, layer: usize) -> bool {
        self.config.layers.is_empty() || self.config.layers.contains(&layer)
    }
}
