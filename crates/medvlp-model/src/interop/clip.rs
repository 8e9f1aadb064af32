//! CLIP (Radford et al. 2021, arXiv 2103.00020) in the two layouts its checkpoints come in:
//! the state dict of OpenAI's `clip` package (CheXzero's ViT-B/32 checkpoints are this layout;
//! open_clip's built-in towers use the same names) and a Hugging Face `CLIPModel` directory.
//! Architecture is read from tensor shapes the way `clip.model.build_model` does (heads = width / 64)
//! unless a config says otherwise.

use crate::interop::causal_text::CausalTextTower;
use crate::interop::layers::{
    layer_norm, linear_opt_bias, load_blocks, table, Act, BlockLayout, Head,
};
use crate::interop::state_dict::StateDict;
use crate::interop::vit_tower::{TokenPool, VitTower};
use anyhow::{bail, Result};
use candle_core::Tensor;

pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// What the OpenAI layout cannot tell from shapes.
#[derive(Clone, Debug)]
pub struct OpenAiOptions {
    pub prefix: String,
    pub vision_heads: Option<usize>,
    pub text_heads: Option<usize>,
    pub act: Act,
    pub eps: f64,
    pub pool: TokenPool,
    pub norm_after_pool: bool,
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            vision_heads: None,
            text_heads: None,
            act: Act::QuickGelu,
            eps: 1e-5,
            pool: TokenPool::Cls,
            norm_after_pool: false,
        }
    }
}

fn heads_for(width: usize, given: Option<usize>) -> usize {
    given.unwrap_or((width / 64).max(1))
}

/// A `[in, out]` matrix (`x @ proj`) or an `nn.Linear` (`weight` `[out, in]`, optional bias).
fn projection(sd: &StateDict, key: &str, in_dim: usize) -> Result<Head> {
    if sd.has(&format!("{key}.weight")) {
        let out = sd.take_any(&format!("{key}.weight"), &[0, in_dim])?.dim(0)?;
        return Ok(Head::linear(linear_opt_bias(sd, &format!("{key}."), out, in_dim)?));
    }
    let p = sd.take_any(key, &[in_dim, 0])?;
    if p.rank() != 2 || p.dim(0)? != in_dim {
        bail!(
            "{}: {key} has shape {:?}, expected [{in_dim}, embed_dim]",
            sd.path.display(),
            p.dims()
        );
    }
    Head::matrix(&p)
}

/// The image tower of the OpenAI layout under `{prefix}visual.`.
pub fn openai_vision(sd: &StateDict, o: &OpenAiOptions) -> Result<VitTower> {
    let p = format!("{}visual.", o.prefix);
    let conv = sd.take_any(&format!("{p}conv1.weight"), &[0, 3, 0, 0])?;
    let [w, c, ps, ps2] = <[usize; 4]>::try_from(conv.dims()).map_err(|_| {
        anyhow::anyhow!("{}: {p}conv1.weight is not a 4-d kernel", sd.path.display())
    })?;
    if ps != ps2 {
        bail!("{}: {p}conv1.weight has a non-square {ps}x{ps2} kernel", sd.path.display());
    }
    let pos = table(sd, &format!("{p}positional_embedding"), w)?;
    let grid = ((pos.dim(0)? - 1) as f64).sqrt().round() as usize;
    if grid * grid + 1 != pos.dim(0)? {
        bail!(
            "{}: {p}positional_embedding has {} rows, not 1 + a square grid",
            sd.path.display(),
            pos.dim(0)?
        );
    }
    let heads = heads_for(w, o.vision_heads);
    Ok(VitTower {
        image_size: grid * ps,
        channels: c,
        patch_size: ps,
        patch_weight: conv.reshape((w, c * ps * ps))?,
        patch_bias: None,
        patch_packed: Default::default(),
        class_embedding: sd.take(&format!("{p}class_embedding"), &[w])?.reshape((1, w))?,
        positional_embedding: pos,
        ln_pre: if sd.has(&format!("{p}ln_pre.weight")) {
            Some(layer_norm(sd, &format!("{p}ln_pre."), w, o.eps)?)
        } else {
            None
        },
        blocks: load_blocks(
            sd,
            &format!("{p}transformer.resblocks."),
            BlockLayout::OpenAi,
            w,
            heads,
            o.act,
            o.eps,
        )?,
        norm: Some(layer_norm(sd, &format!("{p}ln_post."), w, o.eps)?),
        norm_after_pool: o.norm_after_pool,
        pool: o.pool,
        fc_norm: None,
        head: projection(sd, &format!("{p}proj"), w)?,
    })
}

/// The text tower of the OpenAI layout (`{prefix}token_embedding`, `{prefix}transformer.*`, ...).
pub fn openai_text(sd: &StateDict, o: &OpenAiOptions) -> Result<CausalTextTower> {
    let p = &o.prefix;
    let tok = sd.take_any(&format!("{p}token_embedding.weight"), &[0, 0])?;
    let w = tok.dim(1)?;
    let heads = heads_for(w, o.text_heads);
    Ok(CausalTextTower {
        token_embedding: tok,
        positional_embedding: table(sd, &format!("{p}positional_embedding"), w)?,
        blocks: load_blocks(
            sd,
            &format!("{p}transformer.resblocks."),
            BlockLayout::OpenAi,
            w,
            heads,
            o.act,
            o.eps,
        )?,
        ln_final: layer_norm(sd, &format!("{p}ln_final."), w, o.eps)?,
        head: projection(sd, &format!("{p}text_projection"), w)?,
    })
}

/// `logit_scale` (the log of the inverse temperature) as `exp(logit_scale)`.
pub fn logit_scale(sd: &StateDict, key: &str) -> Result<Option<f64>> {
    if !sd.has(key) {
        return Ok(None);
    }
    let t: Tensor = sd.take_any(key, &[])?;
    if t.elem_count() != 1 {
        bail!("{}: {key} has shape {:?}, expected a scalar", sd.path.display(), t.dims());
    }
    Ok(Some((t.flatten_all()?.to_vec1::<f32>()?[0] as f64).exp()))
}

/// Hugging Face `CLIPModel` config fields the towers need.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct HfClipTowerConfig {
    pub num_attention_heads: usize,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "eps_1e5")]
    pub layer_norm_eps: f64,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps_1e5() -> f64 {
    1e-5
}

/// HF CLIP vision tower under `{p}` (`vision_model.`), projection at `proj_key`.
pub fn hf_vision(
    sd: &StateDict,
    p: &str,
    c: &HfClipTowerConfig,
    proj_key: Option<&str>,
) -> Result<VitTower> {
    let conv = sd.take_any(&format!("{p}embeddings.patch_embedding.weight"), &[0, 3, 0, 0])?;
    let [w, ch, ps, _] = <[usize; 4]>::try_from(conv.dims()).map_err(|_| {
        anyhow::anyhow!(
            "{}: {p}embeddings.patch_embedding.weight is not a 4-d kernel",
            sd.path.display()
        )
    })?;
    let pos = table(sd, &format!("{p}embeddings.position_embedding.weight"), w)?;
    sd.skip(&format!("{p}embeddings.position_ids"));
    let grid = ((pos.dim(0)? - 1) as f64).sqrt().round() as usize;
    let act = Act::from_name(&c.hidden_act)?;
    let head = match proj_key {
        Some(k) => {
            let out = sd.take_any(&format!("{k}.weight"), &[0, w])?.dim(0)?;
            Head::linear(linear_opt_bias(sd, &format!("{k}."), out, w)?)
        }
        None => Head::identity(),
    };
    Ok(VitTower {
        image_size: grid * ps,
        channels: ch,
        patch_size: ps,
        patch_weight: conv.reshape((w, ch * ps * ps))?,
        patch_bias: sd.take_opt(&format!("{p}embeddings.patch_embedding.bias"), &[w])?,
        patch_packed: Default::default(),
        class_embedding: sd
            .take(&format!("{p}embeddings.class_embedding"), &[w])?
            .reshape((1, w))?,
        positional_embedding: pos,
        ln_pre: Some(layer_norm(sd, &format!("{p}pre_layrnorm."), w, c.layer_norm_eps)?),
        blocks: load_blocks(
            sd,
            &format!("{p}encoder.layers."),
            BlockLayout::HfClip,
            w,
            c.num_attention_heads,
            act,
            c.layer_norm_eps,
        )?,
        norm: Some(layer_norm(sd, &format!("{p}post_layernorm."), w, c.layer_norm_eps)?),
        norm_after_pool: false,
        pool: TokenPool::Cls,
        fc_norm: None,
        head,
    })
}

/// HF CLIP text tower under `text_model.`, projection `text_projection`.
pub fn hf_text(sd: &StateDict, c: &HfClipTowerConfig) -> Result<CausalTextTower> {
    let p = "text_model.";
    let tok = sd.take_any(&format!("{p}embeddings.token_embedding.weight"), &[0, 0])?;
    let w = tok.dim(1)?;
    sd.skip(&format!("{p}embeddings.position_ids"));
    let out = sd.take_any("text_projection.weight", &[0, w])?.dim(0)?;
    Ok(CausalTextTower {
        token_embedding: tok,
        positional_embedding: table(sd, &format!("{p}embeddings.position_embedding.weight"), w)?,
        blocks: load_blocks(
            sd,
            &format!("{p}encoder.layers."),
            BlockLayout::HfClip,
            w,
            c.num_attention_heads,
            Act::from_name(&c.hidden_act)?,
            c.layer_norm_eps,
        )?,
        ln_final: layer_norm(sd, &format!("{p}final_layer_norm."), w, c.layer_norm_eps)?,
        head: Head::linear(linear_opt_bias(sd, "text_projection.", out, w)?),
    })
}
