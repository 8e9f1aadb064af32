//! `medvlp_import.toml`: how to read a checkpoint whose files do not say it themselves. Required
//! for ResNet + BERT training checkpoints (which tensors are the trunk, the heads, the text model);
//! for the other families it can override the preprocessing. Unknown keys are errors.

use super::Family;
use anyhow::{bail, Context, Result};
use medvlp_data::image::preprocess::PreprocessConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

const BUILTIN_KEYMAPS: &str = include_str!("../../data/keymaps.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyMap {
    /// Prefix of the torchvision ResNet (`conv1`, `bn1`, `layer1..4`).
    pub image_trunk: String,
    /// Prefix of the image projection `nn.Sequential` and its layer kinds.
    #[serde(default)]
    pub image_head: String,
    #[serde(default)]
    pub image_head_layers: Vec<String>,
    /// Prefix of the Hugging Face BERT (`embeddings`, `encoder`).
    pub text_model: String,
    /// `cls` (last layer's [CLS]), `mean` (masked mean) or `pooler`.
    #[serde(default = "cls")]
    pub text_pool: String,
    #[serde(default)]
    pub text_head: String,
    #[serde(default)]
    pub text_head_layers: Vec<String>,
    /// BERT's attention heads (default width / 64).
    #[serde(default)]
    pub text_heads: Option<usize>,
    #[serde(default = "bert_eps")]
    pub text_eps: f64,
    /// `arange` (BERT) or `zero` (every token at position 0, as MGCA's code runs it).
    #[serde(default = "arange")]
    pub text_positions: String,
    #[serde(default)]
    pub ignore: Vec<String>,
}

fn cls() -> String {
    "cls".into()
}
fn arange() -> String {
    "arange".into()
}
fn bert_eps() -> f64 {
    1e-12
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessOverride {
    pub image_size: Option<u32>,
    pub resize_shorter: Option<u32>,
    pub channels: Option<u32>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum KeyMapRef {
    Builtin(String),
    Inline(Box<KeyMap>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    family: String,
    #[serde(default)]
    checkpoint: Option<PathBuf>,
    #[serde(default)]
    tokenizer: Option<PathBuf>,
    #[serde(default)]
    context_length: Option<usize>,
    #[serde(default)]
    keymap: Option<KeyMapRef>,
    /// `exp(logit_scale)` for models trained without one (MGCA: 1 / 0.07 by default).
    #[serde(default)]
    logit_scale: Option<f64>,
    /// BERT's attention heads, overriding the key map's (default width / 64).
    #[serde(default)]
    text_heads: Option<usize>,
    #[serde(default)]
    preprocess: PreprocessOverride,
}

#[derive(Clone, Debug)]
pub struct ImportSpec {
    pub path: PathBuf,
    pub family: Family,
    pub checkpoint: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub context_length: Option<usize>,
    pub keymap: Option<KeyMap>,
    pub logit_scale: Option<f64>,
    pub preprocess: PreprocessOverride,
}

/// The built-in key map `name`.
pub fn builtin_keymap(name: &str) -> Result<KeyMap> {
    let all: toml::Table = toml::from_str(BUILTIN_KEYMAPS).expect("built-in key maps parse");
    let v = all.get(name).with_context(|| {
        format!(
            "no built-in key map '{name}' (built in: {})",
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    Ok(v.clone().try_into().expect("built-in key map is valid"))
}

impl ImportSpec {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(super::IMPORT_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let raw: RawSpec =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let family = match raw.family.as_str() {
            "resnet-bert" => Family::ResnetBert,
            "openai-clip" => Family::OpenAiClip,
            "hf-clip" => Family::HfClip,
            "open_clip" => Family::OpenClip,
            "hf-dual-encoder" => Family::HfDualEncoder,
            other => bail!(
                "{}: family '{other}' is not one of resnet-bert, openai-clip, hf-clip, open_clip, hf-dual-encoder",
                path.display()
            ),
        };
        let mut keymap = match raw.keymap {
            Some(KeyMapRef::Builtin(n)) => {
                Some(builtin_keymap(&n).with_context(|| path.display().to_string())?)
            }
            Some(KeyMapRef::Inline(k)) => Some(*k),
            None => None,
        };
        if let (Some(k), Some(h)) = (keymap.as_mut(), raw.text_heads) {
            k.text_heads = Some(h);
        }
        if family == Family::ResnetBert && keymap.is_none() {
            bail!("{}: family resnet-bert needs a keymap (a built-in name such as \"mgca\", or a [keymap] table)", path.display());
        }
        if family != Family::ResnetBert && keymap.is_some() {
            bail!("{}: keymap is only read for family resnet-bert", path.display());
        }
        Ok(Self {
            path,
            family,
            checkpoint: raw.checkpoint.map(|c| dir.join(c)),
            tokenizer: raw.tokenizer.map(|t| dir.join(t)),
            context_length: raw.context_length,
            keymap,
            logit_scale: raw.logit_scale,
            preprocess: raw.preprocess,
        })
    }

    pub fn apply_preprocess(&self, pp: &mut PreprocessConfig) -> Result<()> {
        let o = &self.preprocess;
        if let Some(s) = o.image_size {
            pp.image_size = s;
            pp.resize_shorter = pp.resize_shorter.max(s);
        }
        if let Some(r) = o.resize_shorter {
            if r < pp.image_size {
                bail!(
                    "{}: preprocess.resize_shorter {r} is below image_size {}",
                    self.path.display(),
                    pp.image_size
                );
            }
            pp.resize_shorter = r;
        }
        if let Some(c) = o.channels {
            pp.channels = c;
        }
        if let Some(m) = &o.mean {
            pp.mean = m.clone();
        }
        if let Some(s) = &o.std {
            pp.std = s.clone();
        }
        Ok(())
    }
}
