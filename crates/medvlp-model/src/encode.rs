//! Inference helpers shared by `embed`, the evaluation commands, the quickstart and the server:
//! batched joint-space embeddings of texts and of images (decoded and eval-preprocessed in
//! parallel by the data crate's loader, in dataset order). No autograd: inputs are plain tensors
//! and the outputs are detached.

use crate::MedVlp;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use medvlp_data::image::preprocess::PreprocessConfig;
use medvlp_data::loader::{Item, Loader, LoaderConfig};
use medvlp_data::tokenizer::Tokenizer;

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
