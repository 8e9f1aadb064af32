//! Mean softmax cross-entropy over class indices as one op: one pass per row computes the
//! log-sum-exp and the loss (the `[n, classes]` log-probabilities are never materialised), and the
//! backward pass writes `g / n * (softmax(x) - onehot(t))` directly from the saved log-sum-exp.
//! Used for MLM over the vocabulary, the contrastive logits and ITM.

use super::{
    contiguous_slice, repeat_rows, tensor_from, use_gemm_kernel, use_kernel, with_slices, zeroed,
    Float, SliceKernel,
};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

struct CrossEntropyOp {
    targets: Arc<Vec<u32>>,
    /// Per-row log-sum-exp from the forward pass.
    lse: Arc<Mutex<Vec<f64>>>,
}

/// `log sum_j exp(r_j)`, shifted by the row maximum.
fn row_lse<T: Float>(r: &[T]) -> f64 {
    let m = T::max_of(r);
    m.to_f64() + T::exp_sum(r, m).to_f64().ln()
}

fn rows_lse<T: Float>(x: &[T], c: usize) -> Vec<f64> {
    x.par_chunks(c).map(row_lse).collect()
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
                let x = contiguous_slice($v, l, self.name())?;
                let lse = rows_lse(x, c);
                let loss: f64 = lse
                    .iter()
                    .zip(self.targets.iter())
                    .enumerate()
                    .map(|(i, (&z, &t))| z - x[i * c + t as usize] as f64)
                    .sum::<f64>()
                    / n.max(1) as f64;
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
        let k = Backward {
            targets: self.targets.clone(),
            lse,
            scale: gv / x.dim(0)?.max(1) as f64,
            shape: x.dims().to_vec(),
        };
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
        let mut dx = zeroed(x.len());
        dx.par_chunks_mut(c).zip(x.par_chunks(c)).enumerate().for_each(|(i, (o, r))| {
            let z = T::from_f64(self.lse[i]);
            let s = T::from_f64(self.scale);
            o.copy_from_slice(r);
            T::exp_scale_inplace(o, z, s);
            let t = self.targets[i] as usize;
            o[t] -= s;
        });
        tensor_from(dx, &self.shape)
    }
}

/// Mean cross-entropy of `logits` `[n, classes]` against class indices `targets` `[n]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if targets.dims() != [n] {
        candle_core::bail!(
            "cross_entropy: targets {:?} do not match logits {:?}",
            targets.dims(),
            logits.dims()
        );
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
    let picked =
        lsm.gather(&targets.to_dtype(candle_core::DType::U32)?.unsqueeze(1)?, D::Minus1)?;
    picked.neg()?.mean_all()
}

/// Output projection and cross-entropy in one op (MLM over the vocabulary): the `[n, vocab]`
/// logits are computed into one buffer that the forward pass turns in place into
/// `(softmax - onehot) / n`, the only thing the backward pass needs. The logits never become a
/// graph node, so no separate logits gradient (and its accumulation buffers) is allocated.
struct LinearCrossEntropyOp {
    targets: Arc<Vec<u32>>,
    products: super::Products,
    /// `(softmax(logits) - onehot) / n`, kept when gradients are tracked.
    saved: Option<Arc<Mutex<Option<Tensor>>>>,
}

struct LceForward<'a> {
    op: &'a LinearCrossEntropyOp,
}

impl SliceKernel for LceForward<'_> {
    type Out = f64;
    /// data: x [n, d], w [v, d], b [v]
    fn run<T: Float>(self, data: &[&[T]]) -> Result<f64> {
        let (x, w, b) = (data[0], data[1], data[2]);
        let (v, n) = (b.len(), self.op.targets.len());
        let d = x.len().checked_div(n).unwrap_or(0);
        // The product accumulates onto bias rows (no zero fill first).
        let mut z = repeat_rows(b, n);
        unsafe {
            super::gemm(
                n,
                v,
                d,
                z.as_mut_ptr(),
                v,
                true,
                super::Mat::rows(x.as_ptr(), d),
                super::Mat::rows(w.as_ptr(), d).t(),
                T::one(),
                true,
                self.op.products,
            )
        };
        let inv_n = 1.0 / n.max(1) as f64;
        let targets = &self.op.targets;
        let keep = self.op.saved.is_some();
        let loss: f64 = z
            .par_chunks_mut(v)
            .enumerate()
            .map(|(i, r)| {
                let lse = row_lse(r);
                let t = targets[i] as usize;
                let li = lse - r[t].to_f64();
                if keep {
                    let (zl, sc) = (T::from_f64(lse), T::from_f64(inv_n));
                    T::exp_scale_inplace(r, zl, sc);
                    r[t] -= sc;
                }
                li
            })
            .sum::<f64>()
            * inv_n;
        if let Some(s) = &self.op.saved {
            *s.lock().unwrap() = Some(tensor_from(z, &[n, v])?);
        }
        Ok(loss)
    }
}

impl CustomOp3 for LinearCrossEntropyOp {
    fn name(&self) -> &'static str {
        "medvlp-linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                let data = [
                    contiguous_slice(x, l1, name)?,
                    contiguous_slice(w, l2, name)?,
                    contiguous_slice(b, l3, name)?,
                ];
                CpuStorage::F32(vec![LceForward { op: self }.run(&data)? as f32])
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                let data = [
                    contiguous_slice(x, l1, name)?,
                    contiguous_slice(w, l2, name)?,
                    contiguous_slice(b, l3, name)?,
                ];
                CpuStorage::F64(vec![LceForward { op: self }.run(&data)?])
            }
            _ => candle_core::bail!("{name}: unsupported or mixed dtypes"),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.as_ref().and_then(|s| s.lock().unwrap().clone());
        let Some(dl) = saved else {
            candle_core::bail!("medvlp-linear-cross-entropy: backward without saved probabilities")
        };
        // The saved buffer is the logits' gradient for an incoming gradient of 1: a dense layer's
        // backward with the scalar incoming gradient as scale.
        let (n, d) = x.dims2()?;
        let k = super::linear::Backward {
            rows: n,
            din: d,
            dout: w.dim(0)?,
            act: crate::nn::Activation::Identity,
            need: [x.track_op(), w.track_op(), b.track_op()],
            scale: g.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            products: self.products,
        };
        let [dx, dw, db] = with_slices(&[x, w, &dl], "medvlp-linear-cross-entropy-bwd", k)?;
        Ok((dx, dw, db))
    }
}

/// Mean cross-entropy of `x W^T + b` (`x` `[n, d]`, `W` `[vocab, d]`, `b` `[vocab]`) against
/// class indices `targets` `[n]`, without materialising the logits as a graph node.
pub fn linear_cross_entropy(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    let (v, dw) = w.dims2()?;
    if dw != d || b.dims() != [v] || targets.dims() != [n] {
        candle_core::bail!(
            "linear_cross_entropy: x {:?}, w {:?}, b {:?}, targets {:?} do not fit",
            x.dims(),
            w.dims(),
            b.dims(),
            targets.dims()
        );
    }
    let same = |t: &Tensor| t.dtype() == x.dtype() && t.device().same_device(x.device());
    if !(use_gemm_kernel(x) && same(w) && same(b)) {
        return cross_entropy(
            &crate::nn::fused::linear::linear(x, w, Some(b), crate::nn::Activation::Identity)?,
            targets,
        );
    }
    let t = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    if let Some(&bad) = t.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("linear_cross_entropy: target {bad} out of range for {v} classes");
    }
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    let track = x.track_op() || w.track_op() || b.track_op();
    let op = LinearCrossEntropyOp {
        targets: Arc::new(t),
        products: super::Products::of(&x),
        saved: track.then(|| Arc::new(Mutex::new(None))),
    };
    if track {
        x.apply_op3(&w, &b, op)
    } else {
        x.apply_op3_no_bwd(&w, &b, &op)
    }
}
