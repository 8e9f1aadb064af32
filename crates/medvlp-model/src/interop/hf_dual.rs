//! Hugging Face `VisionTextDualEncoderModel` directories: a ViT (or CLIP vision) tower and a BERT
//! tower, each pooled by its `pooler_output`, then `visual_projection` / `text_projection`.

use super::bert_tower::{infer_config, BertTower, TextPool};
use super::clip::{self, HfClipTowerConfig};
use super::clip_family::{find_tokenizer, hf_preprocessor, hf_weights, joint_dim};
use super::layers::{
    layer_norm, linear_opt_bias, load_blocks, table, Act, BlockLayout, Head, HeadLayer,
};
use super::state_dict::StateDict;
use super::vit_tower::{TokenPool, VitTower};
use super::{Family, ForeignModel, ImageTower, TextTower};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde_json::Value;
use std::path::Path;

fn f64_or(v: &Value, k: &str, d: f64) -> f64 {
    v.get(k).and_then(|x| x.as_f64()).unwrap_or(d)
}

/// A Hugging Face `ViTModel` under `vision_model.`: `pooler_output` = tanh(dense(CLS)).
fn hf_vit(sd: &StateDict, vc: &Value) -> Result<VitTower> {
    let p = "vision_model.";
    let heads = vc.get("num_attention_heads").and_then(|x| x.as_u64()).unwrap_or(12) as usize;
    let eps = f64_or(vc, "layer_norm_eps", 1e-12);
    let act = Act::from_name(vc.get("hidden_act").and_then(|x| x.as_str()).unwrap_or("gelu"))?;
    let conv =
        sd.take_any(&format!("{p}embeddings.patch_embeddings.projection.weight"), &[0, 3, 0, 0])?;
    let [w, c, ps, _] = <[usize; 4]>::try_from(conv.dims()).map_err(|_| {
        anyhow::anyhow!(
            "{}: {p}embeddings.patch_embeddings.projection.weight is not a 4-d kernel",
            sd.path.display()
        )
    })?;
    let pos = table(sd, &format!("{p}embeddings.position_embeddings"), w)?;
    let grid = ((pos.dim(0)? - 1) as f64).sqrt().round() as usize;
    let pooler = linear_opt_bias(sd, &format!("{p}pooler.dense."), w, w)?;
    let out = sd.take_any("visual_projection.weight", &[0, w])?.dim(0)?;
    let proj = linear_opt_bias(sd, "visual_projection.", out, w)?;
    let pooler_act =
        Act::from_name(vc.get("pooler_act").and_then(|x| x.as_str()).unwrap_or("tanh"))?;
    Ok(VitTower {
        image_size: grid * ps,
        channels: c,
        patch_size: ps,
        patch_weight: conv.reshape((w, c * ps * ps))?,
        patch_bias: sd
            .take_opt(&format!("{p}embeddings.patch_embeddings.projection.bias"), &[w])?,
        patch_packed: Default::default(),
        class_embedding: sd
            .take(&format!("{p}embeddings.cls_token"), &[1, 1, w])?
            .reshape((1, w))?,
        positional_embedding: pos,
        ln_pre: None,
        blocks: load_blocks(
            sd,
            &format!("{p}encoder.layer."),
            BlockLayout::HfVit,
            w,
            heads,
            act,
            eps,
        )?,
        norm: Some(layer_norm(sd, &format!("{p}layernorm."), w, eps)?),
        norm_after_pool: false,
        pool: TokenPool::Cls,
        fc_norm: None,
        head: Head {
            layers: vec![
                HeadLayer::Linear(pooler),
                HeadLayer::Act(pooler_act),
                HeadLayer::Linear(proj),
            ],
        },
    })
}

pub fn load(dir: &Path, device: &Device) -> Result<ForeignModel> {
    let cfg_path = dir.join("config.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let vc = v
        .get("vision_config")
        .with_context(|| format!("{}: no vision_config", cfg_path.display()))?;
    let tc =
        v.get("text_config").with_context(|| format!("{}: no text_config", cfg_path.display()))?;
    let weights = hf_weights(dir)?;
    let sd = StateDict::read(&weights, device)?;
    let vision = match vc.get("model_type").and_then(|m| m.as_str()) {
        Some("vit") => hf_vit(&sd, vc)?,
        Some("clip_vision_model") => {
            let c: HfClipTowerConfig = serde_json::from_value(vc.clone())
                .with_context(|| format!("{}: vision_config", cfg_path.display()))?;
            clip::hf_vision(&sd, "vision_model.", &c, Some("visual_projection"))?
        }
        other => bail!(
            "{}: vision model_type {other:?} is not supported (vit, clip_vision_model)",
            cfg_path.display()
        ),
    };
    if tc.get("model_type").and_then(|m| m.as_str()) != Some("bert") {
        bail!(
            "{}: text model_type {:?} is not supported (bert)",
            cfg_path.display(),
            tc.get("model_type")
        );
    }
    let heads = tc.get("num_attention_heads").and_then(|x| x.as_u64()).map(|x| x as usize);
    let config = infer_config(&sd, "text_model.", heads, f64_or(tc, "layer_norm_eps", 1e-12))?;
    let d = config.hidden_size;
    let out = sd.take_any("text_projection.weight", &[0, d])?.dim(0)?;
    let head = Head::linear(linear_opt_bias(&sd, "text_projection.", out, d)?);
    let text = BertTower::load(&sd, "text_model.", &config, TextPool::Pooler, head, device)?;
    let scale = clip::logit_scale(&sd, "logit_scale")?.unwrap_or(1.0 / 0.07);
    sd.finish(&[])?;
    let embed_dim = joint_dim(&weights, vision.head.out_dim(vision.width()), out)?;
    let pp = hf_preprocessor(dir, vision.image_size, &[0.5; 3], &[0.5; 3])?;
    let max_len = config.max_position_embeddings;
    Ok(ForeignModel {
        family: Family::HfDualEncoder,
        weights,
        image: ImageTower::Vit(vision),
        text: TextTower::Bert(text),
        logit_scale: scale,
        preprocess: pp,
        tokenizer: find_tokenizer(dir)?,
        context_length: max_len,
        embed_dim,
    })
}
