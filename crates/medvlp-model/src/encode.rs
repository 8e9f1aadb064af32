//! Inference helpers shared by `embed`, the evaluation commands and the quickstart:
//! batched joint-space embeddings of texts and of images (decoded and eval-preprocessed in
//! parallel by the data crate's loader, in dataset order), and [`Evaluator`], a model directory
//! loaded for the evaluation protocols (`medvlp_eval` scores the embeddings it returns). No
//! autograd: inputs are plain tensors and the outputs are detached.

use crate::model_dir::{self, LoadedModel};
use crate::MedVlp;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use medvlp_data::dataset::Study;
use medvlp_data::image::preprocess::PreprocessConfig;
use medvlp_data::loader::{Item, Loader, LoaderConfig};
use medvlp_data::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// L2-normalised text embeddings, one row per text, in input order.
pub fn encode_texts(
    model: &MedVlp,
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
        out.extend(model.text_embeds(&ids, &mask)?.detach().to_vec2::<f32>()?);
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
    model: &MedVlp,
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
        res.embeddings.extend(model.image_embeds(&px)?.detach().to_vec2::<f32>()?);
        res.indices.extend(b.indices);
    }
    res.bad = loader.stats.bad_samples.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(res)
}

/// A model directory loaded for evaluation: its model (frozen, f32), tokenizer and weights' hash,
/// embedding in batches of `batch_size` on `device`.
pub struct Evaluator {
    pub model: LoadedModel,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
    /// sha256 of `model.safetensors` (lowercase hex), when readable.
    pub model_hash: Option<String>,
    pub batch_size: usize,
    pub device: Device,
}

impl Evaluator {
    /// Loads `dir`; it needs a `tokenizer.json` (prompts and reports are embedded).
    pub fn load(dir: &Path, batch_size: usize, device: &Device) -> Result<Self> {
        let model = model_dir::load(dir, DType::F32, device, false)?;
        let tok = model
            .tokenizer
            .clone()
            .with_context(|| format!("{} has no tokenizer.json", dir.display()))?;
        let tokenizer = Tokenizer::from_file(&tok, model.config.text_config.max_length)?;
        let model_hash = std::fs::read(dir.join(model_dir::WEIGHTS_FILE))
            .ok()
            .map(|bytes| medvlp_data::hash::sha256_hex(&bytes));
        Ok(Self {
            model,
            tokenizer,
            dir: dir.to_path_buf(),
            model_hash,
            batch_size,
            device: device.clone(),
        })
    }

    /// L2-normalised text embeddings, in input order.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        encode_texts(&self.model.model, &self.tokenizer, &refs, self.batch_size, &self.device)
    }

    /// Image embeddings of the studies' first images (paths relative to `root`), eval
    /// preprocessing; studies whose image fails to load are left out (up to 5%).
    pub fn embed_studies(&self, studies: &[Study], root: &Path) -> Result<ImageEmbeddings> {
        encode_images(
            &self.model.model,
            &self.model.config.preprocess,
            Loader::items_from_studies(studies, root, None),
            self.batch_size,
            0.05,
            &self.device,
        )
    }

    /// `1 / exp(logit_scale)`: the temperature of the positive/negative prompt softmax.
    pub fn temperature(&self) -> Result<f64> {
        Ok(1.0 / self.model.model.logit_scale_value()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }
}
