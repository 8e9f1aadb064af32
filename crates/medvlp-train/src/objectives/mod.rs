//! Pre-training objectives shared by the method recipes.

pub mod attmim;
pub mod contrastive;
pub mod itm;
pub mod local;
pub mod mim;
pub mod mlm;
pub mod text_masking;

use candle_core::{Result, Tensor, D};
use medvlp_model::nn::log_softmax_last_dim;

/// Mean cross-entropy of `logits` `[n, classes]` against class indices `targets` `[n]` (u32);
/// the fused softmax-cross-entropy kernel on the CPU.
pub use medvlp_model::nn::cross_entropy;

/// Mean over rows of `-sum_j targets_ij log softmax(logits)_ij` for soft target distributions.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lsm = log_softmax_last_dim(logits)?;
    (lsm * targets)?.sum(D::Minus1)?.neg()?.mean_all()
}
