//! A BERT text tower as the imported families use it: Hugging Face `BertModel` weights under a
//! prefix, pooled by the class token, the attention-masked mean or BERT's tanh pooler, then a head.

use crate::bert::BertModel;
use crate::config::TextConfig;
use crate::interop::layers::Head;
use crate::interop::state_dict::StateDict;
use crate::params::ParamStore;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextPool {
    /// `last_hidden_state[:, 0]`.
    Cls,
    /// Attention-masked mean of the last hidden state.
    Mean,
    /// `pooler_output`: `tanh(pooler.dense(h[:, 0]))`.
    Pooler,
}

/// Loading options for checkpoints that deviate from Hugging Face's BERT.
#[derive(Clone, Debug, Default)]
pub struct BertOptions {
    /// Patterns (see [`super::state_dict::matches`]) of tensors under the prefix that are not BERT.
    pub ignore: Vec<String>,
    /// Every token at position 0: MGCA passes `token_type_ids` (zeros) where BLIP's `med.py`
    /// BertModel expects `position_ids`, so its text embeddings were trained and are computed so.
    pub zero_positions: bool,
}

pub struct BertTower {
    pub model: BertModel,
    pub pool: TextPool,
    pub head: Head,
}

/// BERT's shape from its tensors; `heads` and `eps` are not in the tensors (from a config when
/// the checkpoint ships one).
pub fn infer_config(
    sd: &StateDict,
    prefix: &str,
    heads: Option<usize>,
    eps: f64,
) -> Result<TextConfig> {
    let emb = |n: &str| sd.shape(&format!("{prefix}embeddings.{n}.weight"));
    let Some([vocab, hidden]) =
        emb("word_embeddings").map(|s| <[usize; 2]>::try_from(s).unwrap_or([0, 0]))
    else {
        bail!("{}: missing tensor {prefix}embeddings.word_embeddings.weight", sd.path.display());
    };
    let max_pos = emb("position_embeddings").map(|s| s[0]).unwrap_or(512);
    let type_vocab = emb("token_type_embeddings").map(|s| s[0]).unwrap_or(1);
    let layers = sd.count_layers(&format!("{prefix}encoder.layer."));
    let inter = sd
        .shape(&format!("{prefix}encoder.layer.0.intermediate.dense.weight"))
        .map(|s| s[0])
        .unwrap_or(4 * hidden);
    // BERT checkpoints use 64-wide heads (base: 768 / 12).
    let heads = heads.unwrap_or((hidden / 64).max(1));
    let c = TextConfig {
        pooling: crate::config::Pooling::Cls,
        vocab_size: vocab,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: inter,
        max_position_embeddings: max_pos,
        type_vocab_size: type_vocab,
        layer_norm_eps: eps,
        pad_token_id: 0,
        hidden_act: "gelu".into(),
        position_embedding_type: "absolute".into(),
        max_length: max_pos,
    };
    c.validate()?;
    Ok(c)
}

impl BertTower {
    /// Reads `{prefix}embeddings.*`, `{prefix}encoder.*` and, for [`TextPool::Pooler`],
    /// `{prefix}pooler.*`; marks them used in `sd`.
    pub fn load(
        sd: &StateDict,
        prefix: &str,
        config: &TextConfig,
        pool: TextPool,
        head: Head,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with(sd, prefix, config, pool, head, &BertOptions::default(), device)
    }

    /// As [`BertTower::load`], skipping tensors under `opts.ignore` and with `opts.zero_positions`.
    pub fn load_with(
        sd: &StateDict,
        prefix: &str,
        config: &TextConfig,
        pool: TextPool,
        head: Head,
        opts: &BertOptions,
        device: &Device,
    ) -> Result<Self> {
        let store = ParamStore::new(0, DType::F32, device).frozen();
        let mut tensors = HashMap::new();
        let keys: Vec<String> = sd.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        for k in keys {
            let n = &k[prefix.len()..];
            if opts.ignore.iter().any(|p| super::state_dict::matches(p, &k)) {
                continue;
            }
            if n.ends_with("position_ids") {
                sd.skip(&k);
                continue;
            }
            let wanted = n.starts_with("embeddings.")
                || n.starts_with("encoder.")
                || (pool == TextPool::Pooler && n.starts_with("pooler."));
            if wanted {
                tensors.insert(n.to_string(), sd.take_any(&k, &[])?);
            }
        }
        let h = config.hidden_size;
        // BERT variants without token types (BLIP's med.py, MGCA): adding a zero type vector is
        // the same computation.
        tensors.entry("embeddings.token_type_embeddings.weight".into()).or_insert(Tensor::zeros(
            (config.type_vocab_size, h),
            DType::F32,
            device,
        )?);
        if opts.zero_positions {
            if let Some(pos) = tensors.get_mut("embeddings.position_embeddings.weight") {
                let n = pos.dim(0)?;
                *pos = pos.narrow(0, 0, 1)?.broadcast_as((n, h))?.contiguous()?;
            }
        }
        store.preload(tensors, |n| Some(n.to_string()))?;
        let model = BertModel::new(config, pool == TextPool::Pooler, store.var_builder())
            .map_err(|e| anyhow::anyhow!("{}: BERT under '{prefix}': {e}", sd.path.display()))?;
        let report = store.load_report();
        if let Some(missing) = report.initialised.first() {
            bail!(
                "{}: missing tensor {prefix}{missing} of the BERT text encoder",
                sd.path.display()
            );
        }
        if let Some(extra) = report.unused.first() {
            bail!(
                "{}: {prefix}{extra} is not part of a {}-layer BERT",
                sd.path.display(),
                config.num_hidden_layers
            );
        }
        Ok(Self { model, pool, head })
    }

    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let ids = crate::bert::ids_u32(input_ids)?;
        let mask = attention_mask.to_dtype(DType::F32)?;
        // Class-token pooling reads only [CLS]: the last layer computes that token alone.
        let pooled = match self.pool {
            TextPool::Cls => self.model.forward_cls(&ids, None, Some(&mask))?,
            TextPool::Mean => {
                let h = self.model.forward(&ids, None, Some(&mask))?;
                let m = mask.unsqueeze(2)?;
                let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
                h.broadcast_mul(&m)?.sum(1)?.broadcast_div(&count)?
            }
            TextPool::Pooler => {
                let cls = self.model.forward_cls(&ids, None, Some(&mask))?;
                self.model.pool_cls(&cls)?.expect("pooler loaded")
            }
        };
        Ok(self.head.forward(&pooled)?)
    }
}
