//! Full fine-tuning of a pre-trained image encoder with a linear classification head
//! (label-efficient evaluation): the encoder and the head train together with AdamW (the encoder
//! at a lower learning rate), multi-label with a sigmoid cross-entropy or multi-class with softmax
//! cross-entropy; the epoch with the best validation score is the one evaluated.

use crate::optim::{AdamW, AdamWConfig, Schedule};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use medvlp_data::image::preprocess::PreprocessConfig;
use medvlp_data::loader::{Item, Loader, LoaderConfig};
use medvlp_model::model_dir;
use medvlp_model::vision::VisionEncoder;
use medvlp_model::ParamStore;
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct FinetuneConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Learning rate of the head; the encoder uses `lr * encoder_lr_ratio`.
    pub lr: f64,
    pub encoder_lr_ratio: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Multi-class (softmax over `classes`, one positive per study) instead of multi-label.
    pub multiclass: bool,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 32,
            lr: 1e-3,
            encoder_lr_ratio: 0.1,
            weight_decay: 0.01,
            seed: 0,
            multiclass: false,
        }
    }
}

/// Scores of the test items (probabilities per class) at the best validation epoch.
pub struct FinetuneResult {
    pub test_scores: Vec<Vec<f64>>,
    pub best_epoch: usize,
    /// Validation score per epoch (macro AUROC, or accuracy for multi-class).
    pub val_history: Vec<f64>,
    pub steps: usize,
}

/// Items carry their targets in `labels` (class name -> 1 for positive).
fn targets(items: &[Item], classes: &[String], multiclass: bool) -> Vec<Vec<f32>> {
    items
        .iter()
        .map(|it| {
            let row: Vec<f32> =
                classes.iter().map(|c| (it.labels.get(c) == Some(&1)) as u8 as f32).collect();
            if multiclass && row.iter().all(|&v| v == 0.0) {
                // No positive: counts as the last class (e.g. "No Finding" when listed last).
                let mut r = vec![0.0; classes.len()];
                r[classes.len() - 1] = 1.0;
                r
            } else {
                row
            }
        })
        .collect()
}

/// Numerically stable mean sigmoid cross-entropy: `max(x,0) - x*y + log(1 + exp(-|x|))`.
pub fn bce_with_logits(logits: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let pos = logits.relu()?;
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (pos - (logits * y)?)?.add(&soft)?.mean_all()
}

/// Mean softmax cross-entropy with one-hot targets.
pub fn softmax_cross_entropy(logits: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    (logp * y)?.sum(D::Minus1)?.neg()?.mean_all()
}

struct Classifier {
    encoder: VisionEncoder,
    head: candle_nn::Linear,
}

impl Classifier {
    fn logits(&self, px: &Tensor) -> Result<Tensor> {
        let h = self.encoder.forward(px)?;
        // the pooling the encoder was pre-trained with (mean-pooled models have an untrained [CLS])
        Ok(self.head.forward(&self.encoder.pool(&h)?)?)
    }
}

fn predict(
    c: &Classifier,
    items: &[Item],
    pp: &PreprocessConfig,
    batch: usize,
    multiclass: bool,
    dev: &Device,
) -> Result<Vec<Vec<f64>>> {
    let cfg = LoaderConfig {
        batch_size: batch,
        shuffle: false,
        train: false,
        max_bad_fraction: 1.0,
        ..Default::default()
    };
    let loader = Loader::new(items.to_vec(), pp.clone(), cfg)?;
    let mut out = vec![vec![]; items.len()];
    for b in loader.epoch(0, 0) {
        let b = b?;
        if b.is_empty() {
            continue;
        }
        let [ch, h, w] = b.sample_shape;
        let px = Tensor::from_vec(b.images, (b.indices.len(), ch, h, w), dev)?;
        let logits = c.logits(&px)?.detach();
        let p = if multiclass {
            medvlp_model::nn::softmax_last_dim(&logits)?
        } else {
            candle_nn::ops::sigmoid(&logits)?
        };
        for (i, row) in b.indices.iter().zip(p.to_dtype(DType::F64)?.to_vec2::<f64>()?) {
            out[*i] = row;
        }
    }
    if let Some(i) = out.iter().position(|r| r.is_empty()) {
        bail!("fine-tuning: image of {} could not be loaded", items[i].id);
    }
    Ok(out)
}

/// Fine-tunes the image encoder of the medvlp model directory `model` on `train`, selects the
/// epoch on `val` with `score(val_scores)`, and returns the test scores of that epoch.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    model: &Path,
    train: Vec<Item>,
    val: Vec<Item>,
    test: Vec<Item>,
    classes: &[String],
    cfg: &FinetuneConfig,
    score: &dyn Fn(&[Vec<f64>]) -> Option<f64>,
    dev: &Device,
) -> Result<FinetuneResult> {
    if train.is_empty() || val.is_empty() || test.is_empty() || classes.is_empty() {
        bail!("fine-tuning needs training, validation and test studies and at least one class");
    }
    let mc = model_dir::load_config(model)?;
    let store = ParamStore::new(cfg.seed, DType::F32, dev);
    store.preload_safetensors(&model.join("model.safetensors"), |n| {
        n.starts_with("vision_model.").then(|| n.to_string())
    })?;
    let vb = store.var_builder();
    let encoder = VisionEncoder::new(&mc.vision_config, vb.pp("vision_model"))?;
    let head = candle_nn::linear(mc.vision_config.hidden_size, classes.len(), vb.pp("classifier"))?;
    let report = store.load_report();
    if report.initialised.iter().any(|n| !n.starts_with("classifier.")) {
        tracing::warn!("fine-tuning: {report}");
    }
    store.drop_unused();
    let clf = Classifier { encoder, head };
    let pp = mc.preprocess.clone();
    let y = targets(&train, classes, cfg.multiclass);
    let by_id: HashMap<String, usize> =
        train.iter().enumerate().map(|(i, it)| (it.id.clone(), i)).collect();
    let lcfg = LoaderConfig {
        batch_size: cfg.batch_size.max(1),
        seed: cfg.seed,
        shuffle: true,
        train: true,
        max_bad_fraction: 0.05,
        ..Default::default()
    };
    let loader = Loader::new(train.clone(), pp.clone(), lcfg)?;
    let bpe = loader.batches_per_epoch();
    let total = (bpe * cfg.epochs.max(1)) as u64;
    let schedule =
        Schedule { warmup_steps: (total / 10).max(1), total_steps: total, min_lr_ratio: 0.01 };
    let mut lr_mult = HashMap::new();
    lr_mult.insert("vision_model".to_string(), cfg.encoder_lr_ratio);
    let mut opt = AdamW::new(
        store.vars(),
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            lr_multipliers: lr_mult,
            ..Default::default()
        },
    )?;
    let mut best: Option<(f64, usize, Vec<Vec<f64>>)> = None;
    let mut history = vec![];
    let mut step = 0u64;
    for epoch in 0..cfg.epochs.max(1) {
        for b in loader.epoch(epoch as u64, 0) {
            let b = b?;
            if b.is_empty() {
                continue;
            }
            let [ch, h, w] = b.sample_shape;
            let n = b.indices.len();
            let px = Tensor::from_vec(b.images, (n, ch, h, w), dev)?;
            let yb: Vec<f32> = b.ids.iter().flat_map(|id| y[by_id[id]].clone()).collect();
            let yb = Tensor::from_vec(yb, (n, classes.len()), dev)?;
            let logits = clf.logits(&px)?;
            let loss = if cfg.multiclass {
                softmax_cross_entropy(&logits, &yb)?
            } else {
                bce_with_logits(&logits, &yb)?
            };
            let grads = opt.collect_grads(&loss.backward()?)?;
            opt.step(&grads, schedule.lr(cfg.lr, step), 1.0)?;
            step += 1;
        }
        let vs = predict(&clf, &val, &pp, cfg.batch_size * 2, cfg.multiclass, dev)?;
        let s = score(&vs).unwrap_or(f64::NEG_INFINITY);
        history.push(s);
        tracing::info!("fine-tuning epoch {}: validation {s:.4}", epoch + 1);
        if best.as_ref().is_none_or(|(b, _, _)| s > *b) {
            let ts = predict(&clf, &test, &pp, cfg.batch_size * 2, cfg.multiclass, dev)?;
            best = Some((s, epoch + 1, ts));
        }
    }
    let (_, best_epoch, test_scores) = best.context("no epoch ran")?;
    Ok(FinetuneResult { test_scores, best_epoch, val_history: history, steps: step as usize })
}

#[cfg(test)]
mod tests {
    use super::*;
    use medvlp_model::gradcheck;

    #[test]
    fn losses_match_their_definitions_and_have_gradients() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.5f64, -2.0, 3.0], [0.0, 1.0, -1.0]], &dev).unwrap();
        let y = Tensor::new(&[[1.0f64, 0.0, 1.0], [0.0, 1.0, 0.0]], &dev).unwrap();
        let l = bce_with_logits(&x, &y).unwrap().to_scalar::<f64>().unwrap();
        let xs = [[0.5f64, -2.0, 3.0], [0.0, 1.0, -1.0]];
        let ys = [[1.0f64, 0.0, 1.0], [0.0, 1.0, 0.0]];
        let mut want = 0.0;
        for i in 0..2 {
            for j in 0..3 {
                let p = 1.0 / (1.0 + (-xs[i][j]).exp());
                want -= ys[i][j] * p.ln() + (1.0 - ys[i][j]) * (1.0 - p).ln();
            }
        }
        assert!((l - want / 6.0).abs() < 1e-12, "{l} vs {}", want / 6.0);
        let ce = softmax_cross_entropy(&x, &y.narrow(1, 0, 3).unwrap())
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(ce.is_finite());
        for f in [
            bce_with_logits as fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
            softmax_cross_entropy,
        ] {
            let v = candle_core::Var::from_tensor(&x).unwrap();
            let r = gradcheck::check(
                &[("x".into(), v.clone())],
                || f(v.as_tensor(), &y),
                6,
                1e-5,
                1e-6,
            )
            .unwrap();
            assert!(
                r.mismatches.is_empty() && r.checked == 6,
                "finite-difference gradient error {}",
                r.max_rel_err
            );
        }
    }
}
