//! Inference helpers shared by `embed`, the evaluation commands and the quickstart:
//! batched joint-space embeddings of texts and of images (decoded and eval-preprocessed in
//! parallel by the data crate's loader, in dataset order), and [`Evaluator`], a model directory
//! loaded for the evaluation protocols (`medvlp_eval` scores the embeddings it returns). No
//! autograd: inputs are plain tensors and the outputs are detached.

use crate::interop::{self, Family, ForeignModel};
use crate::model_dir::{self, LoadedModel};
use crate::MedVlp;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use medvlp_data::dataset::Study;
use medvlp_data::image::preprocess::PreprocessConfig;
use medvlp_data::loader::{Item, Loader, LoaderConfig};
use medvlp_data::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// A model that maps images and texts into one normalised embedding space: medvlp's own models
/// and every imported family ([`crate::interop`]).
pub trait JointEncoder: Send + Sync {
    /// L2-normalised image embeddings `[b, dim]`.
    fn image_embeds(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor>;
    /// L2-normalised text embeddings `[b, dim]`; `attention_mask` `[b, l]` 0/1.
    fn text_embeds(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor>;
    /// `exp(logit_scale)`: the inverse softmax temperature.
    fn logit_scale(&self) -> candle_core::Result<f64>;
}

impl JointEncoder for MedVlp {
    fn image_embeds(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        MedVlp::image_embeds(self, pixel_values)
    }
    fn text_embeds(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        MedVlp::text_embeds(self, input_ids, attention_mask)
    }
    fn logit_scale(&self) -> candle_core::Result<f64> {
        self.logit_scale_value()?.to_dtype(DType::F64)?.to_scalar::<f64>()
    }
}

/// `f` over ranges of a batch of `n` samples, their outputs concatenated along dim 0: split
/// across the cores on the CPU ([`crate::runtime::map_batch_ranges`]), one call elsewhere.
pub fn in_batch_ranges(
    n: usize,
    device: &Device,
    f: impl Fn(std::ops::Range<usize>) -> candle_core::Result<Tensor> + Sync,
) -> candle_core::Result<Tensor> {
    if !device.is_cpu() {
        return f(0..n);
    }
    let parts = crate::runtime::map_batch_ranges(n, f);
    Tensor::cat(&parts.into_iter().collect::<candle_core::Result<Vec<_>>>()?, 0)
}

/// `model.image_embeds(pixel_values)` with the batch split across the cores on the CPU
/// ([`in_batch_ranges`]): the same rows, faster.
pub fn image_embeds(
    model: &dyn JointEncoder,
    pixel_values: &Tensor,
) -> candle_core::Result<Tensor> {
    in_batch_ranges(pixel_values.dim(0)?, pixel_values.device(), |r| {
        model.image_embeds(&pixel_values.narrow(0, r.start, r.len())?)
    })
}

/// `model.text_embeds(..)` with the batch split across the cores on the CPU, as [`image_embeds`].
pub fn text_embeds(
    model: &dyn JointEncoder,
    input_ids: &Tensor,
    attention_mask: &Tensor,
) -> candle_core::Result<Tensor> {
    in_batch_ranges(input_ids.dim(0)?, input_ids.device(), |r| {
        let rows = |t: &Tensor| t.narrow(0, r.start, r.len());
        model.text_embeds(&rows(input_ids)?, &rows(attention_mask)?)
    })
}

/// L2-normalised text embeddings, one row per text, in input order.
pub fn encode_texts(
    model: &dyn JointEncoder,
    tok: &Tokenizer,
    texts: &[&str],
    batch_size: usize,
    dev: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch_size.max(1)) {
        let b = tok.encode_batch(chunk)?;
        let ids = Tensor::from_vec(b.input_ids.clone(), (b.batch, b.len), dev)?;
        let mask = Tensor::from_vec(
            b.attention_mask.iter().map(|&m| m as f32).collect::<Vec<_>>(),
            (b.batch, b.len),
            dev,
        )?;
        out.extend(text_embeds(model, &ids, &mask)?.detach().to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Image embeddings of dataset items (first image of each, eval preprocessing).
pub struct ImageEmbeddings {
    /// Indices into the input items of the rows of `embeddings` (bad samples are left out).
    pub indices: Vec<usize>,
    pub embeddings: Vec<Vec<f32>>,
    /// `(path or id, reason)` of every skipped sample.
    pub bad: Vec<(String, String)>,
}

/// Embeds the images of `items` in order; bad images are skipped and counted, and the call fails
/// past `max_bad_fraction` of the items.
pub fn encode_images(
    model: &dyn JointEncoder,
    pp: &PreprocessConfig,
    items: Vec<Item>,
    batch_size: usize,
    max_bad_fraction: f64,
    dev: &Device,
) -> Result<ImageEmbeddings> {
    if items.is_empty() {
        bail!("no images to embed");
    }
    let cfg = LoaderConfig {
        batch_size: batch_size.max(1),
        shuffle: false,
        train: false,
        max_bad_fraction,
        ..Default::default()
    };
    let loader = Loader::new(items, pp.clone(), cfg)?;
    let mut res = ImageEmbeddings { indices: vec![], embeddings: vec![], bad: vec![] };
    for b in loader.epoch(0, 0) {
        let b = b?;
        if b.is_empty() {
            continue;
        }
        let [c, h, w] = b.sample_shape;
        let px = Tensor::from_vec(b.images, (b.indices.len(), c, h, w), dev)?;
        res.embeddings.extend(image_embeds(model, &px)?.detach().to_vec2::<f32>()?);
        res.indices.extend(b.indices);
    }
    res.bad = loader.stats.bad_samples.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(res)
}

/// The eval preprocessing of a model of any family (imported checkpoints are loaded on the CPU
/// to read it, since some families state it only through their architecture).
pub fn preprocess_of(path: &Path) -> Result<PreprocessConfig> {
    if interop::detect(path)? == Family::MedVlp {
        return Ok(model_dir::load_config(path)?.preprocess);
    }
    Ok(interop::load(path, &Device::Cpu)?.preprocess)
}

/// The model behind an [`Evaluator`]: a medvlp directory or an imported checkpoint.
pub enum Loaded {
    MedVlp(Box<LoadedModel>),
    Foreign(Box<ForeignModel>),
}

/// A model (any family, see [`crate::interop::detect`]) loaded for evaluation: its encoder
/// (frozen, f32), eval preprocessing, tokenizer and weights' hash, embedding in batches of
/// `batch_size` on `device`.
pub struct Evaluator {
    pub model: Loaded,
    pub family: Family,
    pub preprocess: PreprocessConfig,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
    /// sha256 of the weights file (lowercase hex), when readable.
    pub model_hash: Option<String>,
    pub batch_size: usize,
    pub device: Device,
    /// fp32, or bf16 products for every embedding (`with_precision` around each call).
    pub precision: crate::nn::Precision,
}

impl Evaluator {
    /// Loads `dir` (a medvlp directory needs a `tokenizer.json`: prompts and reports are embedded).
    pub fn load(dir: &Path, batch_size: usize, device: &Device) -> Result<Self> {
        let family = interop::detect(dir)?;
        let (model, preprocess, tokenizer, weights) = if family == Family::MedVlp {
            let model = model_dir::load(dir, DType::F32, device, false)?;
            let tok = model
                .tokenizer
                .clone()
                .with_context(|| format!("{} has no tokenizer.json", dir.display()))?;
            let tokenizer = Tokenizer::from_file(&tok, model.config.text_config.max_length)?;
            let pp = model.config.preprocess.clone();
            (Loaded::MedVlp(Box::new(model)), pp, tokenizer, dir.join(model_dir::WEIGHTS_FILE))
        } else {
            let m = interop::load(dir, device)?;
            let tokenizer = m.medvlp_tokenizer()?;
            let pp = m.preprocess.clone();
            let w = m.weights.clone();
            (Loaded::Foreign(Box::new(m)), pp, tokenizer, w)
        };
        let model_hash =
            std::fs::read(&weights).ok().map(|bytes| medvlp_data::hash::sha256_hex(&bytes));
        Ok(Self {
            model,
            family,
            preprocess,
            tokenizer,
            dir: dir.to_path_buf(),
            model_hash,
            batch_size,
            device: device.clone(),
            precision: crate::nn::Precision::Fp32,
        })
    }

    /// The joint-space encoder.
    pub fn encoder(&self) -> &dyn JointEncoder {
        match &self.model {
            Loaded::MedVlp(m) => &m.model,
            Loaded::Foreign(m) => m.as_ref(),
        }
    }

    /// L2-normalised text embeddings, in input order.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        crate::nn::with_precision(self.precision, || {
            encode_texts(self.encoder(), &self.tokenizer, &refs, self.batch_size, &self.device)
        })
    }

    /// Image embeddings of the studies' first images (paths relative to `root`), eval
    /// preprocessing; studies whose image fails to load are left out (up to 5%).
    pub fn embed_studies(&self, studies: &[Study], root: &Path) -> Result<ImageEmbeddings> {
        crate::nn::with_precision(self.precision, || {
            encode_images(
                self.encoder(),
                &self.preprocess,
                Loader::items_from_studies(studies, root, None),
                self.batch_size,
                0.05,
                &self.device,
            )
        })
    }

    /// `1 / exp(logit_scale)`: the temperature of the positive/negative prompt softmax.
    pub fn temperature(&self) -> Result<f64> {
        Ok(1.0 / self.encoder().logit_scale()?)
    }
}
