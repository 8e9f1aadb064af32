//! The dual-encoder vision-language model with its optional pre-training heads. Parameter names
//! follow Hugging Face CLIP (`vision_model.*`, `text_model.*`, `visual_projection`,
//! `text_projection`, `logit_scale`) plus `fusion.layer.N.*`, `mae_decoder.*` and `mlm_head.*`.

use crate::bert::BertModel;
use crate::config::{MemoryQuery, ModelConfig, Pooling, ProjectionKind};
use crate::fusion::{FusionLayer, FusionOutput};
use crate::heads::{l2_normalize, MlmHead, ProjectionHead};
use crate::mae_decoder::MaeDecoder;
use crate::memory::CrossModalMemory;
use crate::nn::additive_mask;
use crate::nn::Linear;
use crate::params::ParamStore;
use crate::vision::VisionEncoder;
use candle_core::{Module, Result, Tensor};
use candle_nn::Init;

/// How many encoder passes a model ran (MCR's single stream claims one pass per modality per step).
#[derive(Debug, Default)]
pub struct PassCounter {
    pub vision: std::sync::atomic::AtomicUsize,
    pub text: std::sync::atomic::AtomicUsize,
}

impl PassCounter {
    pub fn get(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.vision.load(Relaxed), self.text.load(Relaxed))
    }
}

#[derive(Clone, Debug)]
pub struct MedVlp {
    pub config: ModelConfig,
    pub vision_model: VisionEncoder,
    pub text_model: BertModel,
    pub visual_projection: ProjectionHead,
    pub text_projection: ProjectionHead,
    /// Scalar (rank-0) learnable log of the contrastive temperature's inverse.
    pub logit_scale: Tensor,
    /// Text queries over image tokens (MLM with visual support).
    pub fusion: Vec<FusionLayer>,
    pub mae_decoder: Option<MaeDecoder>,
    pub mlm_head: Option<MlmHead>,
    /// Token-level mapping heads for local alignment (`local_visual_projection`, `local_text_projection`).
    pub local_projection: Option<(ProjectionHead, ProjectionHead)>,
    /// MA-CMF memory read by the fusion layers.
    pub memory: Option<CrossModalMemory>,
    /// Image-text matching: fused [CLS] -> {no match, match}.
    pub itm_head: Option<Linear>,
    pub passes: std::sync::Arc<PassCounter>,
}

impl MedVlp {
    pub fn new(config: &ModelConfig, store: &ParamStore) -> Result<Self> {
        config.validate().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let vb = store.var_builder();
        let vc = &config.vision_config;
        let tc = &config.text_config;
        let vision_model = VisionEncoder::new(vc, vb.pp("vision_model"))?;
        let text_model = BertModel::new(tc, tc.pooling == Pooling::Pooler, vb.pp("text_model"))?;
        let visual_projection = ProjectionHead::new(
            config.projection,
            vc.hidden_size,
            config.projection_dim,
            vb.pp("visual_projection"),
        )?;
        let text_projection = ProjectionHead::new(
            config.projection,
            tc.hidden_size,
            config.projection_dim,
            vb.pp("text_projection"),
        )?;
        let logit_scale =
            vb.get_with_hints((), "logit_scale", Init::Const(config.logit_scale.init_value))?;
        let fusion = match &config.fusion_config {
            Some(f) => (0..f.num_layers)
                .map(|i| {
                    FusionLayer::new(
                        tc.hidden_size,
                        Some(vc.hidden_size),
                        f.num_attention_heads,
                        f.intermediate_size,
                        tc.layer_norm_eps,
                        vb.pp("fusion").pp("layer").pp(i),
                    )
                })
                .collect::<Result<Vec<_>>>()?,
            None => vec![],
        };
        let mae_decoder = config
            .decoder_config
            .as_ref()
            .map(|d| MaeDecoder::new(d, vc, tc.hidden_size, vb.pp("mae_decoder")))
            .transpose()?;
        let mlm_head =
            if config.mlm_head { Some(MlmHead::new(tc, vb.pp("mlm_head"))?) } else { None };
        let local_projection = if config.local_projection {
            Some((
                // Always 2-layer MLPs: with linear heads mapping and aggregation commute (up to
                // scale) and MbA would equal aggregate-then-map.
                ProjectionHead::new(
                    ProjectionKind::Mlp,
                    vc.hidden_size,
                    config.projection_dim,
                    vb.pp("local_visual_projection"),
                )?,
                ProjectionHead::new(
                    ProjectionKind::Mlp,
                    tc.hidden_size,
                    config.projection_dim,
                    vb.pp("local_text_projection"),
                )?,
            ))
        } else {
            None
        };
        let memory = config
            .memory_config
            .as_ref()
            .map(|m| {
                let query_width = match m.query {
                    MemoryQuery::Text => tc.hidden_size,
                    MemoryQuery::Image => vc.hidden_size,
                };
                CrossModalMemory::new(m, query_width, tc.hidden_size, vb.pp("memory"))
            })
            .transpose()?;
        let itm_head = if config.itm_head {
            Some(Linear::new(tc.hidden_size, 2, true, vb.pp("itm_head"))?)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            vision_model,
            text_model,
            visual_projection,
            text_projection,
            logit_scale,
            fusion,
            mae_decoder,
            mlm_head,
            local_projection,
            memory,
            itm_head,
            passes: Default::default(),
        })
    }

    /// Text features `[b, l, hidden]`.
    pub fn text_features(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        Ok(self.text_features_with_cls_attention(input_ids, attention_mask, false)?.0)
    }

    /// Text features and, when asked, the last layer's [CLS] attention `[b, l]`.
    pub fn text_features_with_cls_attention(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cls: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.passes.text.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.text_model.forward_with_cls_attention(input_ids, None, Some(attention_mask), cls)
    }

    /// Image features of all patches `[b, 1 + patches, width]`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.passes.vision.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.vision_model.forward(pixel_values)
    }

    /// Image features of the visible patches `[b, 1 + keep, width]`.
    pub fn image_features_masked(
        &self,
        pixel_values: &Tensor,
        mask: &crate::masking::PatchMask,
    ) -> Result<Tensor> {
        self.passes.vision.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.vision_model.forward_masked(pixel_values, mask)
    }

    /// Pools `features` (`[b, 1 + patches, width]`, visible patches only when masked) as the
    /// vision config says, projects and L2-normalises.
    pub fn project_image(&self, features: &Tensor) -> Result<Tensor> {
        let pooled = self.vision_model.pool(features)?;
        l2_normalize(&self.visual_projection.forward(&pooled)?)
    }

    /// Pools text `features` (`[b, l, hidden]`; `attention_mask` `[b, l]` 0/1), projects and
    /// L2-normalises.
    pub fn project_text(&self, features: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let pooled = match self.config.text_config.pooling {
            Pooling::Cls => features.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Pooler => self.text_model.pool(features)?.expect("built with the pooler"),
            Pooling::Mean => {
                let m = attention_mask.to_dtype(features.dtype())?.unsqueeze(2)?;
                let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
                features.broadcast_mul(&m)?.sum(1)?.broadcast_div(&count)?
            }
        };
        l2_normalize(&self.text_projection.forward(&pooled)?)
    }

    /// Normalised joint-space image embeddings `[b, projection_dim]` (unmasked input); a
    /// CLS-pooled ViT computes only the CLS token in its last block.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.passes.vision.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pooled = self.vision_model.forward_pooled(pixel_values)?;
        l2_normalize(&self.visual_projection.forward(&pooled)?)
    }

    /// Normalised joint-space text embeddings `[b, projection_dim]`.
    /// CLS and pooler pooling compute only the [CLS] token in the text tower's last layer.
    pub fn text_embeds(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let pooling = self.config.text_config.pooling;
        if pooling == Pooling::Mean {
            return self
                .project_text(&self.text_features(input_ids, attention_mask)?, attention_mask);
        }
        self.passes.text.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cls = self.text_model.forward_cls(input_ids, None, Some(attention_mask))?;
        let pooled = match pooling {
            Pooling::Pooler => self.text_model.pool_cls(&cls)?.expect("built with the pooler"),
            _ => cls,
        };
        l2_normalize(&self.text_projection.forward(&pooled)?)
    }

    /// `exp(min(logit_scale, max))`: the clamp keeps the temperature from collapsing (CLIP).
    /// With `logit_scale.learnable = false` the temperature stays at its initial value.
    pub fn logit_scale_value(&self) -> Result<Tensor> {
        let s = if self.config.logit_scale.learnable {
            self.logit_scale.clone()
        } else {
            self.logit_scale.detach()
        };
        s.clamp(f64::MIN, self.config.logit_scale.max_value)?.exp()
    }

    /// Text tokens attend to image tokens through the fusion stack. `text_mask`: `[b, l]` 0/1.
    /// Returns the fused text states and, when asked, each layer's cross-attention probabilities.
    pub fn fuse_text(
        &self,
        text: &Tensor,
        text_mask: &Tensor,
        image: &Tensor,
        return_probs: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        if self.fusion.is_empty() {
            candle_core::bail!("this model has no fusion layers (fusion_config is absent)");
        }
        let m = additive_mask(text_mask, text.dtype())?;
        let mut h = text.clone();
        let mut probs = vec![];
        for (i, layer) in self.fusion.iter().enumerate() {
            // MA-CMF: the text (or the image) tokens read the memory before the text attends to
            // the image.
            let mut ctx = image.clone();
            if let Some(mem) = self.memory.as_ref().filter(|m| m.reads_layer(i)) {
                match mem.config.query {
                    MemoryQuery::Text => h = (&h + mem.read(&h)?)?,
                    MemoryQuery::Image => ctx = (image + mem.read(image)?)?,
                }
            }
            let FusionOutput { hidden, cross_probs } =
                layer.forward(&h, Some(&m), Some(&ctx), None, return_probs)?;
            h = hidden;
            probs.extend(cross_probs);
        }
        Ok((h, probs))
    }
}
