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
}

impl Batch {
    pub fn n_images(&self) -> usize {
        self.n_paired + self.n_image_only
    }
    pub fn rows(&self) -> usize {
        self.n_paired + self.n_image_only + self.n_text_only
    }
}
