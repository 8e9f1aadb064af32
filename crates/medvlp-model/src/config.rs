//! Model configuration: the `config.json` of a medvlp model directory (Hugging Face CLIP-like:
//! `vision_config`, `text_config`, `projection_dim`, `logit_scale`, plus `preprocess` and `method`).

use medvlp_data::image::preprocess::{CropMode, PreprocessConfig};
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionEmbedding {
    /// Learned `[1, 1 + patches, width]` table (Hugging Face ViT).
    Learned,
    /// Fixed 2-D sin-cos table (MAE); not a parameter.
    Sincos,
}

/// The image encoder's architecture (`vision_config.model_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VisionArch {
    /// Vision Transformer (Hugging Face `ViTModel`).
    #[default]
    Vit,
    /// Plain strided CNN (channels-last convolutions, LayerNorm over channels, GELU) whose
    /// `patch_size`-times downsampled feature map is the token grid. Learns far faster than a ViT
    /// from scratch on a few thousand images (see `convnet.rs`).
    Convnet,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    #[serde(default)]
    pub model_type: VisionArch,
    /// ConvNet widths: the stem, then one per stride-2 stage (`log2(patch_size)` entries, the last
    /// equal to `hidden_size`). Empty for a ViT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conv_channels: Vec<usize>,
    /// How the joint-space embedding pools the encoder output.
    #[serde(default)]
    pub pooling: Pooling,
    pub image_size: usize,
    pub num_channels: usize,
    pub patch_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub position_embedding: PositionEmbedding,
    #[serde(default = "default_ln_eps_vit")]
    pub layer_norm_eps: f64,
}

/// Pooling of an encoder's output into the vector that is projected to the joint space.
/// `cls`: the first token (CLIP, HF BERT). `mean`: the mean of the patch tokens / of the unpadded
/// text tokens. From-scratch encoders start with nearly identical [CLS] outputs for every input
/// (cosine 0.99999 between reports at init on the small preset), which stalls contrastive
/// learning for hundreds of steps; mean pooling starts input-dependent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Cls,
    Mean,
    /// Text only: BERT's pooler, `tanh(pooler.dense(h[CLS]))` (Hugging Face `pooler_output`),
    /// which is how `VisionTextDualEncoderModel` pools; such models export to transformers.
    Pooler,
}

fn default_ln_eps_vit() -> f64 {
    1e-6
}

impl VisionConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.num_channels
    }

    /// A ConvNet: `widths[0]` for the 5x5 stride-2 stem, then one stage per further width.
    pub fn convnet(image_size: usize, patch_size: usize, widths: &[usize]) -> anyhow::Result<Self> {
        let c = Self {
            model_type: VisionArch::Convnet,
            conv_channels: widths.to_vec(),
            pooling: Pooling::Mean,
            image_size,
            num_channels: 1,
            patch_size,
            hidden_size: *widths.last().unwrap_or(&0),
            num_hidden_layers: widths.len(),
            num_attention_heads: 1,
            intermediate_size: 0,
            position_embedding: PositionEmbedding::Learned,
            layer_norm_eps: 1e-6,
        };
        c.validate()?;
        Ok(c)
    }

    /// Errors unless `pixel_values` is `[b, num_channels, image_size, image_size]`.
    pub fn check_pixels(&self, pixel_values: &candle_core::Tensor) -> candle_core::Result<()> {
        let (_, c, h, w) = pixel_values.dims4()?;
        if c != self.num_channels || h != self.image_size || w != self.image_size {
            candle_core::bail!(
                "image encoder expects [b, {}, {}, {}], got {:?}",
                self.num_channels,
                self.image_size,
                self.image_size,
                pixel_values.dims()
            );
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            anyhow::bail!(
                "vision image_size {} is not a multiple of patch_size {}",
                self.image_size,
                self.patch_size
            );
        }
        if self.pooling == Pooling::Pooler {
            anyhow::bail!("vision pooling 'pooler' does not exist (cls or mean)");
        }
        match self.model_type {
            VisionArch::Vit => {
                if !self.hidden_size.is_multiple_of(self.num_attention_heads.max(1))
                    || self.num_attention_heads == 0
                {
                    anyhow::bail!(
                        "vision hidden_size {} not divisible by {} heads",
                        self.hidden_size,
                        self.num_attention_heads
                    );
                }
            }
            VisionArch::Convnet => {
                let w = &self.conv_channels;
                if w.is_empty()
                    || 1usize << w.len() != self.patch_size
                    || w.last() != Some(&self.hidden_size)
                    || w.contains(&0)
                {
                    anyhow::bail!(
                        "convnet: conv_channels {w:?} must have log2(patch_size {}) non-zero entries ending with hidden_size {}",
                        self.patch_size, self.hidden_size
                    );
                }
            }
        }
        Ok(())
    }

    pub fn preset(name: &str) -> anyhow::Result<Self> {
        let (image_size, num_channels, patch_size, hidden, layers, heads, mlp) = match name {
            "tiny" => (32, 1, 8, 32, 2, 2, 64),
            // CPU demo: the reference model's vision tower (128 px, 64 patches).
            "small" => return Self::convnet(128, 16, &[32, 64, 128, 256]),
            // The ViT of the same width: the reference model's vision tower.
            "small-vit" => (128, 1, 16, 256, 4, 4, 1024),
            // ViT-B/16 at 224 px, 3 channels so that ImageNet / CXR ViT checkpoints load.
            "base" => (224, 3, 16, 768, 12, 12, 3072),
            "tiny-convnet" => return Self::convnet(32, 8, &[8, 16, 32]),
            _ => anyhow::bail!(
                "unknown vision preset '{name}' (tiny, tiny-convnet, small, small-vit, base)"
            ),
        };
        Ok(Self {
            model_type: VisionArch::Vit,
            conv_channels: vec![],
            pooling: if name == "base" { Pooling::Cls } else { Pooling::Mean },
            image_size,
            num_channels,
            patch_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: mlp,
            position_embedding: PositionEmbedding::Learned,
            layer_norm_eps: 1e-6,
        })
    }
}

/// Hugging Face `BertConfig` fields (unknown fields in a BERT `config.json` are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Not a BertConfig field (Hugging Face ignores it); `cls` when absent.
    #[serde(default)]
    pub pooling: Pooling,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_ln_eps_bert")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    /// Tokens per report after truncation (not a BERT field; defaults to 128).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

fn default_type_vocab() -> usize {
    2
}
fn default_ln_eps_bert() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position_type() -> String {
    "absolute".into()
}
fn default_max_length() -> usize {
    128
}

impl TextConfig {
    pub fn preset(name: &str) -> anyhow::Result<Self> {
        let (vocab, hidden, layers, heads, mlp, pos) = match name {
            "tiny" => (1000, 32, 2, 2, 64, 64),
            "small" => (30522, 256, 4, 4, 1024, 128),
            "base" => (30522, 768, 12, 12, 3072, 512),
            _ => anyhow::bail!("unknown text preset '{name}' (tiny, small, base)"),
        };
        Ok(Self {
            pooling: if name == "base" { Pooling::Cls } else { Pooling::Mean },
            vocab_size: vocab,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: mlp,
            max_position_embeddings: pos,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            hidden_act: "gelu".into(),
            position_embedding_type: "absolute".into(),
            max_length: pos.min(128),
        })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.hidden_act != "gelu" {
            anyhow::bail!(
                "text_config.hidden_act '{}' is not supported (only 'gelu')",
                self.hidden_act
            );
        }
        if self.position_embedding_type != "absolute" {
            anyhow::bail!(
                "text_config.position_embedding_type '{}' is not supported (only 'absolute')",
                self.position_embedding_type
            );
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            anyhow::bail!(
                "text hidden_size {} not divisible by {} heads",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionKind {
    Linear,
    Mlp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogitScaleConfig {
    /// ln(1 / 0.07)
    pub init_value: f64,
    /// ln(100): the learnable scale is clamped to this.
    pub max_value: f64,
    pub learnable: bool,
}

impl Default for LogitScaleConfig {
    fn default() -> Self {
        Self { init_value: (1.0f64 / 0.07).ln(), max_value: 100f64.ln(), learnable: true }
    }
}

/// Cross-modal fusion stack (self-attention -> cross-attention -> MLP per block).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusionConfig {
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
}

/// MAE decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Decoder blocks cross-attend to text features (AttMIM's text-conditioned reconstruction).
    #[serde(default)]
    pub cross_attention: bool,
}

/// Which tokens read the MA-CMF memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryQuery {
    /// The report's tokens query the memory before they attend to the image; the response is
    /// added to them (the method spec's text queries; R2GenCMN adds each modality's memory
    /// response to that modality, since a response per text token cannot be added to the image
    /// tokens).
    Text,
    /// The image tokens query the memory; the response is added to them before the text attends
    /// to them. The default of model directories written before this choice existed.
    #[default]
    Image,
}

/// MA-CMF memory (R2GenCMN-style cross-modal memory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {
    pub slots: usize,
    pub top_k: usize,
    pub num_heads: usize,
    /// Fusion layers that read the memory (empty = all).
    #[serde(default)]
    pub layers: Vec<usize>,
    #[serde(default)]
    pub query: MemoryQuery,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default = "default_format")]
    pub format_version: u32,
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
    pub projection_dim: usize,
    #[serde(default = "default_projection")]
    pub projection: ProjectionKind,
    #[serde(default)]
    pub logit_scale: LogitScaleConfig,
    /// Present when the method uses cross-modal fusion (MLM with visual support, AttMIM scores).
    #[serde(default)]
    pub fusion_config: Option<FusionConfig>,
    #[serde(default)]
    pub decoder_config: Option<DecoderConfig>,
    /// Whether the model carries an MLM head (tied to the word embeddings).
    #[serde(default)]
    pub mlm_head: bool,
    /// Token-level mapping heads to the joint space for local (word<->patch) alignment.
    #[serde(default)]
    pub local_projection: bool,
    /// MA-CMF memory read by the fusion layers (MPMA).
    #[serde(default)]
    pub memory_config: Option<MemoryConfig>,
    /// Image-text matching head on the fused [CLS] state.
    #[serde(default)]
    pub itm_head: bool,
    /// Image preprocessing the model was trained with (and that evaluation must repeat).
    #[serde(default = "default_preprocess")]
    pub preprocess: PreprocessConfig,
    /// The pre-training method and its settings (recipe name, objectives, weights).
    #[serde(default = "default_method")]
    pub method: serde_json::Value,
}

fn default_model_type() -> String {
    "medvlp".into()
}
fn default_format() -> u32 {
    FORMAT_VERSION
}
fn default_projection() -> ProjectionKind {
    ProjectionKind::Linear
}
fn default_method() -> serde_json::Value {
    serde_json::json!({ "name": "none" })
}

/// Preprocessing for chest X-rays at a given size: shorter side to 8/7 of the input, random-resized
/// crop in training (center crop in evaluation), grey values normalised around 0.5, no flips.
pub fn default_preprocess_for(image_size: usize, channels: usize) -> PreprocessConfig {
    PreprocessConfig {
        image_size: image_size as u32,
        resize_shorter: (image_size * 8 / 7) as u32,
        crop: CropMode::RandomResized,
        channels: channels as u32,
        mean: vec![0.5],
        std: vec![0.25],
        hist_eq: false,
        augment: Default::default(),
    }
}

fn default_preprocess() -> PreprocessConfig {
    default_preprocess_for(224, 1)
}

impl ModelConfig {
    /// A preset with every head (fusion, decoder, MLM) present, as the pre-training recipes use.
    pub fn preset(name: &str) -> anyhow::Result<Self> {
        let vision = VisionConfig::preset(name)?;
        // `small-vit`, `tiny-convnet`: the named image encoder with the base preset's other parts
        let name = name.split('-').next().unwrap_or(name);
        let text = TextConfig::preset(name)?;
        let (proj, fusion, decoder) = match name {
            "tiny" => (
                16,
                FusionConfig { num_layers: 1, num_attention_heads: 2, intermediate_size: 64 },
                DecoderConfig {
                    hidden_size: 16,
                    num_layers: 1,
                    num_attention_heads: 2,
                    intermediate_size: 32,
                    cross_attention: true,
                },
            ),
            "small" => (
                128,
                FusionConfig { num_layers: 1, num_attention_heads: 4, intermediate_size: 1024 },
                DecoderConfig {
                    hidden_size: 128,
                    num_layers: 2,
                    num_attention_heads: 4,
                    intermediate_size: 512,
                    cross_attention: true,
                },
            ),
            _ => (
                256,
                FusionConfig { num_layers: 2, num_attention_heads: 12, intermediate_size: 3072 },
                DecoderConfig {
                    hidden_size: 384,
                    num_layers: 4,
                    num_attention_heads: 6,
                    intermediate_size: 1536,
                    cross_attention: true,
                },
            ),
        };
        let preprocess = default_preprocess_for(vision.image_size, vision.num_channels);
        Ok(Self {
            model_type: default_model_type(),
            format_version: FORMAT_VERSION,
            vision_config: vision,
            text_config: text,
            projection_dim: proj,
            projection: ProjectionKind::Linear,
            logit_scale: LogitScaleConfig::default(),
            fusion_config: Some(fusion),
            decoder_config: Some(decoder),
            mlm_head: true,
            local_projection: false,
            memory_config: None,
            itm_head: false,
            preprocess,
            method: default_method(),
        })
    }

    /// Width of the fusion stack: the text width (text queries attend to image tokens projected
    /// to this width).
    pub fn fusion_width(&self) -> usize {
        self.text_config.hidden_size
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.text_config.validate()?;
        let v = &self.vision_config;
        v.validate()?;
        if self.preprocess.image_size as usize != v.image_size
            || self.preprocess.channels as usize != v.num_channels
        {
            anyhow::bail!(
                "preprocess produces {}x{} images with {} channels, the image encoder expects {} px with {}",
                self.preprocess.image_size, self.preprocess.image_size, self.preprocess.channels, v.image_size, v.num_channels
            );
        }
        self.preprocess.validate()?;
        if self.format_version > FORMAT_VERSION {
            anyhow::bail!(
                "model format version {} is newer than this medvlp ({FORMAT_VERSION})",
                self.format_version
            );
        }
        Ok(())
    }
}
