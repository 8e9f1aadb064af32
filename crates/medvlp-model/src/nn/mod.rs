//! The project's own layers. Everything here records a backward op (see [`ops`]); candle-nn's
//! `LayerNorm` / `softmax_last_dim` / `rms_norm` fast paths are never used where gradients flow.

pub mod attention;
pub mod conv;
pub mod fused;
pub mod ops;
pub mod precision;

pub use attention::{additive_mask, Attention, TokenPacking};
pub use conv::{Conv2d, Window};
pub use fused::cross_entropy::cross_entropy;
pub use fused::linear::{linear, Activation};
pub use ops::{gelu_erf, layer_norm, layer_norm_gelu, log_softmax_last_dim, softmax_last_dim};
pub use precision::{with_precision, Precision};

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// Weight initialisation used across the model: N(0, 0.02) as BERT and ViT do.
pub const INIT_STD: f64 = 0.02;

/// Dense layer `y = x W^T + b` with a `[out, in]` weight (PyTorch / Hugging Face layout).
/// Leading dimensions are flattened into one GEMM; the bias is added in the GEMM (fused op).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// The weight packed for bf16 inference (filled on first use; see [`fused::linear::PackCache`]).
    pub packed: fused::linear::PackCache,
}

impl Linear {
    /// A layer with these parameters.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias, packed: Default::default() }
    }

    /// `act(x W^T + b)` with the activation fused into the same op.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        fused::linear::linear_with_cache(
            x,
            &self.weight,
            self.bias.as_ref(),
            act,
            Some(&self.packed),
        )
    }

    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            Init::Randn { mean: 0.0, stdev: INIT_STD },
        )?;
        let bias =
            if bias { Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self::from_parts(weight, bias))
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }
}

/// LayerNorm with Hugging Face names (`weight`, `bias`) and a verified backward pass.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Embedding table `[vocab, dim]` (`weight`), looked up with `index_select` (differentiable).
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(vocab: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight =
            vb.get_with_hints((vocab, dim), "weight", Init::Randn { mean: 0.0, stdev: INIT_STD })?;
        Ok(Self { weight })
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        fused::embedding::embedding(&self.weight, ids)
    }
}

/// Two-layer MLP `fc2(gelu(fc1(x)))` used by the transformer blocks.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    /// `vb_in` / `vb_out` name the two layers (Hugging Face keeps them under different parents).
    pub fn new(dim: usize, hidden: usize, vb_in: VarBuilder, vb_out: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(dim, hidden, true, vb_in)?,
            fc2: Linear::new(hidden, dim, true, vb_out)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_act(x, Activation::Gelu)?)
    }
}
