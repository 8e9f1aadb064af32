//! Dense layer `act(x W^T + b)` as one op: the bias (and GELU) are applied in the GEMM's epilogue
//! instead of as separate broadcast passes, the transposed weight is a stride, and the backward
//! pass computes `dx = g' W`, `dW = g'^T x`, `db = colsum(g')` (with `g' = g * gelu'(h)`) only for
//! the inputs that need a gradient.

use super::{
    gemm, gemm_packed, gemm_then, repeat_rows, tensor_from, use_gemm_kernel, with_slices, Epilogue,
    Float, Mat, PackedRhs, Products, SendPtr, SliceKernel,
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
    // With bf16 products and with a packed weight (the tiles, whose epilogue runs per row task
    // while its rows are still in cache) the bias joins GELU in the epilogue; the `gemm` crate's
    // fp32 product instead accumulates onto rows prefilled with the bias (its epilogue runs after
    // the whole product). Either way each element is `product + bias`, rounded once. The
    // prefill cost inference a pass over `h` and the tiles a read of it: encoding the reference
    // model 3-5% faster without.
    let bias_late = b.is_some() && (products == Products::Bf16 || packed.is_some());
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
        match (b, bias_late) {
            (Some(b), true) if gelu && !keep_h => return T::bias_gelu_inplace(h, b),
            (Some(b), true) => T::add_rows(h, b),
            _ => {}
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

/// The weight `w` (`[dout, din]`) packed for the tiles for one training-step call, where the op
/// packs it per call: fp32 GELU layers ([`LinearOp`]'s forward explains why); `None` elsewhere
/// or where this CPU's fp32 path has no packed form.
fn pack_per_call(
    act: Activation,
    products: Products,
    w: &[f32],
    din: usize,
    dout: usize,
) -> Option<Arc<PackedRhs>> {
    if act != Activation::Gelu || products != Products::Fp32 || w.len() < din * dout {
        return None;
    }
    // SAFETY: `w` holds dout x din values (checked above).
    unsafe { PackedRhs::new(Mat::rows(w.as_ptr(), din).t(), din, dout, products) }.map(Arc::new)
}

/// Column sums of a `[rows, cols]` matrix (a bias gradient). Tasks take a block of whole rows
/// (at most [`COL_SUM_WIDTH`] columns of them) and add it into their own partial row, reading
/// memory in order; the partials are then added in block order, so the result does not depend on
/// the number of threads. Column strips of 64 instead (every row's 256 bytes, then the next
/// row's) ran at 10-14 GB/s on a warm 2 MB input, 2-core Xeon.
pub(super) fn col_sums<T: Float>(g: &[T], rows: usize, cols: usize) -> Vec<T> {
    if rows == 0 || cols == 0 {
        return vec![T::zero(); cols];
    }
    let width = cols.min(COL_SUM_WIDTH);
    let col_blocks = cols.div_ceil(width);
    // about 16 tasks, none under COL_SUM_TASK elements unless the matrix is smaller
    let per = rows.div_ceil((16 / col_blocks).max(1)).max(COL_SUM_TASK / width).clamp(1, rows);
    let row_blocks = rows.div_ceil(per);
    // partial[rb][c]: the sum of rows rb * per.. of column c
    let mut partial = vec![T::zero(); row_blocks * cols];
    let tasks: Vec<(usize, &mut [T])> = partial
        .chunks_mut(cols)
        .enumerate()
        .flat_map(|(rb, p)| {
            p.chunks_mut(width).enumerate().map(move |(cb, o)| (rb * col_blocks + cb, o))
        })
        .collect();
    let run = |(t, acc): (usize, &mut [T])| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let c0 = cb * width;
        let w = acc.len();
        let r1 = ((rb + 1) * per).min(rows);
        let row = |r: usize| &g[r * cols + c0..r * cols + c0 + w];
        let mut r = rb * per;
        // four rows per pass over the accumulator
        while r + 4 <= r1 {
            let (a, b, c, d) = (row(r), row(r + 1), row(r + 2), row(r + 3));
            for ((((s, &a), &b), &c), &d) in acc.iter_mut().zip(a).zip(b).zip(c).zip(d) {
                *s += (a + b) + (c + d);
            }
            r += 4;
        }
        for r in r..r1 {
            for (s, &v) in acc.iter_mut().zip(row(r)) {
                *s += v;
            }
        }
    };
    if rows * cols >= 2 * COL_SUM_TASK {
        tasks.into_par_iter().for_each(run);
    } else {
        tasks.into_iter().for_each(run);
    }
    let (first, rest) = partial.split_at_mut(cols);
    for p in rest.chunks(cols) {
        for (s, &v) in first.iter_mut().zip(p) {
            *s += v;
        }
    }
    partial.truncate(cols);
    partial
}

/// Columns per [`col_sums`] task: its partial row stays in L1.
const COL_SUM_WIDTH: usize = 4096;
/// Elements per [`col_sums`] task.
const COL_SUM_TASK: usize = 1 << 15;

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

/// How many ranges of rows (the contraction) [`weight_grad`] splits a weight gradient into: one
/// per thread, each at least [`SPLIT_K_MIN`] rows, while the partial products (`parts x dout x
/// din`) hold at most half as many elements as the two operands (`rows x (din + dout)`). Split
/// products pack disjoint halves of `g` and `x` instead of both threads packing all of one
/// operand, and each thread streams its own k range. `dw_split_speed` (ignored test), 2-core
/// Xeon (family 6, model 207), best of 5, GFLOP/s unsplit -> 2 parts: `2048x256->256` 191-226 ->
/// 254-255, `2048x1024->256` 251 -> 276-279, `2080x128->128` 221-228 -> 254-292, `2080x512->128`
/// 148-194 -> 250-254, `544x256->256` 169-213 -> 219-228; `544x256->1024` 253-261 -> 234-248, which
/// the size rule leaves unsplit. The sums then depend on the thread count (at rounding level).
fn dw_parts(rows: usize, din: usize, dout: usize) -> usize {
    k_parts(dout, din, rows)
}

/// The same for an input gradient (`k` = `dout`), only where `dout` is at least 8 times both
/// other sides: the MLM head's `320x256 <- 30522` (`dx_split_speed`, best of 5, GFLOP/s: 212-232
/// -> 253-289 in 2 parts on a quiet host, 132-196 -> 213-244 on a busy one). Encoder layers
/// (`2048x256 <- 256` and `<- 1024`, `2080x128 <- 512`) ran as fast or 10-15% slower split.
fn dx_parts(rows: usize, din: usize, dout: usize) -> usize {
    if dout >= 8 * rows.max(din) {
        k_parts(rows, din, dout)
    } else {
        1
    }
}

/// Parts of a split-k `[m, n]` product over `k`, see [`dw_parts`].
fn k_parts(m: usize, n: usize, k: usize) -> usize {
    let mut parts = rayon::current_num_threads().min(k / SPLIT_K_MIN).max(1);
    while parts > 1 && 2 * parts * m * n > k * (m + n) {
        parts -= 1;
    }
    parts
}

/// The least k per part of a split product ([`k_parts`]).
const SPLIT_K_MIN: usize = 256;

/// `s g^T x` (`[dout, din]`) from `g` `[rows, dout]` and `x` `[rows, din]`, in `parts` ranges of
/// rows ([`split_k`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grad<T: Float>(
    g: &[T],
    x: &[T],
    rows: usize,
    din: usize,
    dout: usize,
    s: T,
    products: Products,
    parts: usize,
) -> Vec<T> {
    split_k(dout, din, rows, parts, |r0, r1, dst, parallel| unsafe {
        gemm(
            dout,
            din,
            r1 - r0,
            dst,
            din,
            false,
            Mat::rows(g.as_ptr().add(r0 * dout), dout).t(),
            Mat::rows(x.as_ptr().add(r0 * din), din),
            s,
            parallel,
            products,
        )
    })
}

/// `s g W` (`[rows, din]`) from `g` `[rows, dout]` and `W` `[dout, din]`, in `parts` ranges of
/// `dout` ([`split_k`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn input_grad<T: Float>(
    g: &[T],
    w: &[T],
    rows: usize,
    din: usize,
    dout: usize,
    s: T,
    products: Products,
    parts: usize,
) -> Vec<T> {
    split_k(rows, din, dout, parts, |o0, o1, dst, parallel| unsafe {
        gemm(
            rows,
            din,
            o1 - o0,
            dst,
            din,
            false,
            Mat::rows(g.as_ptr().add(o0), dout),
            Mat::rows(w.as_ptr().add(o0 * din), din),
            s,
            parallel,
            products,
        )
    })
}

/// An `[m, n]` product over `k`: `run(k0, k1, dst, parallel)` writes the product over `k0..k1`
/// into `dst` (row stride `n`, not read). With `parts > 1`, one product per range of k into its
/// own buffer (single-threaded, or multi-threaded when the pool has more threads than parts),
/// then the buffers added in order.
fn split_k<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    parts: usize,
    run: impl Fn(usize, usize, *mut T, bool) + Sync,
) -> Vec<T> {
    if parts <= 1 {
        return product(m, n, k, |dst| run(0, k, dst, true));
    }
    let per = k.div_ceil(parts);
    let nested = rayon::current_num_threads() > parts;
    let mut bufs: Vec<Vec<T>> = (0..parts)
        .into_par_iter()
        .map(|t| {
            let (k0, k1) = ((t * per).min(k), ((t + 1) * per).min(k));
            product(m, n, k1 - k0, |dst| run(k0, k1, dst, nested))
        })
        .collect();
    // `remove`, not `swap_remove`: the rest are added in order
    let mut out = bufs.remove(0);
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        for b in &bufs {
            for (a, &v) in o.iter_mut().zip(&b[c * CHUNK..]) {
                *a += v;
            }
        }
    });
    debug_assert_eq!(out.len(), m * n);
    out
}

/// One product of a dense layer's fp32 training step as the op runs it, for speed tests
/// (`bf16_gemm_speed`, `bench/gemm_vs_torch.sh --step`): `[m, k] x [k, n]` with `a` read as
/// `lhs^T` (`lhs_t`: a weight gradient `g^T x`, split over k by [`dw_parts`]), `b` read as
/// `rhs^T` (`rhs_t`: the forward `x W^T`, its weight packed per call for a GELU layer's tiles as
/// in [`LinearOp`], without the epilogue), or neither (an input gradient `g W`, split by
/// [`dx_parts`]).
///
/// # Safety
/// `a` and `b` hold `m * k` and `k * n` values.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn step_product(
    m: usize,
    n: usize,
    k: usize,
    lhs_t: bool,
    rhs_t: bool,
    gelu: bool,
    a: &[f32],
    b: &[f32],
) -> Vec<f32> {
    let fp32 = Products::Fp32;
    match (lhs_t, rhs_t) {
        (true, false) => weight_grad(a, b, k, n, m, 1.0, fp32, dw_parts(k, n, m)),
        (false, false) => input_grad(a, b, m, n, k, 1.0, fp32, dx_parts(m, n, k)),
        (false, true) => {
            let layer = if gelu { Activation::Gelu } else { Activation::Identity };
            let packed = pack_per_call(layer, fp32, b, k, n);
            let act = Activation::Identity;
            forward(a, b, None, m, k, n, act, false, fp32, packed.as_deref()).0
        }
        (true, true) => unreachable!("no dense-layer product reads both operands transposed"),
    }
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
                // SAFETY: gelu_backward_into writes every element (no zero fill first).
                let out = unsafe {
                    super::written(g.len(), |o: &mut [T]| {
                        if g.len() >= PAR_MIN {
                            o.par_chunks_mut(PAR_MIN / 4)
                                .zip(g.par_chunks(PAR_MIN / 4).zip(h.par_chunks(PAR_MIN / 4)))
                                .for_each(|(o, (g, h))| T::gelu_backward_into(g, h, o));
                        } else {
                            T::gelu_backward_into(g, h, o);
                        }
                    })
                };
                gh = out;
                &gh
            }
        };
        let dx = if self.need[0] {
            let dx = input_grad(g, w, rows, din, dout, s, self.products, dx_parts(rows, din, dout));
            Some(tensor_from(dx, &[rows, din])?)
        } else {
            None
        };
        let dw = if self.need[1] {
            let parts = dw_parts(rows, din, dout);
            let dw = weight_grad(g, x, rows, din, dout, s, self.products, parts);
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
        // Without a cache (training), an fp32 GELU layer still packs its weight for the tiles
        // where this CPU has them: their epilogue (bias, GELU, writing `y`) then runs per row
        // task on rows still in cache, where the `gemm` crate's runs after the whole product on
        // `h` read back from memory. 2-core Xeon (family 6, model 207): the text encoder's
        // 2048x256->1024 layer (forward, best of 30) 4.79-4.98 -> 4.53-4.58 ms; alternating runs
        // of `bench train-step --preset reference`, forward_s 0.1429 -> 0.1389 s (8 of 8 pairs,
        // not reproduced on a noisier host later). Tiles for every layer gained nothing: the crate
        // is faster without an epilogue.
        let packed32 = |w: &[f32]| match &self.packed {
            Some((cache, id)) => cache.get(*id, self.products, w, dout, din),
            None => pack_per_call(self.act, self.products, w, din, dout),
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

#[cfg(test)]
mod tests {
    use super::super::test_data::{best_secs, data};
    use super::{col_sums, dw_parts, weight_grad, Products};

    /// Both sides of every block boundary: one row, row counts not divisible by the parts or by
    /// four, several column blocks, and the MLM head's width.
    #[test]
    fn col_sums_match_f64() {
        for (rows, cols) in [(0, 5), (1, 1), (3, 7), (5, 4097), (1000, 64), (9, 30522), (2049, 256)]
        {
            let g = data(rows * cols, 3);
            let got = col_sums(&g, rows, cols);
            assert_eq!(got.len(), cols);
            for (c, &v) in got.iter().enumerate() {
                let want: f64 = (0..rows).map(|r| g[r * cols + c] as f64).sum();
                assert!((v as f64 - want).abs() <= 1e-5 * rows as f64, "{rows}x{cols} col {c}");
            }
        }
    }

    /// Every split of the rows gives `g^T x`, including splits that leave the last part short.
    #[test]
    fn weight_grad_matches_f64_in_any_number_of_parts() {
        for (rows, din, dout) in [(7, 5, 3), (515, 17, 33), (1030, 48, 20)] {
            let g = data(rows * dout, 5);
            let x = data(rows * din, 6);
            for parts in [1, 2, 3, 4] {
                let dw = weight_grad(&g, &x, rows, din, dout, 0.5f32, Products::Fp32, parts);
                for o in 0..dout {
                    for i in 0..din {
                        let want: f64 = 0.5
                            * (0..rows)
                                .map(|r| g[r * dout + o] as f64 * x[r * din + i] as f64)
                                .sum::<f64>();
                        let got = dw[o * din + i] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * rows as f64,
                            "{rows}x{din}->{dout} in {parts} parts: ({o}, {i}) {got} vs {want}"
                        );
                    }
                }
            }
        }
        // the input gradient in any number of parts of dout
        for (rows, din, dout) in [(3, 5, 600), (17, 33, 1030)] {
            let g = data(rows * dout, 7);
            let w = data(dout * din, 8);
            for parts in [1, 2, 3] {
                let dx = super::input_grad(&g, &w, rows, din, dout, 0.5f32, Products::Fp32, parts);
                for r in 0..rows {
                    for i in 0..din {
                        let want: f64 = 0.5
                            * (0..dout)
                                .map(|o| g[r * dout + o] as f64 * w[o * din + i] as f64)
                                .sum::<f64>();
                        let got = dx[r * din + i] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * dout as f64,
                            "dx {rows}x{din}<-{dout} in {parts} parts: ({r}, {i}) {got} vs {want}"
                        );
                    }
                }
            }
        }
        // the rule: large-k products split, large outputs and short k do not
        let threads = rayon::current_num_threads();
        assert_eq!(dw_parts(2048, 256, 256), threads.min(8));
        assert_eq!(dw_parts(320, 256, 30522), 1);
        assert_eq!(dw_parts(100, 4, 4), 1);
        assert_eq!(super::dx_parts(320, 256, 30522), threads.min(30522 / 256));
        assert_eq!(super::dx_parts(2048, 256, 1024), 1);
    }

    /// `product(parts)` for 1, 2 and 4 parts, best of 5, in GFLOP/s.
    fn split_speed(what: &str, flops: f64, product: &dyn Fn(usize) -> Vec<f32>) {
        let mut line = format!("{what}:");
        for parts in [1, 2, 4] {
            let t = best_secs(10, &mut || {
                std::hint::black_box(product(parts));
            });
            line += &format!(" {parts} parts {:.0} GFLOP/s", flops / t / 1e9);
        }
        println!("{line}");
    }

    /// Weight gradients of the reference model's layers, unsplit and split:
    /// `cargo test --release -p medvlp-model --lib dw_split_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn dw_split_speed() {
        let shapes = [
            (2048usize, 256usize, 256usize),
            (2048, 256, 1024),
            (2048, 1024, 256),
            (2080, 128, 128),
            (2080, 128, 512),
            (2080, 512, 128),
            (544, 256, 256),
            (544, 256, 1024),
            (544, 1024, 256),
        ];
        for (rows, din, dout) in shapes {
            let (g, x) = (data(rows * dout, 1), data(rows * din, 2));
            let what =
                format!("dW {rows} x {din} -> {dout} (rule: {} parts)", dw_parts(rows, din, dout));
            split_speed(&what, 2.0 * (rows * din * dout) as f64, &|parts| {
                weight_grad(&g, &x, rows, din, dout, 1.0f32, Products::Fp32, parts)
            });
        }
    }

    /// Input gradients, the same way (`dx_split_speed`).
    #[test]
    #[ignore]
    fn dx_split_speed() {
        let shapes = [
            (320usize, 256usize, 30522usize),
            (2048, 256, 1024),
            (2048, 256, 256),
            (2080, 128, 512),
            (544, 256, 1024),
        ];
        for (rows, din, dout) in shapes {
            let (g, w) = (data(rows * dout, 1), data(dout * din, 2));
            let what = format!(
                "dx {rows} x {din} <- {dout} (rule: {} parts)",
                super::dx_parts(rows, din, dout)
            );
            split_speed(&what, 2.0 * (rows * din * dout) as f64, &|parts| {
                super::input_grad(&g, &w, rows, din, dout, 1.0f32, Products::Fp32, parts)
            });
        }
    }

    /// `cargo test --release -p medvlp-model --lib col_sums_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn col_sums_speed() {
        for (rows, cols) in
            [(2048usize, 256usize), (2048, 1024), (320, 30522), (2080, 128), (544, 256)]
        {
            let g = data(rows * cols, 1);
            let s = best_secs(20, &mut || {
                std::hint::black_box(col_sums(&g, rows, cols));
            });
            println!(
                "col_sums {rows}x{cols}: {:.1} us, {:.1} GB/s",
                s * 1e6,
                (rows * cols * 4) as f64 / s / 1e9
            );
        }
    }
}
