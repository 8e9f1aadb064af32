//! Dense layer `act(x W^T + b)` as one op: the bias (and GELU) are applied in the GEMM's epilogue
//! instead of as separate broadcast passes, the transposed weight is a stride, and the backward
//! pass computes `dx = g' W`, `dW = g'^T x`, `db = colsum(g')` (with `g' = g * gelu'(h)`) only for
//! the inputs that need a gradient.

use super::{
    gemm, gemm_packed, gemm_then, repeat_rows, tensor_from, use_gemm_kernel, with_slices, zeroed,
    Epilogue, Float, Mat, PackedRhs, Products, SendPtr, SliceKernel,
};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, TensorId};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// Exact (erf) GELU, Hugging Face's `gelu`.
    Gelu,
}

/// Elements below which elementwise epilogues stay on the calling thread.
const PAR_MIN: usize = 1 << 15;

/// A dense layer's weight packed for the GEMM kernel on its first product, for inference: a frozen
/// weight (not a `Var`, no gradient) never changes, so its packed `W^T` is reused by every later
/// call instead of being packed again (a few percent of encoding). The weight's id and the
/// products (fp32 or bf16) are kept beside it, so a layer whose weight is replaced, or that runs
/// in the other precision, packs again.
#[derive(Clone, Default)]
pub struct PackCache(Arc<Mutex<Option<Packed>>>);

/// A packed weight and the id of the weight it was packed from.
type Packed = (TensorId, Arc<PackedRhs>);

impl std::fmt::Debug for PackCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let packed = self.0.lock().map(|c| c.as_ref().map(|(_, p)| p.dims())).unwrap_or(None);
        f.debug_tuple("PackCache").field(&packed).finish()
    }
}

impl PackCache {
    /// The packed `W^T` of the weight `id` (`w` its `[dout, din]` values) for `products`, packing
    /// it if needed; `None` where this CPU's kernel for them has no packed form.
    fn get(
        &self,
        id: TensorId,
        products: Products,
        w: &[f32],
        dout: usize,
        din: usize,
    ) -> Option<Arc<PackedRhs>> {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cid, p)) = c.as_ref() {
            if *cid == id && p.products() == products {
                return Some(p.clone());
            }
        }
        let wt = Mat::rows(w.as_ptr(), din).t();
        // SAFETY: `w` holds dout x din values.
        let p = Arc::new(unsafe { PackedRhs::new(wt, din, dout, products) }?);
        *c = Some((id, p.clone()));
        Some(p)
    }
}

struct LinearOp {
    act: Activation,
    /// bf16 or fp32 products, fixed when the op is recorded (backward runs outside autocast).
    products: Products,
    /// Pre-activation `h = x W^T + b`, kept for GELU's backward when gradients are tracked.
    saved: Option<Arc<Mutex<Option<Tensor>>>>,
    /// Inference: the layer's cache of its packed weight and the weight's id.
    packed: Option<(PackCache, TensorId)>,
}

fn dims(lx: &Layout, lw: &Layout) -> Result<(usize, usize, usize)> {
    let (rows, din) = lx.shape().dims2()?;
    let (dout, din_w) = lw.shape().dims2()?;
    if din != din_w {
        candle_core::bail!("linear: input width {din} does not match weight {:?}", lw.dims());
    }
    Ok((rows, din, dout))
}

/// `h = x W^T (+ b)`, then the activation; returns (output, pre-activation if kept).
#[allow(clippy::too_many_arguments)]
fn forward<T: Float>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    rows: usize,
    din: usize,
    dout: usize,
    act: Activation,
    keep_h: bool,
    products: Products,
    packed: Option<&PackedRhs>,
) -> (Vec<T>, Option<Vec<T>>) {
    let len = rows * dout;
    // With bf16 products the bias joins GELU in the epilogue (rows still in cache: no separate
    // pass over `h`); the fp32 product instead accumulates onto rows prefilled with the bias.
    // Either way each element is `product + bias`, rounded once.
    let bias_late = products == Products::Bf16 && b.is_some();
    // No zero fill: the bias rows, or the product (which then does not read `h`), write every
    // element before `set_len`.
    let mut h: Vec<T> = match (b, bias_late) {
        (Some(b), false) => repeat_rows(b, rows),
        _ => Vec::with_capacity(len),
    };
    // GELU runs in the epilogue too: in place when `h` is not kept (inference), else into `y`
    // (`h` is GELU's backward input), which the epilogue writes whole (`set_len` below).
    let gelu = act == Activation::Gelu;
    let mut y: Vec<T> = Vec::with_capacity(if gelu && keep_h { len } else { 0 });
    let (hp, yp) = (SendPtr(h.as_mut_ptr()), SendPtr(y.as_mut_ptr()));
    let epilogue = |r0: usize, nr: usize| {
        // Capture the whole wrappers (Sync), not their raw-pointer fields (edition 2021).
        let (hp, yp) = (&hp, &yp);
        // SAFETY: rows r0..r0 + nr are written by the product and handed to one call only.
        let h = unsafe { std::slice::from_raw_parts_mut(hp.0.add(r0 * dout), nr * dout) };
        if let (Some(b), true) = (b, bias_late) {
            for row in h.chunks_exact_mut(dout) {
                for (v, &c) in row.iter_mut().zip(b) {
                    *v += c;
                }
            }
        }
        if gelu && keep_h {
            let y = unsafe { std::slice::from_raw_parts_mut(yp.0.add(r0 * dout), nr * dout) };
            T::gelu_into(h, y);
        } else if gelu {
            T::gelu_inplace(h);
        }
    };
    let epilogue = (gelu || bias_late).then_some(&epilogue as Epilogue);
    unsafe {
        match packed {
            // (`packed` is only made for f32 weights; the cast is the identity.)
            Some(p) => gemm_packed(
                rows,
                hp.0 as *mut f32,
                dout,
                b.is_some() && !bias_late,
                Mat::rows(x.as_ptr() as *const f32, din),
                p,
                1.0,
                true,
                epilogue,
            ),
            _ => gemm_then(
                rows,
                dout,
                din,
                hp.0,
                dout,
                b.is_some() && !bias_late,
                Mat::rows(x.as_ptr(), din),
                Mat::rows(w.as_ptr(), din).t(),
                T::one(),
                true,
                products,
                epilogue,
            ),
        }
        h.set_len(len);
        if gelu && keep_h {
            y.set_len(len);
        }
    }
    match (act, keep_h) {
        (Activation::Identity, _) => (h, None),
        (Activation::Gelu, false) => (h, None),
        (Activation::Gelu, true) => (y, Some(h)),
    }
}

/// Column sums of a `[rows, cols]` matrix, parallel over column blocks.
pub(super) fn col_sums<T: Float>(g: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); cols];
    let block = 64;
    out.par_chunks_mut(block).enumerate().for_each(|(bi, o)| {
        let c0 = bi * block;
        for r in 0..rows {
            let row = &g[r * cols + c0..r * cols + c0 + o.len()];
            for (a, &v) in o.iter_mut().zip(row) {
                *a += v;
            }
        }
    });
    out
}

/// A `[m, n]` buffer that `write` fills with a product over `k` which does not read its
/// destination (`accumulate` false), so it is not zeroed first (zero fills were 1.5% of the
/// reference training step). `k == 0` gets zeros: no product is run.
fn product<T: Float>(m: usize, n: usize, k: usize, write: impl FnOnce(*mut T)) -> Vec<T> {
    if k == 0 {
        return vec![T::zero(); m * n];
    }
    let mut v = Vec::with_capacity(m * n);
    write(v.as_mut_ptr());
    // SAFETY: the product wrote all m * n elements.
    unsafe { v.set_len(m * n) };
    v
}

/// Gradients of `act(x W^T + b)` from the output gradient `g` times `scale`.
pub(super) struct Backward {
    pub rows: usize,
    pub din: usize,
    pub dout: usize,
    pub act: Activation,
    /// Which of x, W, b need a gradient.
    pub need: [bool; 3],
    pub scale: f64,
    pub products: Products,
}

impl SliceKernel for Backward {
    type Out = [Option<Tensor>; 3];
    /// data: x, w, g[, h]
    fn run<T: Float>(self, data: &[&[T]]) -> Result<Self::Out> {
        let (x, w, g) = (data[0], data[1], data[2]);
        let (rows, din, dout) = (self.rows, self.din, self.dout);
        let s = T::from_f64(self.scale);
        let gh: Vec<T>;
        let g = match self.act {
            Activation::Identity => g,
            Activation::Gelu => {
                let h = data[3];
                let mut out = zeroed(g.len());
                if g.len() >= PAR_MIN {
                    out.par_chunks_mut(PAR_MIN / 4)
                        .zip(g.par_chunks(PAR_MIN / 4).zip(h.par_chunks(PAR_MIN / 4)))
                        .for_each(|(o, (g, h))| T::gelu_backward_into(g, h, o));
                } else {
                    T::gelu_backward_into(g, h, &mut out);
                }
                gh = out;
                &gh
            }
        };
        let dx = if self.need[0] {
            let dx = product(rows, din, dout, |dx| unsafe {
                gemm(
                    rows,
                    din,
                    dout,
                    dx,
                    din,
                    false,
                    Mat::rows(g.as_ptr(), dout),
                    Mat::rows(w.as_ptr(), din),
                    s,
                    true,
                    self.products,
                )
            });
            Some(tensor_from(dx, &[rows, din])?)
        } else {
            None
        };
        let dw = if self.need[1] {
            let dw = product(dout, din, rows, |dw| unsafe {
                gemm(
                    dout,
                    din,
                    rows,
                    dw,
                    din,
                    false,
                    Mat::rows(g.as_ptr(), dout).t(),
                    Mat::rows(x.as_ptr(), din),
                    s,
                    true,
                    self.products,
                )
            });
            Some(tensor_from(dw, &[dout, din])?)
        } else {
            None
        };
        let db = if self.need[2] {
            let mut db = col_sums(g, rows, dout);
            if self.scale != 1.0 {
                db.iter_mut().for_each(|v| *v *= s);
            }
            Some(tensor_from(db, &[dout])?)
        } else {
            None
        };
        Ok([dx, dw, db])
    }
}

impl LinearOp {
    fn fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, din, dout) = dims(lx, lw)?;
        let name = "medvlp-linear";
        let keep = self.saved.is_some();
        macro_rules! go {
            ($x:expr, $w:expr, $b:expr, $t:ty, $packed:expr) => {{
                let x = super::contiguous_slice($x, lx, name)?;
                let w = super::contiguous_slice($w, lw, name)?;
                let packed: Option<Arc<PackedRhs>> = $packed(w);
                let (y, h) = forward::<$t>(
                    x,
                    w,
                    $b,
                    rows,
                    din,
                    dout,
                    self.act,
                    keep,
                    self.products,
                    packed.as_deref(),
                );
                if let (Some(h), Some(s)) = (h, &self.saved) {
                    *s.lock().unwrap() = Some(tensor_from(h, &[rows, dout])?);
                }
                <$t as candle_core::WithDType>::to_cpu_storage_owned(y)
            }};
        }
        let packed32 = |w: &[f32]| match &self.packed {
            Some((cache, id)) => cache.get(*id, self.products, w, dout, din),
            None => None,
        };
        let none64 = |_: &[f64]| None;
        let out = match (x, w, b) {
            (CpuStorage::F32(x), CpuStorage::F32(w), None) => go!(x, w, None, f32, packed32),
            (CpuStorage::F64(x), CpuStorage::F64(w), None) => go!(x, w, None, f64, none64),
            (CpuStorage::F32(x), CpuStorage::F32(w), Some((CpuStorage::F32(b), lb))) => {
                go!(x, w, Some(super::contiguous_slice(b, lb, name)?), f32, packed32)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), Some((CpuStorage::F64(b), lb))) => {
                go!(x, w, Some(super::contiguous_slice(b, lb, name)?), f64, none64)
            }
            _ => candle_core::bail!("{name}: unsupported or mixed dtypes"),
        };
        Ok((out, Shape::from((rows, dout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        g: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let (rows, din) = x.dims2()?;
        let dout = w.dim(0)?;
        let need = [x.track_op(), w.track_op(), b.is_some_and(|b| b.track_op())];
        let k =
            Backward { rows, din, dout, act: self.act, need, scale: 1.0, products: self.products };
        match self.act {
            Activation::Identity => with_slices(&[x, w, g], "medvlp-linear-bwd", k),
            Activation::Gelu => {
                let saved = self.saved.as_ref().and_then(|s| s.lock().unwrap().clone());
                let Some(h) = saved else {
                    candle_core::bail!("medvlp-linear: backward without a saved pre-activation")
                };
                with_slices(&[x, w, g, &h], "medvlp-linear-bwd", k)
            }
        }
    }
}

struct WithBias(LinearOp);
struct NoBias(LinearOp);

impl CustomOp3 for WithBias {
    fn name(&self) -> &'static str {
        "medvlp-linear"
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
        self.0.fwd(s1, l1, s2, l2, Some((s3, l3)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = self.0.bwd(x, w, Some(b), g)?;
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for NoBias {
    fn name(&self) -> &'static str {
        "medvlp-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.fwd(s1, l1, s2, l2, None)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = self.0.bwd(x, w, None, g)?;
        Ok((dx, dw))
    }
}

/// `act(x W^T + b)` for `x` `[.., in]`, `W` `[out, in]` (PyTorch layout), `b` `[out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    linear_with_cache(x, w, b, act, None)
}

/// [`linear`] that keeps `W` packed in `cache` for inference (see [`PackCache`]); with gradients
/// or a `Var` weight it is [`linear`].
pub fn linear_with_cache(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Activation,
    cache: Option<&PackCache>,
) -> Result<Tensor> {
    let d = x.dims();
    let din = *d.last().unwrap_or(&0);
    let rows = x.elem_count() / din.max(1);
    let dout = w.dim(0)?;
    let mut out_dims = d.to_vec();
    *out_dims.last_mut().unwrap() = dout;
    let same = |t: &Tensor| t.dtype() == x.dtype() && t.device().same_device(x.device());
    if !(use_gemm_kernel(x) && same(w) && b.is_none_or(same)) {
        return linear_composed(x, w, b, act);
    }
    let x2 = x.reshape((rows, din))?.contiguous()?;
    let track = x2.track_op() || w.track_op() || b.is_some_and(|b| b.track_op());
    let w = w.contiguous()?;
    let saved = (track && act == Activation::Gelu).then(|| Arc::new(Mutex::new(None)));
    let products = Products::of(x);
    let packed = match cache {
        Some(c) if !track && !w.is_variable() => Some((c.clone(), w.id())),
        _ => None,
    };
    let op = LinearOp { act, saved, products, packed };
    let y = match (b, track) {
        (Some(b), true) => x2.apply_op3(&w, &b.contiguous()?, WithBias(op))?,
        (Some(b), false) => x2.apply_op3_no_bwd(&w, &b.contiguous()?, &WithBias(op))?,
        (None, true) => x2.apply_op2(&w, NoBias(op))?,
        (None, false) => x2.apply_op2_no_bwd(&w, &NoBias(op))?,
    };
    y.reshape(out_dims)
}

/// Composed reference: matmul, broadcast bias, GELU.
pub fn linear_composed(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let d = x.dims();
    let din = *d.last().unwrap_or(&0);
    let rows = x.elem_count() / din.max(1);
    let mut y = crate::nn::precision::matmul(&x.reshape((rows, din))?, &w.t()?)?;
    if let Some(b) = b {
        y = y.broadcast_add(b)?;
    }
    if act == Activation::Gelu {
        y = crate::nn::ops::gelu_erf_composed(&y)?;
    }
    let mut out_dims = d.to_vec();
    *out_dims.last_mut().unwrap() = w.dim(0)?;
    y.reshape(out_dims)
}
