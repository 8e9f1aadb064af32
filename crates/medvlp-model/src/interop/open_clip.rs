//! open_clip models (Cherti et al., github.com/mlfoundations/open_clip): `open_clip_config.json` +
//! `open_clip_model.safetensors` / `open_clip_pytorch_model.bin`. Built-in CLIP towers, timm ViT
//! image towers (BiomedCLIP: `vit_base_patch16_224`) and Hugging Face BERT text towers with
//! open_clip's poolers and projections (BiomedCLIP: PubMedBERT, CLS, MLP projection, 256 tokens).

use super::bert_tower::{infer_config, BertTower, TextPool};
use super::clip::{self, OpenAiOptions, CLIP_MEAN, CLIP_STD};
use super::clip_family::{find_tokenizer, joint_dim};
use super::layers::{
    layer_norm, linear_opt_bias, load_blocks, sequential_head, table, Act, BlockLayout, Head,
    HeadLayer,
};
use super::state_dict::StateDict;
use super::vit_tower::{TokenPool, VitTower};
use super::{preprocess, Family, ForeignModel, ImageTower, TextTower};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "open_clip_config.json";

fn get<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.get(k).filter(|x| !x.is_null())
}
fn get_usize(v: &Value, k: &str) -> Option<usize> {
    get(v, k).and_then(|x| x.as_u64()).map(|x| x as usize)
}
fn get_str<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    get(v, k).and_then(|x| x.as_str())
}
fn get_bool(v: &Value, k: &str) -> bool {
    get(v, k).and_then(|x| x.as_bool()).unwrap_or(false)
}

fn eps_of(cfg: &Value, default: f64) -> f64 {
    get(cfg, "norm_kwargs").and_then(|n| n.get("eps")).and_then(|e| e.as_f64()).unwrap_or(default)
}

/// Options open_clip has that this reader does not run: refuse rather than approximate.
fn refuse(cfg: &Value, path: &Path, tower: &str, keys: &[&str]) -> Result<()> {
    for k in keys {
        if let Some(v) = get(cfg, k) {
            if v.as_bool() != Some(false) && v.as_f64() != Some(0.0) {
                bail!("{}: {tower}.{k} = {v} is not supported by this reader", path.display());
            }
        }
    }
    Ok(())
}

/// Attention heads of a timm ViT: timm's ViTs use 64-wide heads, except its test models.
pub fn timm_heads(name: &str, width: usize) -> usize {
    match name {
        "test_vit" | "test_vit2" | "test_vit3" | "test_vit4" => (width / 32).max(1),
        _ => (width / 64).max(1),
    }
}

fn timm_vision(sd: &StateDict, vc: &Value, path: &Path) -> Result<VitTower> {
    let name = get_str(vc, "timm_model_name").unwrap_or_default();
    if !name.starts_with("vit_") && !name.starts_with("test_vit") && !name.starts_with("deit") {
        bail!("{}: timm model '{name}' is not a ViT; only timm ViTs are read", path.display());
    }
    let p = "visual.trunk.";
    let conv = sd.take_any(&format!("{p}patch_embed.proj.weight"), &[0, 3, 0, 0])?;
    let [w, c, ps, _] = <[usize; 4]>::try_from(conv.dims()).map_err(|_| {
        anyhow::anyhow!("{}: {p}patch_embed.proj.weight is not a 4-d kernel", sd.path.display())
    })?;
    let pos = table(sd, &format!("{p}pos_embed"), w)?;
    let grid = ((pos.dim(0)? - 1) as f64).sqrt().round() as usize;
    if grid * grid + 1 != pos.dim(0)? {
        bail!(
            "{}: {p}pos_embed has {} rows: a class token and a square grid expected",
            sd.path.display(),
            pos.dim(0)?
        );
    }
    let eps = 1e-6; // timm's ViT LayerNorm
    let pool = match get_str(vc, "timm_pool").unwrap_or("") {
        "" | "token" => TokenPool::Cls,
        "avg" => TokenPool::Avg,
        other => bail!("{}: timm_pool '{other}' is not supported (token, avg)", path.display()),
    };
    let head = match get_str(vc, "timm_proj").unwrap_or("linear") {
        "linear" => {
            let out = sd.take_any("visual.head.proj.weight", &[0, w])?.dim(0)?;
            Head::linear(linear_opt_bias(sd, "visual.head.proj.", out, w)?)
        }
        // timm's Mlp: fc1 -> GELU -> fc2.
        "mlp" => {
            let hidden = sd.take_any("visual.head.mlp.fc1.weight", &[0, w])?.dim(0)?;
            let fc1 = linear_opt_bias(sd, "visual.head.mlp.fc1.", hidden, w)?;
            let out = sd.take_any("visual.head.mlp.fc2.weight", &[0, hidden])?.dim(0)?;
            let fc2 = linear_opt_bias(sd, "visual.head.mlp.fc2.", out, hidden)?;
            Head {
                layers: vec![
                    HeadLayer::Linear(fc1),
                    HeadLayer::Act(Act::Gelu),
                    HeadLayer::Linear(fc2),
                ],
            }
        }
        "none" | "" => Head::identity(),
        other => bail!("{}: timm_proj '{other}' is not supported", path.display()),
    };
    let ln = |k: &str| -> Result<Option<crate::nn::LayerNorm>> {
        if sd.has(&format!("{p}{k}.weight")) {
            Ok(Some(layer_norm(sd, &format!("{p}{k}."), w, eps)?))
        } else {
            Ok(None)
        }
    };
    Ok(VitTower {
        image_size: grid * ps,
        channels: c,
        patch_size: ps,
        patch_weight: conv.reshape((w, c * ps * ps))?,
        patch_bias: sd.take_opt(&format!("{p}patch_embed.proj.bias"), &[w])?,
        patch_packed: Default::default(),
        class_embedding: sd.take(&format!("{p}cls_token"), &[1, 1, w])?.reshape((1, w))?,
        positional_embedding: pos,
        ln_pre: ln("norm_pre")?,
        blocks: load_blocks(
            sd,
            &format!("{p}blocks."),
            BlockLayout::Timm,
            w,
            timm_heads(name, w),
            Act::Gelu,
            eps,
        )?,
        norm: ln("norm")?,
        norm_after_pool: false,
        pool,
        fc_norm: ln("fc_norm")?,
        head,
    })
}

fn hf_text(sd: &StateDict, tc: &Value, dir: &Path, device: &Device) -> Result<BertTower> {
    let p = "text.transformer.";
    // The text tower's own config (heads, eps) when the folder has it; else BERT's conventions.
    let mut heads = None;
    let mut eps = 1e-12;
    for c in [dir.join("text").join("config.json"), dir.join("text_config.json")] {
        if c.exists() {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&c)?)
                .with_context(|| format!("parsing {}", c.display()))?;
            heads = get_usize(&v, "num_attention_heads");
            eps = get(&v, "layer_norm_eps").and_then(|e| e.as_f64()).unwrap_or(eps);
        }
    }
    let config = infer_config(sd, p, heads, eps)?;
    let pool = match get_str(tc, "hf_pooler_type").unwrap_or("mean_pooler") {
        "cls_last_hidden_state_pooler" => TextPool::Cls,
        "mean_pooler" => TextPool::Mean,
        "cls_pooler" => TextPool::Pooler,
        other => bail!("{}: hf_pooler_type '{other}' is not supported", sd.path.display()),
    };
    let d = config.hidden_size;
    let head = match get_str(tc, "hf_proj_type").unwrap_or("linear") {
        "linear" => {
            let out = sd.take_any("text.proj.weight", &[0, d])?.dim(0)?;
            Head::linear(linear_opt_bias(sd, "text.proj.", out, d)?)
        }
        "mlp" => {
            sequential_head(
                sd,
                "text.proj.",
                &["linear".into(), "gelu".into(), "linear".into()],
                d,
            )?
            .0
        }
        "none" => Head::identity(),
        other => bail!("{}: hf_proj_type '{other}' is not supported", sd.path.display()),
    };
    BertTower::load(sd, p, &config, pool, head, device)
}

fn weights_file(dir: &Path) -> Result<PathBuf> {
    for f in ["open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors"] {
        if dir.join(f).exists() {
            return Ok(dir.join(f));
        }
    }
    bail!("{}: no open_clip_model.safetensors or open_clip_pytorch_model.bin", dir.display())
}

pub fn load(dir: &Path, device: &Device) -> Result<ForeignModel> {
    let cfg_path = dir.join(CONFIG_FILE);
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let mc = get(&v, "model_cfg").unwrap_or(&v);
    let vc =
        get(mc, "vision_cfg").with_context(|| format!("{}: no vision_cfg", cfg_path.display()))?;
    let tc = get(mc, "text_cfg").with_context(|| format!("{}: no text_cfg", cfg_path.display()))?;
    let weights = weights_file(dir)?;
    let sd = StateDict::read(&weights, device)?;
    let act = if get_bool(mc, "quick_gelu") { Act::QuickGelu } else { Act::Gelu };
    let hf_text_tower = get_str(tc, "hf_model_name").is_some();

    let vision = if get_str(vc, "timm_model_name").is_some() {
        timm_vision(&sd, vc, &cfg_path)?
    } else {
        refuse(
            vc,
            &cfg_path,
            "vision_cfg",
            &[
                "attentional_pool",
                "ls_init_value",
                "input_patchnorm",
                "attn_pooler_queries_enabled",
            ],
        )?;
        let width = get_usize(vc, "width").unwrap_or(768);
        let head_width = get_usize(vc, "head_width").unwrap_or(64);
        let o = OpenAiOptions {
            prefix: String::new(),
            vision_heads: Some((width / head_width).max(1)),
            text_heads: None,
            act,
            eps: eps_of(vc, 1e-5),
            pool: match get_str(vc, "pool_type").unwrap_or("tok") {
                "tok" => TokenPool::Cls,
                "avg" => TokenPool::Avg,
                other => bail!(
                    "{}: vision_cfg.pool_type '{other}' is not supported (tok, avg)",
                    cfg_path.display()
                ),
            },
            norm_after_pool: get_bool(vc, "final_ln_after_pool"),
        };
        clip::openai_vision(&sd, &o)?
    };
    let (text, context_length) = if hf_text_tower {
        let ctx = get_usize(tc, "context_length").unwrap_or(77);
        // The pooler of AutoModel's BERT is saved whether or not the pooling type uses it.
        let t = hf_text(&sd, tc, dir, device)?;
        (TextTower::Bert(t), ctx)
    } else {
        refuse(tc, &cfg_path, "text_cfg", &["embed_cls", "no_causal_mask", "ls_init_value"])?;
        match get_str(tc, "pool_type").unwrap_or("argmax") {
            "argmax" | "last" => {}
            other => bail!(
                "{}: text_cfg.pool_type '{other}' is not supported (argmax, last)",
                cfg_path.display()
            ),
        }
        let o = OpenAiOptions {
            text_heads: Some(get_usize(tc, "heads").unwrap_or(8)),
            act,
            eps: eps_of(tc, 1e-5),
            prefix: if sd.has("text.token_embedding.weight") {
                "text.".into()
            } else {
                String::new()
            },
            ..Default::default()
        };
        let t = clip::openai_text(&sd, &o)?;
        let ctx = t.context_length();
        (TextTower::Causal(t), ctx)
    };
    let scale = clip::logit_scale(&sd, "logit_scale")?.unwrap_or(1.0 / 0.07);
    sd.finish(&[
        "text.transformer.pooler.",
        "text.transformer.embeddings.position_ids",
        "attn_mask",
    ])?;
    let tdim = match &text {
        TextTower::Bert(b) => b.head.out_dim(b.model.config.hidden_size),
        TextTower::Causal(c) => c.head.out_dim(c.token_embedding.dims()[1]),
    };
    let embed_dim = joint_dim(&weights, vision.head.out_dim(vision.width()), tdim)?;
    let pc = get(&v, "preprocess_cfg");
    let floats = |k: &str, d: &[f32]| -> Vec<f32> {
        pc.and_then(|p| get(p, k))
            .and_then(|a| a.as_array())
            .and_then(|a| a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect())
            .unwrap_or_else(|| d.to_vec())
    };
    let pp = preprocess(
        vision.image_size,
        vision.channels,
        &floats("mean", &CLIP_MEAN),
        &floats("std", &CLIP_STD),
    );
    let tok_dir = if dir.join("tokenizer.json").exists()
        || !dir.join("text").join("tokenizer.json").exists()
    {
        dir.to_path_buf()
    } else {
        dir.join("text")
    };
    Ok(ForeignModel {
        family: Family::OpenClip,
        weights,
        image: ImageTower::Vit(vision),
        text,
        logit_scale: scale,
        preprocess: pp,
        tokenizer: super::clip_bpe::with_open_clip_cleaning(&find_tokenizer(&tok_dir)?)?,
        context_length,
        embed_dim,
    })
}
