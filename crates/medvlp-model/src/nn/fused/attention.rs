//! Multi-head scaled dot-product attention as one op: scores, additive key mask, softmax and the
//! weighted sum of values, parallel over batch x heads. Queries, keys and values stay in their
//! `[b, l, heads * head_dim]` projection layout (a head is a strided column block), so no head
//! split/merge transposes are materialised. The probabilities are kept for the backward pass
//! (and handed to callers that ask for them, detached).
//!
//! Backward per (sample, head): `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - rowsum(dP * P))`,
//! `dQ = s dS K`, `dK = s dS^T Q` with `s = 1 / sqrt(head_dim)`.
//!
//! The per-head products of fp32 attention on f32 data run on [`super::attention512`]'s kernels
//! where the fp32 AVX-512 tiles are in use ([`super::f32_path`]); elsewhere, and for bf16
//! products and f64, on [`gemm`].

use super::{
    gemm, tensor_from, use_gemm_kernel, with_slices, Float, Mat, Products, SendPtr, SliceKernel,
};
use crate::nn::precision::matmul;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    hd: usize,
}

impl Dims {
    fn d(&self) -> usize {
        self.heads * self.hd
    }
}

struct AttentionOp {
    dims: Dims,
    scale: f64,
    /// bf16 or fp32 products of QK^T and PV (and their gradients), fixed when recorded.
    products: Products,
    /// Additive key mask `[b, lk]` (0 or a large negative value), same dtype as q.
    mask: Option<Tensor>,
    /// `[b, heads, lq, lk]` probabilities written by the forward pass.
    probs: Arc<Mutex<Option<Tensor>>>,
}

fn softmax_rows<T: Float>(s: &mut [T], lk: usize, mask: Option<&[T]>) {
    for row in s.chunks_mut(lk) {
        if let Some(m) = mask {
            for (v, &a) in row.iter_mut().zip(m) {
                *v += a;
            }
        }
        let mx = T::max_of(row);
        let sum = T::exp_inplace_sum(row, mx);
        let inv = T::one() / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Whether the per-head products take [`super::attention512`]'s kernels: f32 data, fp32
/// products, and the fp32 AVX-512 tiles in use on this CPU.
fn head_kernels<T: 'static>(products: Products) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
            && products == Products::Fp32
            && matches!(super::f32_path(), super::F32Path::Avx512 | super::F32Path::Avx512Inference)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = products;
        false
    }
}

/// One per-head product `dst[m, n] = alpha * lhs[m, k] * rhs[k, n]` (overwriting `dst`), on
/// [`super::attention512`] when `fast` (see [`head_kernels`]; a `rhs` stored transposed is copied
/// into `scratch` first), else on [`gemm`] with one thread.
///
/// # Safety
/// As [`gemm`]; `fast` only when [`head_kernels`] said so for `T`.
#[allow(clippy::too_many_arguments)]
unsafe fn head_product<T: Float>(
    fast: bool,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    lhs: Mat<T>,
    rhs: Mat<T>,
    alpha: T,
    products: Products,
    scratch: &mut Vec<T>,
) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        use super::attention512::{product, transpose, Lhs};
        let f = |p: *const T| p as *const f32;
        let a = Lhs { ptr: f(lhs.ptr), rs: lhs.rs as usize, ps: lhs.cs as usize };
        let alpha = alpha.to_f64() as f32;
        let dst = dst as *mut f32;
        if rhs.cs == 1 {
            product(m, n, k, a, f(rhs.ptr), rhs.rs as usize, dst, dst_rs, alpha);
            return;
        }
        if rhs.rs == 1 {
            // rhs(p, j) at ptr[p + j * cs]: stored as `[n, k]` rows (K or V of one head).
            if scratch.len() < k * n {
                scratch.resize(k * n, T::zero());
            }
            let kt = scratch.as_mut_ptr() as *mut f32;
            transpose(f(rhs.ptr), rhs.cs as usize, n, k, kt, n);
            product(m, n, k, a, kt, n, dst, dst_rs, alpha);
            return;
        }
    }
    let _ = (fast, &scratch);
    gemm(m, n, k, dst, dst_rs, false, lhs, rhs, alpha, false, products);
}

/// Returns (output `[b, lq, d]`, probabilities `[b, heads, lq, lk]`).
fn forward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    mask: Option<&[T]>,
    dm: Dims,
    scale: f64,
    products: Products,
) -> (Vec<T>, Vec<T>) {
    let Dims { b: _, lq, lk, heads, hd } = dm;
    let d = dm.d();
    // No zero fills: every (sample, head) overwrites its probabilities and its column block of
    // `y` for all rows (the lengths are set after the loop).
    let mut probs: Vec<T> = Vec::with_capacity(dm.b * heads * lq * lk);
    let mut y: Vec<T> = Vec::with_capacity(dm.b * lq * d);
    let (pp, yp) = (SendPtr(probs.as_mut_ptr()), SendPtr(y.as_mut_ptr()));
    let s = T::from_f64(scale);
    let fast = head_kernels::<T>(products);
    (0..dm.b * heads).into_par_iter().for_each_init(Vec::new, |scratch, bh| {
        // Capture the whole wrappers (Send), not their raw-pointer fields (edition 2021 closures).
        #[allow(clippy::redundant_locals)]
        let (pp, yp) = (pp, yp);
        // SAFETY: each task owns probabilities bh * lq * lk.. of the buffer's capacity.
        let p = unsafe { std::slice::from_raw_parts_mut(pp.0.add(bh * lq * lk), lq * lk) };
        let (bi, hi) = (bh / heads, bh % heads);
        let qo = bi * lq * d + hi * hd;
        let ko = bi * lk * d + hi * hd;
        unsafe {
            // S = s * Q K^T
            head_product(
                fast,
                lq,
                lk,
                hd,
                p.as_mut_ptr(),
                lk,
                Mat::rows(q.as_ptr().add(qo), d),
                Mat::rows(k.as_ptr().add(ko), d).t(),
                s,
                products,
                scratch,
            );
        }
        softmax_rows(p, lk, mask.map(|m| &m[bi * lk..(bi + 1) * lk]));
        unsafe {
            // O = P V, written into this head's column block of y
            head_product(
                fast,
                lq,
                hd,
                lk,
                yp.0.add(qo),
                d,
                Mat::rows(p.as_ptr(), lk),
                Mat::rows(v.as_ptr().add(ko), d),
                T::one(),
                products,
                scratch,
            );
        }
    });
    // SAFETY: the loop wrote every element of both.
    unsafe {
        probs.set_len(dm.b * heads * lq * lk);
        y.set_len(dm.b * lq * d);
    }
    (y, probs)
}

struct Backward {
    dims: Dims,
    scale: f64,
    products: Products,
}

impl SliceKernel for Backward {
    type Out = [Tensor; 3];
    /// data: q, k, v, probs, g
    fn run<T: Float>(self, data: &[&[T]]) -> Result<Self::Out> {
        let (q, k, v, probs, g) = (data[0], data[1], data[2], data[3], data[4]);
        let dm = self.dims;
        let Dims { b, lq, lk, heads, hd } = dm;
        let d = dm.d();
        // No zero fills: every (sample, head) overwrites its column blocks of all three for all
        // rows (the lengths are set after the loop).
        let mut dq: Vec<T> = Vec::with_capacity(b * lq * d);
        let mut dk: Vec<T> = Vec::with_capacity(b * lk * d);
        let mut dv: Vec<T> = Vec::with_capacity(b * lk * d);
        let (dqp, dkp, dvp) =
            (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
        let s = T::from_f64(self.scale);
        let fast = head_kernels::<T>(self.products);
        let pr = self.products;
        (0..b * heads).into_par_iter().for_each_init(
            || (vec![T::zero(); lq * lk], Vec::new()),
            |(ds, scratch), bh| {
                let (bi, hi) = (bh / heads, bh % heads);
                let qo = bi * lq * d + hi * hd;
                let ko = bi * lk * d + hi * hd;
                let p = &probs[bh * lq * lk..(bh + 1) * lq * lk];
                #[allow(clippy::redundant_locals)]
                let (dqp, dkp, dvp) = (dqp, dkp, dvp);
                unsafe {
                    let go = Mat::rows(g.as_ptr().add(qo), d);
                    let pm = Mat::rows(p.as_ptr(), lk);
                    let vt = Mat::rows(v.as_ptr().add(ko), d).t();
                    // dV = P^T dO;  dP = dO V^T
                    head_product(
                        fast,
                        lk,
                        hd,
                        lq,
                        dvp.0.add(ko),
                        d,
                        pm.t(),
                        go,
                        T::one(),
                        pr,
                        scratch,
                    );
                    head_product(
                        fast,
                        lq,
                        lk,
                        hd,
                        ds.as_mut_ptr(),
                        lk,
                        go,
                        vt,
                        T::one(),
                        pr,
                        scratch,
                    );
                }
                // dS = P * (dP - rowsum(dP * P))
                for (dr, pr) in ds.chunks_mut(lk).zip(p.chunks(lk)) {
                    let mut dot = T::zero();
                    for (&a, &b) in dr.iter().zip(pr) {
                        dot += a * b;
                    }
                    for (a, &b) in dr.iter_mut().zip(pr) {
                        *a = b * (*a - dot);
                    }
                }
                unsafe {
                    let dsm = Mat::rows(ds.as_ptr(), lk);
                    let (km, qm) =
                        (Mat::rows(k.as_ptr().add(ko), d), Mat::rows(q.as_ptr().add(qo), d));
                    // dQ = s dS K;  dK = s dS^T Q
                    head_product(fast, lq, hd, lk, dqp.0.add(qo), d, dsm, km, s, pr, scratch);
                    head_product(fast, lk, hd, lq, dkp.0.add(ko), d, dsm.t(), qm, s, pr, scratch);
                }
            },
        );
        // SAFETY: the loop wrote every element of all three.
        unsafe {
            dq.set_len(b * lq * d);
            dk.set_len(b * lk * d);
            dv.set_len(b * lk * d);
        }
        Ok([
            tensor_from(dq, &[b, lq, d])?,
            tensor_from(dk, &[b, lk, d])?,
            tensor_from(dv, &[b, lk, d])?,
        ])
    }
}

struct Forward<'a> {
    op: &'a AttentionOp,
}

impl SliceKernel for Forward<'_> {
    type Out = CpuStorage;
    /// data: q, k, v[, mask]
    fn run<T: Float>(self, data: &[&[T]]) -> Result<CpuStorage> {
        let dm = self.op.dims;
        let (y, p) = forward(
            data[0],
            data[1],
            data[2],
            data.get(3).copied(),
            dm,
            self.op.scale,
            self.op.products,
        );
        *self.op.probs.lock().unwrap() = Some(tensor_from(p, &[dm.b, dm.heads, dm.lq, dm.lk])?);
        Ok(T::to_cpu_storage_owned(y))
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "medvlp-attention"
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
        // Wrap the raw storages as slices, plus the mask tensor's data.
        let name = self.name();
        let dm = self.dims;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                let (q, k, v) = (
                    super::contiguous_slice(q, l1, name)?,
                    super::contiguous_slice(k, l2, name)?,
                    super::contiguous_slice(v, l3, name)?,
                );
                self.run_fwd(q, k, v)?
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                let (q, k, v) = (
                    super::contiguous_slice(q, l1, name)?,
                    super::contiguous_slice(k, l2, name)?,
                    super::contiguous_slice(v, l3, name)?,
                );
                self.run_fwd(q, k, v)?
            }
            _ => candle_core::bail!("{name}: unsupported or mixed dtypes"),
        };
        Ok((out, Shape::from((dm.b, dm.lq, dm.d()))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(p) = self.probs.lock().unwrap().clone() else {
            candle_core::bail!("medvlp-attention: backward before forward")
        };
        let [dq, dk, dv] = with_slices(
            &[q, k, v, &p, g],
            "medvlp-attention-bwd",
            Backward { dims: self.dims, scale: self.scale, products: self.products },
        )?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl AttentionOp {
    fn run_fwd<T: Float>(&self, q: &[T], k: &[T], v: &[T]) -> Result<CpuStorage> {
        let fw = Forward { op: self };
        match &self.mask {
            None => fw.run(&[q, k, v]),
            Some(m) => {
                // The mask is a separate tensor; read it as the same float type.
                let mv: Vec<T> = m
                    .to_dtype(candle_core::DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?
                    .into_iter()
                    .map(T::from_f64)
                    .collect();
                fw.run(&[q, k, v, &mv])
            }
        }
    }
}

/// Attention of queries `q` `[b, lq, heads * hd]` over keys/values `k`, `v` `[b, lk, heads * hd]`
/// with an optional additive key mask `[b, lk]` (or `[b, 1, 1, lk]`). Returns the attended values
/// `[b, lq, heads * hd]` (heads concatenated) and the probabilities `[b, heads, lq, lk]` (detached).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (b, lq, d) = q.dims3()?;
    let (bk, lk, dk) = k.dims3()?;
    if bk != b || dk != d || v.dims() != k.dims() || !d.is_multiple_of(heads) {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} with {heads} heads do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let mask = match mask {
        Some(m) if m.elem_count() == b * lk => Some(m.reshape((b, lk))?),
        Some(m) => return attention_composed(q, k, v, heads, Some(m)),
        None => None,
    };
    let same = |t: &Tensor| t.dtype() == q.dtype() && t.device().same_device(q.device());
    if !(use_gemm_kernel(q) && same(k) && same(v)) {
        return attention_composed(
            q,
            k,
            v,
            heads,
            mask.map(|m| m.reshape((b, 1, 1, lk))).transpose()?.as_ref(),
        );
    }
    let hd = d / heads;
    let probs = Arc::new(Mutex::new(None));
    let op = AttentionOp {
        dims: Dims { b, lq, lk, heads, hd },
        scale: 1.0 / (hd as f64).sqrt(),
        products: Products::of(q),
        mask,
        probs: probs.clone(),
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let y = if q.track_op() || k.track_op() || v.track_op() {
        q.apply_op3(&k, &v, op)?
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)?
    };
    // A clone: the op keeps its handle for the backward pass.
    let p = probs
        .lock()
        .unwrap()
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("medvlp-attention: no probabilities".into()))?;
    Ok((y, p))
}

/// Composed reference: head split, `softmax(q k^T / sqrt(hd) + mask) v`, head merge.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (b, lq, d) = q.dims3()?;
    let hd = d / heads;
    let split = |x: &Tensor| -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        x.reshape((b, l, heads, hd))?.transpose(1, 2)?.contiguous()
    };
    let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
    let mut scores = (matmul(&qh, &kh.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(m)?;
    }
    let probs = crate::nn::ops::softmax_last_dim(&scores)?;
    let y = matmul(&probs, &vh)?.transpose(1, 2)?.reshape((b, lq, d))?;
    Ok((y, probs))
}
