//! Mean softmax cross-entropy over class indices as one op: one pass per row computes the
//! log-sum-exp and the loss (the `[n, classes]` log-probabilities are never materialised), and the
//! backward pass writes `g / n * (softmax(x) - onehot(t))` directly from the saved log-sum-exp.
//! Used for MLM over the vocabulary, the contrastive logits and ITM.

use super::{tensor_from, use_kernel, with_slices, Float, SliceKernel};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

struct CrossEntropyOp {
    targets: Arc<Vec<u32>>,
    /// Per-row log-sum-exp from the forward pass.
    lse: Arc<Mutex<Vec<f64>>>,
}

fn rows_lse<T: Float>(x: &[T], c: usize) -> Vec<f64> {
    x.par_chunks(c)
        .map(|r| {
            let mut m = T::neg_infinity();
            for &v in r {
                if v > m {
                    m = v;
                }
            }
            let mut s = T::zero();
            for &v in r {
                s += (v - m).exp();
            }
            m.to_f64() + s.to_f64().ln()
        })
        .collect()
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "medvlp-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c) = l.shape().dims2()?;
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= c) {
            candle_core::bail!("cross_entropy: target {t} out of range for {c} classes");
        }
        macro_rules! go {
            ($v:expr, $t:ty) => {{
                let x = super::contiguous_slice($v, l, self.name())?;
                let lse = rows_lse(x, c);
                let loss: f64 = lse.iter().zip(self.targets.iter()).enumerate().map(|(i, (&z, &t))| z - x[i * c + t as usize] as f64).sum::<f64>() / n.max(1) as f64;
                *self.lse.lock().unwrap() = lse;
                <$t as candle_core::WithDType>::to_cpu_storage_owned(vec![loss as $t])
            }};
        }
        let out = match s {
            CpuStorage::F32(v) => go!(v, f32),
            CpuStorage::F64(v) => go!(v, f64),
            _ => candle_core::bail!("cross_entropy: unsupported dtype (f32 and f64 only)"),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let gv = g.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let lse = self.lse.lock().unwrap().clone();
        let k = Backward { targets: self.targets.clone(), lse, scale: gv / x.dim(0)?.max(1) as f64, shape: x.dims().to_vec() };
        Ok(Some(with_slices(&[x], "medvlp-cross-entropy-bwd", k)?))
    }
}

struct Backward {
    targets: Arc<Vec<u32>>,
    lse: Vec<f64>,
    scale: f64,
    shape: Vec<usize>,
}

impl SliceKernel for Backward {
    type Out = Tensor;
    fn run<T: Float>(self, data: &[&[T]]) -> Result<Tensor> {
        let x = data[0];
        let c = self.shape[1];
        let mut dx = vec![T::zero(); x.len()];
        dx.par_chunks_mut(c).zip(x.par_chunks(c)).enumerate().for_each(|(i, (o, r))| {
            let z = T::from_f64(self.lse[i]);
            let s = T::from_f64(self.scale);
            for (o, &v) in o.iter_mut().zip(r) {
                *o = (v - z).exp() * s;
            }
            let t = self.targets[i] as usize;
            o[t] = o[t] - s;
        });
        tensor_from(dx, &self.shape)
    }
}

/// Mean cross-entropy of `logits` `[n, classes]` against class indices `targets` `[n]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if targets.dims() != [n] {
        candle_core::bail!("cross_entropy: targets {:?} do not match logits {:?}", targets.dims(), logits.dims());
    }
    if !use_kernel(logits) {
        return cross_entropy_composed(logits, targets);
    }
    let t = targets.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
    let op = CrossEntropyOp { targets: Arc::new(t), lse: Arc::new(Mutex::new(vec![])) };
    let x = logits.contiguous()?;
    if x.track_op() {
        x.apply_op1(op)
    } else {
        x.apply_op1_no_bwd(&op)
    }
}

/// Composed reference: log-softmax, gather, mean.
pub fn cross_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lsm = crate::nn::ops::log_softmax_last_dim(logits)?;
    let picked = lsm.gather(&targets.to_dtype(candle_core::DType::U32)?.unsqueeze(1)?, D::Minus1)?;
    picked.neg()?.mean_all()
}
