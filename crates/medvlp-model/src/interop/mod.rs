//! The field's checkpoints, read into one inference interface: OpenAI CLIP state dicts (CheXzero),
//! Hugging Face `CLIPModel` and `VisionTextDualEncoderModel` directories, open_clip models
//! (built-in towers, or timm ViT + Hugging Face text as BiomedCLIP), and ResNet + BERT training
//! checkpoints (MGCA-style Lightning `.ckpt`) through a key map. Each family reads its own
//! preprocessing and tokenizer, checks every tensor's shape and refuses tensors it would not use.

pub mod bert_tower;
pub mod causal_text;
pub mod clip;
pub mod clip_bpe;
pub mod clip_family;
pub mod export;
pub mod hf_dual;
pub mod import_toml;
pub mod layers;
pub mod open_clip;
pub mod resnet;
pub mod resnet_bert;
pub mod state_dict;
pub mod vit_tower;

use crate::encode::JointEncoder;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use medvlp_data::image::preprocess::{CropMode, PreprocessConfig};
use std::path::{Path, PathBuf};

/// Which kind of checkpoint a `--model` path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// A medvlp model directory.
    MedVlp,
    /// OpenAI `clip` state dict (`.pt`), as CheXzero.
    OpenAiClip,
    /// Hugging Face `CLIPModel` directory.
    HfClip,
    /// open_clip (`open_clip_config.json`), e.g. BiomedCLIP.
    OpenClip,
    /// ResNet + BERT training checkpoint with a key map (`medvlp_import.toml`), e.g. MGCA.
    ResnetBert,
    /// Hugging Face `VisionTextDualEncoderModel` directory.
    HfDualEncoder,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::MedVlp => "medvlp",
            Family::OpenAiClip => "openai-clip",
            Family::HfClip => "hf-clip",
            Family::OpenClip => "open_clip",
            Family::ResnetBert => "resnet-bert",
            Family::HfDualEncoder => "hf-dual-encoder",
        }
    }
}

pub const IMPORT_FILE: &str = "medvlp_import.toml";

fn is_state_dict_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "pt" | "pth" | "bin" | "ckpt" | "safetensors"))
}

/// Tells the family of `path` from its files (a directory) or its extension (a file).
pub fn detect(path: &Path) -> Result<Family> {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "ckpt") {
            bail!(
                "{}: a training checkpoint needs a key map: put it in a folder with a {IMPORT_FILE} \
                 (see docs/checkpoints.md)",
                path.display()
            );
        }
        if is_state_dict_file(path) {
            return Ok(Family::OpenAiClip);
        }
        bail!(
            "{}: not a model directory or a checkpoint file (.pt, .pth, .bin, .safetensors)",
            path.display()
        );
    }
    if !path.is_dir() {
        bail!("{}: no such model directory or file", path.display());
    }
    if path.join(IMPORT_FILE).exists() {
        return Ok(import_toml::ImportSpec::read(path)?.family);
    }
    if path.join("open_clip_config.json").exists() {
        return Ok(Family::OpenClip);
    }
    let cfg = path.join(crate::model_dir::CONFIG_FILE);
    if cfg.exists() {
        let text =
            std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg.display()))?;
        return match v.get("model_type").and_then(|m| m.as_str()) {
            Some("medvlp") => Ok(Family::MedVlp),
            Some("clip") => Ok(Family::HfClip),
            Some("vision-text-dual-encoder") => Ok(Family::HfDualEncoder),
            Some("bert") | Some("roberta") => bail!(
                "{}: a text-only BERT model; embedding images and zero-shot need a vision-language model",
                path.display()
            ),
            Some(other) => bail!(
                "{}: model_type '{other}' is not a family medvlp reads (medvlp, clip, \
                 vision-text-dual-encoder, open_clip, openai-clip, resnet-bert)",
                cfg.display()
            ),
            None => bail!("{}: no model_type", cfg.display()),
        };
    }
    match pt_files(path)?.len() {
        1 => Ok(Family::OpenAiClip),
        0 => bail!(
            "{}: no config.json, open_clip_config.json, {IMPORT_FILE} or .pt checkpoint: not a model this \
             version reads",
            path.display()
        ),
        n => bail!("{}: {n} .pt files; pass the one to load", path.display()),
    }
}

/// The `.pt` / `.pth` files directly in `dir`.
pub(crate) fn pt_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pt" || e == "pth"))
        .collect())
}

/// The image encoder of an imported model.
pub enum ImageTower {
    Vit(vit_tower::VitTower),
    ResNet { trunk: resnet::ResNet, head: layers::Head },
}

impl ImageTower {
    pub fn forward(&self, px: &Tensor) -> Result<Tensor> {
        match self {
            ImageTower::Vit(v) => v.forward(px),
            ImageTower::ResNet { trunk, head, .. } => Ok(head.forward(&trunk.forward(px)?)?),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ImageTower::Vit(v) => format!(
                "ViT {}x{} patch {}, width {}, {} blocks, {} heads, {:?} pooling",
                v.image_size,
                v.image_size,
                v.patch_size,
                v.width(),
                v.blocks.len(),
                v.blocks.first().map(|b| b.attn.num_heads).unwrap_or(0),
                v.pool
            ),
            ImageTower::ResNet { trunk, .. } => format!(
                "ResNet, stages of {:?} blocks, {} output channels",
                trunk.layers.iter().map(|l| l.len()).collect::<Vec<_>>(),
                trunk.out_channels()
            ),
        }
    }
}

/// The text encoder of an imported model.
pub enum TextTower {
    Causal(causal_text::CausalTextTower),
    Bert(bert_tower::BertTower),
}

impl TextTower {
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self {
            TextTower::Causal(t) => t.forward(ids, mask),
            TextTower::Bert(t) => t.forward(ids, mask),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            TextTower::Causal(t) => format!(
                "causal transformer, width {}, {} blocks, context {}",
                t.token_embedding.dims()[1],
                t.blocks.len(),
                t.context_length()
            ),
            TextTower::Bert(t) => format!(
                "BERT, width {}, {} layers, {} heads, {:?} pooling",
                t.model.config.hidden_size,
                t.model.config.num_hidden_layers,
                t.model.config.num_attention_heads,
                t.pool
            ),
        }
    }
}

/// An imported checkpoint ready for inference.
pub struct ForeignModel {
    pub family: Family,
    /// The weights file read.
    pub weights: PathBuf,
    pub image: ImageTower,
    pub text: TextTower,
    /// `exp(logit_scale)`; families without one use CLIP's initial 1 / 0.07.
    pub logit_scale: f64,
    pub preprocess: PreprocessConfig,
    /// Tokenizer with the family's specials, not yet truncated.
    pub tokenizer: tokenizers::Tokenizer,
    pub context_length: usize,
    pub embed_dim: usize,
}

impl ForeignModel {
    /// Unnormalised projected image features `[b, dim]`.
    pub fn image_features(&self, px: &Tensor) -> Result<Tensor> {
        self.image.forward(px)
    }

    /// Unnormalised projected text features `[b, dim]`.
    pub fn text_features(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.text.forward(ids, mask)
    }

    /// The tokenizer truncating at the text encoder's context length.
    pub fn medvlp_tokenizer(&self) -> Result<medvlp_data::tokenizer::Tokenizer> {
        medvlp_data::tokenizer::Tokenizer::for_inference(
            self.tokenizer.clone(),
            self.context_length,
        )
    }

    pub fn describe(&self) -> Vec<(String, String)> {
        vec![
            ("family".into(), self.family.name().into()),
            ("weights".into(), self.weights.display().to_string()),
            ("image encoder".into(), self.image.describe()),
            ("text encoder".into(), self.text.describe()),
            ("embedding dim".into(), self.embed_dim.to_string()),
            ("context length".into(), self.context_length.to_string()),
            ("logit scale".into(), format!("{:.3}", self.logit_scale)),
        ]
    }
}

impl JointEncoder for ForeignModel {
    fn image_embeds(&self, px: &Tensor) -> candle_core::Result<Tensor> {
        let f = self.image_features(px).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        layers::l2(&f)
    }

    fn text_embeds(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let f =
            self.text_features(ids, mask).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        layers::l2(&f)
    }

    fn logit_scale(&self) -> candle_core::Result<f64> {
        Ok(self.logit_scale)
    }
}

/// Eval preprocessing: resize the shorter side to `size`, centre crop, per-channel mean/std.
pub fn preprocess(size: usize, channels: usize, mean: &[f32], std: &[f32]) -> PreprocessConfig {
    PreprocessConfig {
        image_size: size as u32,
        resize_shorter: size as u32,
        crop: CropMode::Center,
        channels: channels as u32,
        mean: mean.to_vec(),
        std: std.to_vec(),
        hist_eq: false,
        augment: Default::default(),
    }
}

/// Loads any family but medvlp's own directories.
pub fn load(path: &Path, device: &Device) -> Result<ForeignModel> {
    let family = detect(path)?;
    let spec = if path.is_dir() && path.join(IMPORT_FILE).exists() {
        Some(import_toml::ImportSpec::read(path)?)
    } else {
        None
    };
    let mut m = match family {
        Family::MedVlp => {
            bail!("{}: a medvlp model directory, not an imported checkpoint", path.display())
        }
        Family::OpenAiClip => clip_family::load_openai(path, device)?,
        Family::HfClip => clip_family::load_hf(path, device)?,
        Family::OpenClip => open_clip::load(path, device)?,
        Family::HfDualEncoder => hf_dual::load(path, device)?,
        Family::ResnetBert => resnet_bert::load(
            path,
            spec.as_ref().expect("resnet-bert is detected from its import file"),
            device,
        )?,
    };
    if let Some(spec) = &spec {
        spec.apply_preprocess(&mut m.preprocess)?;
    }
    Ok(m)
}
