//! Masked language modelling loss: cross-entropy over the vocabulary on masked positions only.

use super::cross_entropy;
use candle_core::{Result, Tensor};

/// Pick the rows of `hidden` `[b, l, d]` at flat positions `positions` (`b * l + t`, u32) -> `[n, d]`.
pub fn gather_positions(hidden: &Tensor, positions: &Tensor) -> Result<Tensor> {
    let (b, l, d) = hidden.dims3()?;
    hidden.reshape((b * l, d))?.index_select(positions, 0)
}

/// `logits`: `[n, vocab]` for the masked positions; `labels`: `[n]` original token ids (u32).
pub fn mlm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    cross_entropy(logits, labels)
}
