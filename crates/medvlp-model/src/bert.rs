//! BERT text encoder with Hugging Face `BertModel` parameter names (post-LN, absolute positions,
//! token types, attention mask, exact GELU). Loads any HF BERT checkpoint.

use crate::config::TextConfig;
use crate::nn::{additive_mask, Activation, Attention, Embedding, LayerNorm, Linear, TokenPacking};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
}

impl BertEmbeddings {
    pub fn new(c: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            word_embeddings: Embedding::new(c.vocab_size, c.hidden_size, vb.pp("word_embeddings"))?,
            position_embeddings: Embedding::new(
                c.max_position_embeddings,
                c.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: Embedding::new(
                c.type_vocab_size,
                c.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: LayerNorm::new(c.hidden_size, c.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    pub fn forward(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>) -> Result<Tensor> {
        let (_, l) = input_ids.dims2()?;
        let max = self.position_embeddings.weight.dim(0)?;
        if l > max {
            candle_core::bail!(
                "sequence of {l} tokens is longer than the {max} positions of the text encoder"
            );
        }
        let words = self.word_embeddings.forward(input_ids)?;
        let pos = self.position_embeddings.weight.narrow(0, 0, l)?;
        let types = match token_type_ids {
            Some(t) => self.token_type_embeddings.forward(t)?,
            None => self
                .token_type_embeddings
                .weight
                .narrow(0, 0, 1)?
                .reshape((1, 1, ()))?
                .broadcast_as(words.shape())?,
        };
        let x = (words.broadcast_add(&pos)? + types)?;
        self.layer_norm.forward(&x)
    }
}

/// One post-LN BERT layer.
#[derive(Clone, Debug)]
pub struct BertLayer {
    pub attention: Attention,
    pub attention_layer_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub output_layer_norm: LayerNorm,
}

impl BertLayer {
    pub fn new(c: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let att = vb.pp("attention");
        Ok(Self {
            attention: Attention::new(
                c.hidden_size,
                c.hidden_size,
                c.num_attention_heads,
                att.pp("self"),
                att.pp("output").pp("dense"),
            )?,
            attention_layer_norm: LayerNorm::new(
                c.hidden_size,
                c.layer_norm_eps,
                att.pp("output").pp("LayerNorm"),
            )?,
            intermediate: Linear::new(
                c.hidden_size,
                c.intermediate_size,
                true,
                vb.pp("intermediate").pp("dense"),
            )?,
            output: Linear::new(
                c.intermediate_size,
                c.hidden_size,
                true,
                vb.pp("output").pp("dense"),
            )?,
            output_layer_norm: LayerNorm::new(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("output").pp("LayerNorm"),
            )?,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward_probs(x, mask, false)?.0)
    }

    pub fn forward_probs(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        return_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (a, p) = self.attention.forward(x, None, mask, return_probs)?;
        Ok((self.feed_forward(&a, x)?, p))
    }

    /// The same on packed tokens `x` `[tokens, hidden]` (see [`TokenPacking`]).
    pub fn forward_packed(
        &self,
        x: &Tensor,
        packing: &TokenPacking,
        mask: Option<&Tensor>,
        return_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (a, p) = self.attention.forward_packed(x, packing, mask, return_probs)?;
        Ok((self.feed_forward(&a, x)?, p))
    }

    /// The layer's output at the first token of every sequence, `[b, 1, hidden]`, from that
    /// token's input `first` (`[b, 1, hidden]`) and every token's input `x` (`[b, l, hidden]`, or
    /// packed `[tokens, hidden]` with `packing`): the query, output projection and MLP run on the
    /// first tokens alone.
    pub fn forward_first(
        &self,
        first: &Tensor,
        x: &Tensor,
        packing: Option<&TokenPacking>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let a = match packing {
            Some(pk) => self.attention.forward_packed_context(first, x, pk, mask)?,
            None => self.attention.forward(first, Some(x), mask, false)?.0,
        };
        self.feed_forward(&a, first)
    }

    /// Residual + LayerNorm after attention output `a`, then the MLP block (position-wise).
    fn feed_forward(&self, a: &Tensor, x: &Tensor) -> Result<Tensor> {
        let x = self.attention_layer_norm.forward(&(a + x)?)?;
        let h = self.output.forward(&self.intermediate.forward_act(&x, Activation::Gelu)?)?;
        self.output_layer_norm.forward(&(h + x)?)
    }
}

#[derive(Clone, Debug)]
pub struct BertModel {
    pub config: TextConfig,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    /// `pooler.dense` (tanh of the CLS state), present when the checkpoint has it.
    pub pooler: Option<Linear>,
}

impl BertModel {
    /// `with_pooler`: create (or load) `pooler.dense`. medvlp's own models do not use it.
    pub fn new(c: &TextConfig, with_pooler: bool, vb: VarBuilder) -> Result<Self> {
        let embeddings = BertEmbeddings::new(c, vb.pp("embeddings"))?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| BertLayer::new(c, vb.pp("encoder").pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let pooler = if with_pooler {
            Some(Linear::new(c.hidden_size, c.hidden_size, true, vb.pp("pooler").pp("dense"))?)
        } else {
            None
        };
        Ok(Self { config: c.clone(), embeddings, layers, pooler })
    }

    /// `input_ids`, `token_type_ids`: `[b, l]` u32; `attention_mask`: `[b, l]` (1 = token, 0 = padding).
    /// Returns the last hidden state `[b, l, hidden]`, zeros at padding positions (the layers run
    /// on the real tokens only).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        Ok(self.forward_with_cls_attention(input_ids, token_type_ids, attention_mask, false)?.0)
    }

    /// The embedded tokens (packed to the real ones when `attention_mask` has padding), the
    /// additive attention mask and the packing.
    fn embed_packed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>, Option<TokenPacking>)> {
        let x = self.embeddings.forward(input_ids, token_type_ids)?;
        let mask = attention_mask.map(|m| additive_mask(m, x.dtype())).transpose()?;
        let packing = attention_mask.map(TokenPacking::new).transpose()?.flatten();
        let x = match &packing {
            Some(p) => p.pack(&x)?,
            None => x,
        };
        Ok((x, mask, packing))
    }

    /// Also returns, when asked, the last layer's attention of [CLS] to every token averaged over
    /// heads, `[b, l]` (MGCA weights words by it in the local alignment loss).
    pub fn forward_with_cls_attention(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        cls_attention: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (mut x, mask, packing) =
            self.embed_packed(input_ids, token_type_ids, attention_mask)?;
        let mut cls = None;
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            let last = cls_attention && i + 1 == n;
            let (h, p) = match &packing {
                Some(pk) => layer.forward_packed(&x, pk, mask.as_ref(), last)?,
                None => layer.forward_probs(&x, mask.as_ref(), last)?,
            };
            x = h;
            if let Some(p) = p {
                cls = Some(p.narrow(2, 0, 1)?.squeeze(2)?.mean(1)?.detach());
            }
        }
        let x = match &packing {
            Some(p) => p.unpack(&x)?,
            None => x,
        };
        Ok((x, cls))
    }

    /// The last hidden state of the [CLS] (first) token, `[b, hidden]`, equal to
    /// `forward(..)[:, 0]`: what CLS and pooler pooling read. The last layer computes only that
    /// token's output (its keys and values still see every token).
    pub fn forward_cls(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some((last, layers)) = self.layers.split_last() else {
            return self
                .forward(input_ids, token_type_ids, attention_mask)?
                .narrow(1, 0, 1)?
                .squeeze(1);
        };
        let (mut x, mask, packing) =
            self.embed_packed(input_ids, token_type_ids, attention_mask)?;
        for layer in layers {
            x = match &packing {
                Some(pk) => layer.forward_packed(&x, pk, mask.as_ref(), false)?.0,
                None => layer.forward(&x, mask.as_ref())?,
            };
        }
        let Some(pk) = &packing else {
            return last.forward_first(&x.narrow(1, 0, 1)?, &x, None, mask.as_ref())?.squeeze(1);
        };
        let (b, l) = (pk.batch, pk.len);
        let rows = pk.unpack_index.reshape((b, l))?.narrow(1, 0, 1)?.flatten_all()?;
        let first = x.index_select(&rows, 0)?.unsqueeze(1)?;
        let y = last.forward_first(&first, &x, Some(pk), mask.as_ref())?.squeeze(1)?;
        // `forward` gives zeros where the first position is padding.
        let real = attention_mask.expect("packing comes from the mask").narrow(1, 0, 1)?;
        y.broadcast_mul(&real.to_dtype(y.dtype())?)
    }

    /// `tanh(pooler.dense(cls))` for [CLS] states `cls` (`[b, hidden]`), `None` without a pooler.
    pub fn pool_cls(&self, cls: &Tensor) -> Result<Option<Tensor>> {
        match &self.pooler {
            Some(p) => Ok(Some(p.forward(cls)?.tanh()?)),
            None => Ok(None),
        }
    }

    /// `tanh(pooler.dense(h[:, 0]))`, as Hugging Face's `pooler_output`.
    pub fn pool(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        self.pool_cls(&hidden.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

/// Attention-masked mean of `hidden` over tokens, L2-normalised (sentence-transformers convention).
pub fn masked_mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let m = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    crate::heads::l2_normalize(&sum.broadcast_div(&count)?)
}

/// Convert any integer id tensor to the u32 that index_select wants.
pub fn ids_u32(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::U32 {
        Ok(t.clone())
    } else {
        t.to_dtype(DType::U32)
    }
}
