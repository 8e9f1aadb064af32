//! Local (word <-> patch) alignment with token-level InfoNCE (MGCA), in both orders:
//! map-then-aggregate (MCR's MbA: project every sub-word token and visible patch first, then
//! aggregate sub-words into words) and aggregate-then-map (MGCA/GLoRIA: sum sub-words in encoder
//! space, then project).
//!
//! Per sample: words attend over patches (`c_w = sum_p softmax_p(e_w . e_p / tau) e_p`) and the
//! words are contrasted with their visual contexts against the other words' contexts of the same
//! report (weighted by the [CLS] attention each word receives); symmetrically, patches attend over
//! words. The loss is the mean of both directions over the batch.

use candle_core::{Module, Result, Tensor};
use medvlp_model::heads::{l2_normalize, ProjectionHead};
use medvlp_model::nn::softmax_last_dim;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    MapThenAggregate,
    AggregateThenMap,
}

/// One sample's tokens for local alignment.
pub struct LocalText<'a> {
    /// Word index per token (`None` for special, padding, and tokens to drop, e.g. masked ones).
    pub word_ids: &'a [Option<u32>],
    /// Per-token [CLS] attention (weights of the words), or uniform when `None`.
    pub cls_attention: Option<&'a [f32]>,
}

/// `[words, tokens]` aggregation matrix (sum, or mean when `mean`) and the words' weights.
fn aggregation(
    word_ids: &[Option<u32>],
    cls: Option<&[f32]>,
    mean: bool,
) -> (Vec<f32>, usize, Vec<f32>) {
    let mut ids: Vec<u32> = word_ids.iter().flatten().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let (w, l) = (ids.len(), word_ids.len());
    let mut a = vec![0f32; w * l];
    let mut weights = vec![0f32; w];
    for (t, wid) in word_ids.iter().enumerate() {
        if let Some(wid) = wid {
            let r = ids.binary_search(wid).unwrap();
            a[r * l + t] = 1.0;
            weights[r] += cls.map(|c| c[t]).unwrap_or(1.0);
        }
    }
    if mean {
        for r in 0..w {
            let n: f32 = a[r * l..(r + 1) * l].iter().sum();
            a[r * l..(r + 1) * l].iter_mut().for_each(|x| *x /= n.max(1.0));
        }
    }
    let s: f32 = weights.iter().sum();
    weights.iter_mut().for_each(|x| *x /= s.max(1e-12));
    (a, w, weights)
}

/// Token-level InfoNCE of `queries` `[n, d]` against their attention-pooled contexts from `keys`
/// `[m, d]` (both L2-normalised), weighted per query.
fn pooled_infonce(queries: &Tensor, keys: &Tensor, weights: &Tensor, tau: f64) -> Result<Tensor> {
    let attn = softmax_last_dim(&(queries.matmul(&keys.t()?)? / tau)?)?;
    let ctx = l2_normalize(&attn.matmul(keys)?)?;
    let logits = (queries.matmul(&ctx.t()?)? / tau)?;
    let n = logits.dim(0)?;
    let eye = Tensor::eye(n, logits.dtype(), logits.device())?;
    // weighted CE with identity targets: sum_i w_i * CE_i, for both query->context and context->query
    let ce_q = (soft_ce_rows(&logits, &eye)? * weights)?.sum_all()?;
    let ce_c = (soft_ce_rows(&logits.t()?, &eye)? * weights)?.sum_all()?;
    (ce_q + ce_c)? * 0.5
}

fn soft_ce_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lsm = medvlp_model::nn::log_softmax_last_dim(logits)?;
    (lsm * targets)?.sum(1)?.neg()
}

/// Local alignment loss over a batch. `text`: `[b, l, text_width]` token features; `patches`:
/// `[b, n, vision_width]` patch features (visible patches only, no CLS); `heads`: (visual, text)
/// mapping heads.
pub fn local_alignment_loss(
    text: &Tensor,
    samples: &[LocalText],
    patches: &Tensor,
    heads: &(ProjectionHead, ProjectionHead),
    aggregation_order: Aggregation,
    tau: f64,
) -> Result<Tensor> {
    let (b, l, _) = text.dims3()?;
    let dev = text.device();
    let dtype = text.dtype();
    let (vis_head, txt_head) = heads;
    let patches_e = l2_normalize(&vis_head.forward(patches)?)?;
    let text_mapped = if aggregation_order == Aggregation::MapThenAggregate {
        Some(txt_head.forward(text)?)
    } else {
        None
    };
    let mut losses = vec![];
    for (i, s) in samples.iter().enumerate().take(b) {
        let mean = aggregation_order == Aggregation::MapThenAggregate;
        let (a, w, weights) = aggregation(s.word_ids, s.cls_attention, mean);
        if w < 2 {
            continue; // nothing to contrast
        }
        let a = Tensor::from_vec(a, (w, l), dev)?.to_dtype(dtype)?;
        let words = match &text_mapped {
            Some(tm) => a.matmul(&tm.get(i)?)?,
            None => txt_head.forward(&a.matmul(&text.get(i)?)?)?,
        };
        let words = l2_normalize(&words)?;
        let pts = patches_e.get(i)?;
        let wts = Tensor::from_vec(weights, w, dev)?.to_dtype(dtype)?;
        let l_word = pooled_infonce(&words, &pts, &wts, tau)?;
        let np = pts.dim(0)?;
        let pw = Tensor::full(1.0 / np as f64, np, dev)?.to_dtype(dtype)?;
        let l_patch = pooled_infonce(&pts, &words, &pw, tau)?;
        losses.push(((l_word + l_patch)? * 0.5)?);
    }
    if losses.is_empty() {
        return Tensor::zeros((), dtype, dev);
    }
    let n = losses.len() as f64;
    Tensor::stack(&losses, 0)?.sum_all()? / n
}
