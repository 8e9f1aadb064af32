//! ResNet + BERT dual encoders from training checkpoints (MGCA, and others through a key map):
//! a torchvision ResNet trunk, global average pooling, an image head; a Hugging Face BERT, pooled,
//! a text head. What is where comes from `medvlp_import.toml`'s key map.

use super::bert_tower::{infer_config, BertOptions, BertTower, TextPool};
use super::clip_family::{find_tokenizer, joint_dim};
use super::import_toml::ImportSpec;
use super::layers::sequential_head;
use super::resnet::ResNet;
use super::state_dict::StateDict;
use super::{preprocess, Family, ForeignModel, ImageTower, TextTower};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

fn checkpoint(dir: &Path, spec: &ImportSpec) -> Result<PathBuf> {
    if let Some(c) = &spec.checkpoint {
        return Ok(c.clone());
    }
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "ckpt" | "pt" | "pth" | "bin" | "safetensors"))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "{}: name the checkpoint with `checkpoint = \"...\"` ({} candidates)",
            spec.path.display(),
            found.len()
        ),
    }
}

pub fn load(dir: &Path, spec: &ImportSpec, device: &Device) -> Result<ForeignModel> {
    let km = spec.keymap.as_ref().expect("checked when read");
    let weights = checkpoint(dir, spec)?;
    let sd = StateDict::read(&weights, device)?;
    let trunk = ResNet::load(&sd, &km.image_trunk)?;
    let (image_head, idim) =
        sequential_head(&sd, &km.image_head, &km.image_head_layers, trunk.out_channels())?;
    let config = infer_config(&sd, &km.text_model, km.text_heads, km.text_eps)?;
    let pool = match km.text_pool.as_str() {
        "cls" => TextPool::Cls,
        "mean" => TextPool::Mean,
        "pooler" => TextPool::Pooler,
        other => {
            bail!("{}: text_pool '{other}' is not one of cls, mean, pooler", spec.path.display())
        }
    };
    let (text_head, tdim) =
        sequential_head(&sd, &km.text_head, &km.text_head_layers, config.hidden_size)?;
    let zero_positions = match km.text_positions.as_str() {
        "arange" => false,
        "zero" => true,
        other => {
            bail!("{}: text_positions '{other}' is not one of arange, zero", spec.path.display())
        }
    };
    let opts = BertOptions { ignore: km.ignore.clone(), zero_positions };
    let text = BertTower::load_with(&sd, &km.text_model, &config, pool, text_head, &opts, device)?;
    let ignore: Vec<&str> = km.ignore.iter().map(|s| s.as_str()).collect();
    sd.finish(&ignore)?;
    let embed_dim = joint_dim(&weights, idim, tdim)?;
    let channels = trunk.in_channels();
    let tokenizer = match &spec.tokenizer {
        Some(t) => tokenizers::Tokenizer::from_file(t)
            .map_err(|e| anyhow::anyhow!("loading tokenizer {}: {e}", t.display()))?,
        None => find_tokenizer(dir)?,
    };
    Ok(ForeignModel {
        family: Family::ResnetBert,
        weights,
        image: ImageTower::ResNet { trunk, head: image_head },
        text: TextTower::Bert(text),
        logit_scale: spec.logit_scale.unwrap_or(1.0 / 0.07),
        // ImageNet statistics at 224 unless the import file says otherwise.
        preprocess: preprocess(224, channels, &[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225]),
        tokenizer,
        context_length: spec.context_length.unwrap_or(config.max_position_embeddings.min(512)),
        embed_dim,
    })
}
