//! Loaders for the CLIP checkpoints: OpenAI `clip` state dicts and Hugging Face `CLIPModel` dirs.

use super::clip::{self, HfClipTowerConfig, OpenAiOptions, CLIP_MEAN, CLIP_STD};
use super::state_dict::StateDict;
use super::{preprocess, Family, ForeignModel, ImageTower, TextTower};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// The tokenizer beside a checkpoint: `tokenizer.json`, else CLIP's BPE merges file
/// (`bpe_simple_vocab_16e6.txt.gz` or any `*.txt.gz`).
pub fn find_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let tj = dir.join("tokenizer.json");
    if tj.exists() {
        return tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| anyhow::anyhow!("loading tokenizer {}: {e}", tj.display()));
    }
    let bpe = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.to_string_lossy().ends_with(".txt.gz")
                || p.file_name().is_some_and(|n| n == "merges.txt")
        });
    match bpe {
        Some(p) => super::clip_bpe::load(&p),
        None => bail!(
            "{}: no tokenizer.json and no CLIP BPE file; copy bpe_simple_vocab_16e6.txt.gz (shipped in the \
             clip and open_clip Python packages) or the model's tokenizer.json into it",
            dir.display()
        ),
    }
}

pub fn joint_dim(path: &Path, image: usize, text: usize) -> Result<usize> {
    if image != text {
        bail!(
            "{}: image embeddings have {image} dimensions, text embeddings {text}",
            path.display()
        );
    }
    Ok(image)
}

fn single_checkpoint(dir: &Path) -> Result<PathBuf> {
    let mut pts = super::pt_files(dir)?;
    match pts.len() {
        1 => Ok(pts.remove(0)),
        n => bail!("{}: {n} .pt files, expected one", dir.display()),
    }
}

/// OpenAI `clip` layout state dict (a file, or a folder holding one `.pt`).
pub fn load_openai(path: &Path, device: &Device) -> Result<ForeignModel> {
    let file = if path.is_dir() { single_checkpoint(path)? } else { path.to_path_buf() };
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let sd = StateDict::read(&file, device)?;
    if !sd.has("visual.conv1.weight") {
        let some: Vec<&String> = sd.keys().take(3).collect();
        bail!(
            "{}: not an OpenAI CLIP state dict (no visual.conv1.weight; keys begin {some:?}); a ResNet \
             or other layout needs a {} key map",
            file.display(),
            super::IMPORT_FILE
        );
    }
    let o = OpenAiOptions::default();
    let vision = clip::openai_vision(&sd, &o)?;
    let text = clip::openai_text(&sd, &o)?;
    let scale = clip::logit_scale(&sd, "logit_scale")?.unwrap_or(1.0 / 0.07);
    // Entries the JIT archives carry next to the weights (clip.load deletes them too).
    sd.finish(&["input_resolution", "context_length", "vocab_size", "attn_mask"])?;
    let embed_dim = joint_dim(
        &file,
        vision.head.out_dim(vision.width()),
        text.head.out_dim(text.token_embedding.dims()[1]),
    )?;
    let pp = preprocess(vision.image_size, vision.channels, &CLIP_MEAN, &CLIP_STD);
    Ok(ForeignModel {
        family: Family::OpenAiClip,
        weights: file,
        context_length: text.context_length(),
        image: ImageTower::Vit(vision),
        text: TextTower::Causal(text),
        logit_scale: scale,
        preprocess: pp,
        tokenizer: find_tokenizer(&dir)?,
        embed_dim,
    })
}

#[derive(serde::Deserialize)]
struct HfClipConfig {
    text_config: HfClipTowerConfig,
    vision_config: HfClipTowerConfig,
}

/// Image mean/std/size from `preprocessor_config.json` when present.
pub fn hf_preprocessor(
    dir: &Path,
    size: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<medvlp_data::image::preprocess::PreprocessConfig> {
    let p = dir.join("preprocessor_config.json");
    let mut pp = preprocess(size, 3, mean, std);
    if p.exists() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)
            .with_context(|| format!("parsing {}", p.display()))?;
        let floats = |k: &str| -> Option<Vec<f32>> {
            v.get(k)?.as_array()?.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
        };
        if let Some(m) = floats("image_mean") {
            pp.mean = m;
        }
        if let Some(s) = floats("image_std") {
            pp.std = s;
        }
        if let Some(s) =
            v.get("size").and_then(|s| s.get("shortest_edge").or(Some(s))).and_then(|s| s.as_u64())
        {
            pp.resize_shorter = (s as u32).max(pp.image_size);
        }
    }
    Ok(pp)
}

/// A Hugging Face `CLIPModel` directory.
pub fn load_hf(dir: &Path, device: &Device) -> Result<ForeignModel> {
    let cfg_path = dir.join("config.json");
    let cfg: HfClipConfig = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)
        .with_context(|| format!("{}: not a CLIPModel config", cfg_path.display()))?;
    let weights = hf_weights(dir)?;
    let sd = StateDict::read(&weights, device)?;
    let vision =
        clip::hf_vision(&sd, "vision_model.", &cfg.vision_config, Some("visual_projection"))?;
    let text = clip::hf_text(&sd, &cfg.text_config)?;
    let scale = clip::logit_scale(&sd, "logit_scale")?.unwrap_or(1.0 / 0.07);
    sd.finish(&[])?;
    let embed_dim = joint_dim(
        &weights,
        vision.head.out_dim(vision.width()),
        text.head.out_dim(text.token_embedding.dims()[1]),
    )?;
    let pp = hf_preprocessor(dir, vision.image_size, &CLIP_MEAN, &CLIP_STD)?;
    Ok(ForeignModel {
        family: Family::HfClip,
        weights,
        context_length: text.context_length(),
        image: ImageTower::Vit(vision),
        text: TextTower::Causal(text),
        logit_scale: scale,
        preprocess: pp,
        tokenizer: find_tokenizer(dir)?,
        embed_dim,
    })
}

/// `model.safetensors`, else `pytorch_model.bin`.
pub fn hf_weights(dir: &Path) -> Result<PathBuf> {
    for f in ["model.safetensors", "pytorch_model.bin"] {
        if dir.join(f).exists() {
            return Ok(dir.join(f));
        }
    }
    if dir.join("model.safetensors.index.json").exists() {
        bail!(
            "{}: sharded weights are not read yet; merge them into one model.safetensors",
            dir.display()
        );
    }
    bail!("{}: no model.safetensors or pytorch_model.bin", dir.display())
}
