//! A training batch as tensors: images of paired and image-only samples, texts of paired samples
//! (reports), image-only samples (disease-kind prompts) and text-only samples (reports).

use candle_core::Tensor;

/// Tokenised texts with what masking needs.
#[derive(Clone, Debug)]
pub struct TextBatch {
    /// `[rows, len]` u32.
    pub ids: Tensor,
    /// `[rows, len]` f32, 1 = token.
    pub mask: Tensor,
    /// Word index of each token (`None`: special or padding).
    pub word_ids: Vec<Vec<Option<u32>>>,
    /// Token positions of each medical entity, per row (EntMLM).
    pub entities: Vec<Vec<Vec<usize>>>,
    pub mask_id: u32,
}

/// Rows: `n_paired` paired samples, then `n_image_only` image-only samples (texts are prompts),
/// then `n_text_only` text-only samples (no image). `pixels` holds the first two groups.
#[derive(Clone, Debug)]
pub struct Batch {
    pub pixels: Option<Tensor>,
    pub text: TextBatch,
    /// `[rows, classes]` 0/1 label vectors (soft-label contrastive targets), when known.
    pub labels: Option<Tensor>,
    pub n_paired: usize,
    pub n_image_only: usize,
    pub n_text_only: usize,
    /// Place of this batch's first paired, image-only and text-only row in the global batch
    /// (zeros for a whole batch; a data-parallel rank holds a shard of each section). Random
    /// choices per row are keyed by it, so a row is treated alike whichever rank holds it.
    pub first_rows: [usize; 3],
}

impl Batch {
    /// `(section, index in the global batch)` of row `i`: section 0 paired, 1 image-only,
    /// 2 text-only.
    pub fn global_row(&self, i: usize) -> (usize, usize) {
        if i < self.n_paired {
            (0, self.first_rows[0] + i)
        } else if i < self.n_images() {
            (1, self.first_rows[1] + i - self.n_paired)
        } else {
            (2, self.first_rows[2] + i - self.n_images())
        }
    }
    pub fn n_images(&self) -> usize {
        self.n_paired + self.n_image_only
    }
    pub fn rows(&self) -> usize {
        self.n_paired + self.n_image_only + self.n_text_only
    }
}

/// A synthetic batch for benchmarks and tests: smooth oriented gratings as images (predictable from
/// visible patches, distinct between samples), random token ids with two word pieces per word,
/// two "entities" per text and random label vectors. Deterministic in `seed`.
pub fn synthetic_batch(
    cfg: &medvlp_model::ModelConfig,
    n_paired: usize,
    n_image_only: usize,
    n_text_only: usize,
    text_len: usize,
    seed: u64,
    device: &candle_core::Device,
) -> candle_core::Result<Batch> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v = &cfg.vision_config;
    let (s, c) = (v.image_size, v.num_channels);
    let n_img = n_paired + n_image_only;
    let rows = n_img + n_text_only;
    let mut px = Vec::with_capacity(n_img * c * s * s);
    for _ in 0..n_img {
        let (fx, fy, ph, off) = (
            rng.random_range(0.5..4.0f32),
            rng.random_range(0.5..4.0f32),
            rng.random_range(0.0..std::f32::consts::TAU),
            rng.random_range(-1.0..1.0f32),
        );
        for _ in 0..c {
            for y in 0..s {
                for x in 0..s {
                    px.push(
                        off + ((fx * x as f32 + fy * y as f32) / s as f32 * std::f32::consts::TAU
                            + ph)
                            .sin(),
                    );
                }
            }
        }
    }
    let l = text_len.max(6);
    let vocab = cfg.text_config.vocab_size as u32;
    let (mut ids, mut mask, mut word_ids, mut entities) =
        (vec![0u32; rows * l], vec![0f32; rows * l], vec![], vec![]);
    for r in 0..rows {
        let n = l - (r % 4).min(l - 4);
        let mut w = vec![None; l];
        for t in 0..n {
            ids[r * l + t] = if t == 0 {
                2
            } else if t == n - 1 {
                3
            } else {
                rng.random_range(10.min(vocab - 1)..vocab)
            };
            mask[r * l + t] = 1.0;
            if t > 0 && t < n - 1 {
                w[t] = Some(((t - 1) / 2) as u32);
            }
        }
        word_ids.push(w);
        entities.push(vec![vec![1, 2], vec![5.min(n - 2), 6.min(n - 2)]]);
    }
    let labels: Vec<f32> = (0..rows * 4).map(|_| rng.random_bool(0.3) as u8 as f32).collect();
    Ok(Batch {
        pixels: if n_img > 0 {
            Some(Tensor::from_vec(px, (n_img, c, s, s), device)?)
        } else {
            None
        },
        text: TextBatch {
            ids: Tensor::from_vec(ids, (rows, l), device)?,
            mask: Tensor::from_vec(mask, (rows, l), device)?,
            word_ids,
            entities,
            mask_id: 4,
        },
        labels: Some(Tensor::from_vec(labels, (rows, 4), device)?),
        n_paired,
        n_image_only,
        n_text_only,
        first_rows: [0; 3],
    })
}
