//! Inference layers shared by the imported families: the pre-LN transformer block every CLIP,
//! open_clip, timm and Hugging Face ViT uses (with separate or packed q/k/v), and projection heads
//! as a sequence of linear / BatchNorm / activation layers (CLIP's `proj`, open_clip's MLP head,
//! MGCA's `GlobalEmbedding`, a Hugging Face pooler).

use crate::interop::state_dict::StateDict;
use crate::nn::{Activation, Attention, LayerNorm, Linear};
use anyhow::Result;
use candle_core::{Module, Tensor, D};

/// The MLP activation of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Exact (erf) GELU: `nn.GELU()`, Hugging Face `gelu`.
    Gelu,
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP.
    QuickGelu,
    Relu,
    Tanh,
    /// Hugging Face's `linear` activation.
    Identity,
}

impl Act {
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Act::Gelu,
            "quick_gelu" => Act::QuickGelu,
            "relu" => Act::Relu,
            "tanh" => Act::Tanh,
            "linear" => Act::Identity,
            other => anyhow::bail!("activation '{other}' is not supported (gelu, quick_gelu)"),
        })
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Act::Gelu => crate::nn::gelu_erf(x),
            Act::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Act::Relu => x.relu(),
            Act::Tanh => x.tanh(),
            Act::Identity => Ok(x.clone()),
        }
    }
}

/// A linear layer whose bias may be absent.
pub fn linear_opt_bias(
    sd: &StateDict,
    prefix: &str,
    out_dim: usize,
    in_dim: usize,
) -> Result<Linear> {
    Ok(Linear::from_parts(
        sd.take(&format!("{prefix}weight"), &[out_dim, in_dim])?,
        sd.take_opt(&format!("{prefix}bias"), &[out_dim])?,
    ))
}

pub fn layer_norm(sd: &StateDict, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: sd.take(&format!("{prefix}weight"), &[dim])?,
        bias: sd.take(&format!("{prefix}bias"), &[dim])?,
        eps,
    })
}

/// q/k/v from one packed `[3d, d]` matrix (`nn.MultiheadAttention`'s `in_proj_weight`, timm's
/// `qkv`), in q, k, v order.
pub fn split_qkv(weight: &Tensor, bias: Option<&Tensor>, d: usize) -> Result<[Linear; 3]> {
    let part = |i: usize| -> Result<Linear> {
        Ok(Linear::from_parts(
            weight.narrow(0, i * d, d)?.contiguous()?,
            bias.map(|b| b.narrow(0, i * d, d)?.contiguous()).transpose()?,
        ))
    };
    Ok([part(0)?, part(1)?, part(2)?])
}

/// Pre-LN transformer block: `x + attn(ln_1(x))`, then `x + fc2(act(fc1(ln_2(x))))`.
#[derive(Clone, Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub act: Act,
}

impl Block {
    pub fn attention(
        q: Linear,
        k: Linear,
        v: Linear,
        o: Linear,
        heads: usize,
    ) -> Result<Attention> {
        let d = q.out_dim();
        if heads == 0 || !d.is_multiple_of(heads) {
            anyhow::bail!("attention width {d} is not divisible by {heads} heads");
        }
        Ok(Attention {
            query: q,
            key: k,
            value: v,
            output: o,
            num_heads: heads,
            head_dim: d / heads,
        })
    }

    /// `mask`: additive `[b, 1, 1|l, l]`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (a, _) = self.attn.forward(&self.ln_1.forward(x)?, None, mask, false)?;
        let x = (x + a)?;
        let h = self.fc1.forward(&self.ln_2.forward(&x)?)?;
        let m = self.fc2.forward(&self.act.apply(&h)?)?;
        x + m
    }

    /// The block's output at the first token only, `[b, 1, width]` (class-token pooling): the
    /// query, output projection and MLP run on that token alone.
    pub fn forward_first(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.ln_1.forward(x)?;
        let (a, _) = self.attn.forward(&h.narrow(1, 0, 1)?, Some(&h), None, false)?;
        let x = (x.narrow(1, 0, 1)? + a)?;
        let h = self.fc1.forward(&self.ln_2.forward(&x)?)?;
        let m = self.fc2.forward(&self.act.apply(&h)?)?;
        x + m
    }
}

/// One layer of a projection head.
#[derive(Clone, Debug)]
pub enum HeadLayer {
    Linear(Linear),
    /// BatchNorm1d in inference mode (running statistics); affine parameters optional.
    BatchNorm {
        mean: Tensor,
        var: Tensor,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        eps: f64,
    },
    Act(Act),
}

/// A projection head: layers applied in order to `[b, d]`.
#[derive(Clone, Debug, Default)]
pub struct Head {
    pub layers: Vec<HeadLayer>,
}

impl Head {
    pub fn identity() -> Self {
        Self::default()
    }

    pub fn linear(l: Linear) -> Self {
        Self { layers: vec![HeadLayer::Linear(l)] }
    }

    /// A `[in, out]` matrix applied as `x @ proj` (CLIP's `proj` / `text_projection`).
    pub fn matrix(proj: &Tensor) -> Result<Self> {
        Ok(Self::linear(Linear::from_parts(proj.t()?.contiguous()?, None)))
    }

    pub fn out_dim(&self, in_dim: usize) -> usize {
        self.layers
            .iter()
            .rev()
            .find_map(|l| match l {
                HeadLayer::Linear(l) => Some(l.out_dim()),
                _ => None,
            })
            .unwrap_or(in_dim)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for l in &self.layers {
            x = match l {
                HeadLayer::Linear(l) => l.forward_act(&x, Activation::Identity)?,
                HeadLayer::BatchNorm { mean, var, weight, bias, eps } => {
                    let mut y = x.broadcast_sub(mean)?.broadcast_div(&(var + *eps)?.sqrt()?)?;
                    if let Some(w) = weight {
                        y = y.broadcast_mul(w)?;
                    }
                    if let Some(b) = bias {
                        y = y.broadcast_add(b)?;
                    }
                    y
                }
                HeadLayer::Act(a) => a.apply(&x)?,
            };
        }
        Ok(x)
    }
}

/// Reads an `nn.Sequential` head described by `kinds` (`linear`, `bn`, `relu`, `gelu`, `tanh`):
/// parameterised layers take their index in the sequence as key (`{prefix}{i}.weight`), as
/// PyTorch names them. `in_dim` is the input width; returns the head and its output width.
pub fn sequential_head(
    sd: &StateDict,
    prefix: &str,
    kinds: &[String],
    in_dim: usize,
) -> Result<(Head, usize)> {
    let mut layers = vec![];
    let mut d = in_dim;
    for (i, kind) in kinds.iter().enumerate() {
        let p = format!("{prefix}{i}.");
        match kind.as_str() {
            "linear" => {
                let w = sd.take_any(&format!("{p}weight"), &[0, d])?;
                let out = w.dim(0)?;
                let l = linear_opt_bias(sd, &p, out, d)?;
                d = out;
                layers.push(HeadLayer::Linear(l));
            }
            "bn" => {
                let mean = sd.take(&format!("{p}running_mean"), &[d])?;
                let var = sd.take(&format!("{p}running_var"), &[d])?;
                sd.skip(&format!("{p}num_batches_tracked"));
                let weight = sd.take_opt(&format!("{p}weight"), &[d])?;
                let bias = sd.take_opt(&format!("{p}bias"), &[d])?;
                layers.push(HeadLayer::BatchNorm { mean, var, weight, bias, eps: 1e-5 });
            }
            other => layers.push(HeadLayer::Act(Act::from_name(other).map_err(|_| {
                anyhow::anyhow!(
                    "head layer '{other}' is not one of linear, bn, relu, gelu, quick_gelu, tanh"
                )
            })?)),
        }
    }
    Ok((Head { layers }, d))
}

/// Rows of `x` (`[b, l, d]`) at `index` (`[b]` u32): `[b, d]`.
pub fn gather_rows(x: &Tensor, index: &Tensor) -> candle_core::Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    let offsets: Vec<u32> = (0..b).map(|i| (i * l) as u32).collect();
    let offsets = Tensor::from_vec(offsets, b, x.device())?;
    let flat = (index.to_dtype(candle_core::DType::U32)? + offsets)?;
    x.reshape((b * l, d))?.index_select(&flat, 0)
}

/// `x / ||x||` over the last dimension.
pub fn l2(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&n)
}

/// Parameter names of a pre-LN block in each layout the families use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockLayout {
    /// OpenAI CLIP / open_clip: `ln_1`, `attn.in_proj_*`, `attn.out_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`.
    OpenAi,
    /// Hugging Face CLIP: `layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`, `mlp.fc1`, `mlp.fc2`.
    HfClip,
    /// Hugging Face ViT: `layernorm_before`, `attention.attention.{query,key,value}`,
    /// `attention.output.dense`, `layernorm_after`, `intermediate.dense`, `output.dense`.
    HfVit,
    /// timm: `norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`.
    Timm,
}

/// Reads the block at `p` (ending in '.') of width `d`.
pub fn load_block(
    sd: &StateDict,
    p: &str,
    layout: BlockLayout,
    d: usize,
    heads: usize,
    act: Act,
    eps: f64,
) -> Result<Block> {
    let mlp_width =
        |key: &str| -> Result<usize> { Ok(sd.take_any(&format!("{p}{key}"), &[0, d])?.dim(0)?) };
    let (ln1, ln2, q, k, v, o, fc1, fc2) = match layout {
        BlockLayout::OpenAi | BlockLayout::Timm => {
            let (ln1, ln2, w, b, o, f1, f2) = if layout == BlockLayout::OpenAi {
                (
                    "ln_1.",
                    "ln_2.",
                    "attn.in_proj_weight",
                    "attn.in_proj_bias",
                    "attn.out_proj.",
                    "mlp.c_fc.",
                    "mlp.c_proj.",
                )
            } else {
                (
                    "norm1.",
                    "norm2.",
                    "attn.qkv.weight",
                    "attn.qkv.bias",
                    "attn.proj.",
                    "mlp.fc1.",
                    "mlp.fc2.",
                )
            };
            let w = sd.take(&format!("{p}{w}"), &[3 * d, d])?;
            let b = sd.take_opt(&format!("{p}{b}"), &[3 * d])?;
            let [q, k, v] = split_qkv(&w, b.as_ref(), d)?;
            let m = mlp_width(&format!("{f1}weight"))?;
            (
                layer_norm(sd, &format!("{p}{ln1}"), d, eps)?,
                layer_norm(sd, &format!("{p}{ln2}"), d, eps)?,
                q,
                k,
                v,
                linear_opt_bias(sd, &format!("{p}{o}"), d, d)?,
                linear_opt_bias(sd, &format!("{p}{f1}"), m, d)?,
                linear_opt_bias(sd, &format!("{p}{f2}"), d, m)?,
            )
        }
        BlockLayout::HfClip => {
            let m = mlp_width("mlp.fc1.weight")?;
            (
                layer_norm(sd, &format!("{p}layer_norm1."), d, eps)?,
                layer_norm(sd, &format!("{p}layer_norm2."), d, eps)?,
                linear_opt_bias(sd, &format!("{p}self_attn.q_proj."), d, d)?,
                linear_opt_bias(sd, &format!("{p}self_attn.k_proj."), d, d)?,
                linear_opt_bias(sd, &format!("{p}self_attn.v_proj."), d, d)?,
                linear_opt_bias(sd, &format!("{p}self_attn.out_proj."), d, d)?,
                linear_opt_bias(sd, &format!("{p}mlp.fc1."), m, d)?,
                linear_opt_bias(sd, &format!("{p}mlp.fc2."), d, m)?,
            )
        }
        BlockLayout::HfVit => {
            let m = mlp_width("intermediate.dense.weight")?;
            (
                layer_norm(sd, &format!("{p}layernorm_before."), d, eps)?,
                layer_norm(sd, &format!("{p}layernorm_after."), d, eps)?,
                linear_opt_bias(sd, &format!("{p}attention.attention.query."), d, d)?,
                linear_opt_bias(sd, &format!("{p}attention.attention.key."), d, d)?,
                linear_opt_bias(sd, &format!("{p}attention.attention.value."), d, d)?,
                linear_opt_bias(sd, &format!("{p}attention.output.dense."), d, d)?,
                linear_opt_bias(sd, &format!("{p}intermediate.dense."), m, d)?,
                linear_opt_bias(sd, &format!("{p}output.dense."), d, m)?,
            )
        }
    };
    Ok(Block { ln_1: ln1, attn: Block::attention(q, k, v, o, heads)?, ln_2: ln2, fc1, fc2, act })
}

/// `n` blocks `{prefix}{i}.`.
pub fn load_blocks(
    sd: &StateDict,
    prefix: &str,
    layout: BlockLayout,
    d: usize,
    heads: usize,
    act: Act,
    eps: f64,
) -> Result<Vec<Block>> {
    let n = sd.count_layers(prefix);
    if n == 0 {
        anyhow::bail!("{}: no transformer blocks under {prefix}", sd.path.display());
    }
    (0..n).map(|i| load_block(sd, &format!("{prefix}{i}."), layout, d, heads, act, eps)).collect()
}

/// A table given as `[n, d]` or `[1, n, d]` (timm/HF keep a leading 1) as `[n, d]`.
pub fn table(sd: &StateDict, key: &str, d: usize) -> Result<Tensor> {
    let t = sd.take_any(key, &[0, d])?;
    let t = if t.rank() == 3 && t.dim(0)? == 1 { t.squeeze(0)? } else { t };
    if t.rank() != 2 || t.dim(1)? != d {
        anyhow::bail!("{}: {key} has shape {:?}, expected [n, {d}]", sd.path.display(), t.dims());
    }
    Ok(t)
}
