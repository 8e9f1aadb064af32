//! The image encoder a model config names (`vision_config.model_type`): ViT or ConvNet. Both
//! return `[b, 1 + patches, width]` (slot 0: ViT [CLS] / ConvNet token mean) and encode a
//! per-sample visible-patch subset for the masked objectives.

use crate::config::{Pooling, VisionArch, VisionConfig};
use crate::convnet::ConvNet;
use crate::masking::PatchMask;
use crate::vit::VisionTransformer;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub enum VisionEncoder {
    Vit(VisionTransformer),
    ConvNet(ConvNet),
}

impl VisionEncoder {
    pub fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match config.model_type {
            VisionArch::Vit => Self::Vit(VisionTransformer::new(config, vb)?),
            VisionArch::Convnet => Self::ConvNet(ConvNet::new(config, vb)?),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        match self {
            Self::Vit(m) => &m.config,
            Self::ConvNet(m) => &m.config,
        }
    }

    /// All patches: `[b, 1 + patches, width]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        match self {
            Self::Vit(m) => m.forward(pixel_values),
            Self::ConvNet(m) => m.forward(pixel_values),
        }
    }

    /// Visible patches only: `[b, 1 + keep, width]` in `mask.keep` order.
    pub fn forward_masked(&self, pixel_values: &Tensor, mask: &PatchMask) -> Result<Tensor> {
        match self {
            Self::Vit(m) => m.forward_masked(pixel_values, mask),
            Self::ConvNet(m) => m.forward_masked(pixel_values, mask),
        }
    }

    /// The pooled vector of `pixel_values`' features, `[b, width]`: `pool(forward(..))`, with a
    /// CLS-pooled ViT computing only the CLS token in its last block.
    pub fn forward_pooled(&self, pixel_values: &Tensor) -> Result<Tensor> {
        match (self, self.config().pooling) {
            (Self::Vit(m), Pooling::Cls) => m.forward_cls(pixel_values),
            _ => self.pool(&self.forward(pixel_values)?),
        }
    }

    /// The pooled vector of `features` (`[b, 1 + n, width]`) as the config's pooling says.
    pub fn pool(&self, features: &Tensor) -> Result<Tensor> {
        match self.config().pooling {
            Pooling::Cls => features.narrow(1, 0, 1)?.squeeze(1),
            Pooling::Mean => features.narrow(1, 1, features.dim(1)? - 1)?.mean(1),
            Pooling::Pooler => candle_core::bail!("vision pooling 'pooler' does not exist"),
        }
    }
}
