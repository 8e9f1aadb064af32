//! ViT image encoder with Hugging Face `ViTModel` parameter names: pre-LN blocks, CLS token,
//! learned or fixed 2-D sin-cos positions, and MAE-style encoding of a per-sample patch subset.

use crate::config::{PositionEmbedding, VisionConfig};
use crate::masking::PatchMask;
use crate::nn::fused::linear::{linear_with_cache, PackCache};
use crate::nn::{Attention, LayerNorm, Mlp};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// `[b, c, h, w]` -> `[b, patches, c * p * p]`, patch features ordered (channel, row, column) to
/// match a flattened `[width, c, p, p]` convolution kernel. Patches are in row-major grid order.
pub fn patchify(pixel_values: &Tensor, patch: usize) -> Result<Tensor> {
    let (b, c, h, w) = pixel_values.dims4()?;
    let (gh, gw) = (h / patch, w / patch);
    pixel_values.reshape(&[b, c, gh, patch, gw, patch][..])?.permute([0, 2, 4, 1, 3, 5])?.reshape((
        b,
        gh * gw,
        c * patch * patch,
    ))
}

/// Fixed 2-D sin-cos position table `[1 + grid*grid, dim]`, zero row for the CLS token (MAE).
pub fn sincos_2d(
    dim: usize,
    grid: usize,
    with_cls: bool,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if !dim.is_multiple_of(4) {
        candle_core::bail!("sin-cos position embedding needs a width divisible by 4, got {dim}");
    }
    let quarter = dim / 4;
    let omega: Vec<f64> =
        (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let mut table = Vec::with_capacity((grid * grid + with_cls as usize) * dim);
    if with_cls {
        table.extend(std::iter::repeat_n(0.0, dim));
    }
    for row in 0..grid {
        for col in 0..grid {
            // first half encodes the column (x), second half the row (y)
            for pos in [col as f64, row as f64] {
                table.extend(omega.iter().map(|w| (pos * w).sin()));
                table.extend(omega.iter().map(|w| (pos * w).cos()));
            }
        }
    }
    let n = table.len() / dim;
    Tensor::from_vec(table, (n, dim), device)?.to_dtype(dtype)
}

/// One pre-LN transformer block (`layernorm_before` -> attention -> `layernorm_after` -> MLP).
#[derive(Clone, Debug)]
pub struct VitLayer {
    pub layernorm_before: LayerNorm,
    pub attention: Attention,
    pub layernorm_after: LayerNorm,
    pub mlp: Mlp,
}

impl VitLayer {
    pub fn new(dim: usize, heads: usize, mlp: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            layernorm_before: LayerNorm::new(dim, eps, vb.pp("layernorm_before"))?,
            attention: Attention::new(
                dim,
                dim,
                heads,
                vb.pp("attention").pp("attention"),
                vb.pp("attention").pp("output").pp("dense"),
            )?,
            layernorm_after: LayerNorm::new(dim, eps, vb.pp("layernorm_after"))?,
            mlp: Mlp::new(
                dim,
                mlp,
                vb.pp("intermediate").pp("dense"),
                vb.pp("output").pp("dense"),
            )?,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (a, _) =
            self.attention.forward(&self.layernorm_before.forward(x)?, None, mask, false)?;
        let x = (x + a)?;
        let m = self.mlp.forward(&self.layernorm_after.forward(&x)?)?;
        x + m
    }

    /// The block's output at the first token only, `[b, 1, width]`: what [`VitLayer::forward`]
    /// gives there, with the query, output projection and MLP run on that token alone (keys and
    /// values still see every token).
    pub fn forward_first(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.layernorm_before.forward(x)?;
        let (a, _) = self.attention.forward(&h.narrow(1, 0, 1)?, Some(&h), None, false)?;
        let x = (x.narrow(1, 0, 1)? + a)?;
        let m = self.mlp.forward(&self.layernorm_after.forward(&x)?)?;
        x + m
    }
}

#[derive(Clone, Debug)]
pub struct VisionTransformer {
    pub config: VisionConfig,
    pub cls_token: Tensor,
    /// `[1 + patches, width]`; a parameter when learned, a constant for sin-cos.
    pub position_embeddings: Tensor,
    /// Patch projection as a `[width, c * p * p]` matrix (stored as the HF `[width, c, p, p]` kernel).
    pub patch_weight: Tensor,
    pub patch_bias: Tensor,
    /// `patch_weight` packed for inference (see [`PackCache`]).
    pub patch_packed: PackCache,
    pub layers: Vec<VitLayer>,
    pub layernorm: LayerNorm,
}

impl VisionTransformer {
    pub fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = config.hidden_size;
        let n = config.num_patches();
        let emb = vb.pp("embeddings");
        let cls_token = emb
            .get_with_hints((1, 1, d), "cls_token", Init::Randn { mean: 0.0, stdev: 0.02 })?
            .reshape((1, d))?;
        let position_embeddings = match config.position_embedding {
            PositionEmbedding::Learned => emb
                .get_with_hints(
                    (1, n + 1, d),
                    "position_embeddings",
                    Init::Randn { mean: 0.0, stdev: 0.02 },
                )?
                .reshape((n + 1, d))?,
            PositionEmbedding::Sincos => {
                sincos_2d(d, config.grid(), true, vb.dtype(), vb.device())?
            }
        };
        let proj = emb.pp("patch_embeddings").pp("projection");
        let (c, p) = (config.num_channels, config.patch_size);
        let patch_weight = proj
            .get_with_hints((d, c, p, p), "weight", Init::Randn { mean: 0.0, stdev: 0.02 })?
            .reshape((d, c * p * p))?;
        let patch_bias = proj.get_with_hints(d, "bias", Init::Const(0.0))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                VitLayer::new(
                    d,
                    config.num_attention_heads,
                    config.intermediate_size,
                    config.layer_norm_eps,
                    vb.pp("encoder").pp("layer").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let layernorm = LayerNorm::new(d, config.layer_norm_eps, vb.pp("layernorm"))?;
        Ok(Self {
            config: config.clone(),
            cls_token,
            position_embeddings,
            patch_weight,
            patch_bias,
            patch_packed: PackCache::default(),
            layers,
            layernorm,
        })
    }

    /// Patch embeddings plus positions, `[b, patches, width]` (no CLS).
    pub fn embed_patches(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.config.check_pixels(pixel_values)?;
        let patches = patchify(pixel_values, self.config.patch_size)?;
        let (b, n, pd) = patches.dims3()?;
        let x = linear_with_cache(
            &patches.reshape((b * n, pd))?,
            &self.patch_weight,
            Some(&self.patch_bias),
            crate::nn::Activation::Identity,
            Some(&self.patch_packed),
        )?;
        let d = self.config.hidden_size;
        x.reshape((b, n, d))?.broadcast_add(&self.position_embeddings.narrow(0, 1, n)?)
    }

    fn cls(&self, b: usize) -> Result<Tensor> {
        let d = self.config.hidden_size;
        (&self.cls_token + self.position_embeddings.narrow(0, 0, 1)?)?
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))
    }

    fn encode(&self, x: Tensor) -> Result<Tensor> {
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(&x, None)?;
        }
        self.layernorm.forward(&x)
    }

    /// The final-LayerNormed CLS token `[b, width]`, equal to `forward(..)[:, 0]`: what CLS
    /// pooling reads. The last block computes only that token's output, which skips its query,
    /// output projection and MLP for every patch (a fifth of a 4-block encoder's work, a twelfth
    /// of ViT-B's).
    pub fn forward_cls(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let x = self.embed_patches(pixel_values)?;
        let b = x.dim(0)?;
        let mut x = Tensor::cat(&[&self.cls(b)?, &x], 1)?;
        let Some((last, first)) = self.layers.split_last() else {
            return self.layernorm.forward(&x.narrow(1, 0, 1)?)?.squeeze(1);
        };
        for layer in first {
            x = layer.forward(&x, None)?;
        }
        self.layernorm.forward(&last.forward_first(&x)?)?.squeeze(1)
    }

    /// All patches: `[b, 1 + patches, width]`, CLS first, final LayerNorm applied.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let x = self.embed_patches(pixel_values)?;
        let b = x.dim(0)?;
        self.encode(Tensor::cat(&[&self.cls(b)?, &x], 1)?)
    }

    /// Visible patches only (MAE): `[b, 1 + keep, width]` in `mask.keep` order. The decoder
    /// restores the original order with `mask.restore_flat`.
    pub fn forward_masked(&self, pixel_values: &Tensor, mask: &PatchMask) -> Result<Tensor> {
        let x = self.embed_patches(pixel_values)?;
        let (b, n, d) = x.dims3()?;
        if mask.batch != b || mask.num_patches != n {
            candle_core::bail!(
                "patch mask is for {}x{} patches, the batch has {b}x{n}",
                mask.batch,
                mask.num_patches
            );
        }
        let vis = x.reshape((b * n, d))?.index_select(&mask.keep_flat, 0)?.reshape((
            b,
            mask.num_keep(),
            d,
        ))?;
        self.encode(Tensor::cat(&[&self.cls(b)?, &vis], 1)?)
    }
}
