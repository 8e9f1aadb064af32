//! CLIP's text transformer: token + position embeddings, pre-LN blocks under a causal mask,
//! `ln_final`, the end-of-text token's state, `text_projection`.

use crate::interop::layers::{gather_rows, Block, Head};
use crate::nn::LayerNorm;
use anyhow::Result;
use candle_core::{DType, Module, Tensor};

#[derive(Clone, Debug)]
pub struct CausalTextTower {
    /// `[vocab, width]`.
    pub token_embedding: Tensor,
    /// `[context_length, width]`.
    pub positional_embedding: Tensor,
    pub blocks: Vec<Block>,
    pub ln_final: LayerNorm,
    pub head: Head,
}

impl CausalTextTower {
    pub fn context_length(&self) -> usize {
        self.positional_embedding.dims()[0]
    }

    /// `input_ids` `[b, l]`, `attention_mask` `[b, l]` (1 up to and including end-of-text).
    /// Pools at the last attended position: the end-of-text token, which is where OpenAI's
    /// `argmax(ids)` and Hugging Face's first `eos_token_id` both point for tokenizer output.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        if l > self.context_length() {
            anyhow::bail!(
                "{l} tokens exceed the text encoder's context of {}",
                self.context_length()
            );
        }
        let d = self.token_embedding.dim(1)?;
        let ids = crate::bert::ids_u32(input_ids)?.flatten_all()?;
        let x = self.token_embedding.index_select(&ids, 0)?.reshape((b, l, d))?;
        let mut x = x.broadcast_add(&self.positional_embedding.narrow(0, 0, l)?)?;
        let causal: Vec<f32> = (0..l * l).map(|i| if i % l > i / l { -1e9 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(causal, (1, 1, l, l), x.device())?
            .to_dtype(x.dtype())?
            .broadcast_as((b, 1, l, l))?
            .contiguous()?;
        for blk in &self.blocks {
            x = blk.forward(&x, Some(&mask))?;
        }
        let x = self.ln_final.forward(&x)?;
        let last =
            (attention_mask.to_dtype(DType::F32)?.sum(1)? - 1.0)?.clamp(0.0, (l - 1) as f64)?;
        let pooled = gather_rows(&x, &last)?;
        Ok(self.head.forward(&pooled)?)
    }
}
