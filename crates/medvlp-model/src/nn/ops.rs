//! Differentiable primitives with hand-written backward passes.
//!
//! candle-nn's fused `LayerNorm`, `ops::softmax_last_dim` and `ops::rms_norm` record no backward op,
//! so everything before them silently receives no gradient. These replacements are candle custom ops
//! on the CPU (one pass over rows, parallel with rayon, f32 and f64) whose `bwd` is written out here,
//! and composed tensor expressions on other devices, where candle's autograd differentiates them.
//! Every op has a finite-difference test and an equality test against the composed version.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Rows below this many elements are processed on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 14;

use super::fused::{contiguous_slice, use_kernel, written, zeroed};

/// Map every row of length `d` of `x` into the matching row of the output, in parallel.
fn map_rows<T: Copy + Send + Sync + Default>(
    x: &[T],
    d: usize,
    f: impl Fn(&[T], &mut [T]) + Send + Sync,
) -> Vec<T> {
    // SAFETY: `f` writes its whole output row (every caller below), and the rows cover `out`.
    unsafe {
        written(x.len(), |out: &mut [T]| {
            if x.len() >= PAR_MIN_ELEMS {
                out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, r)| f(r, o));
            } else {
                out.chunks_mut(d).zip(x.chunks(d)).for_each(|(o, r)| f(r, o));
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// softmax over the last dimension

struct SoftmaxLastDim;

fn softmax_row<T: num_like::Float>(r: &[T], o: &mut [T]) {
    let m = T::max_of(r);
    o.copy_from_slice(r);
    let s = T::exp_inplace_sum(o, m);
    let inv = T::one() / s;
    for o in o.iter_mut() {
        *o *= inv;
    }
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "medvlp-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims()[l.dims().len() - 1];
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(map_rows(contiguous_slice(v, l, self.name())?, d, softmax_row))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(map_rows(contiguous_slice(v, l, self.name())?, d, softmax_row))
            }
            _ => candle_core::bail!("{}: unsupported dtype {:?}", self.name(), s.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y))
        let gy = (g * y)?;
        let s = gy.sum_keepdim(D::Minus1)?;
        Ok(Some((gy - y.broadcast_mul(&s)?)?))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if use_kernel(x) {
        x.contiguous()?.apply_op1(SoftmaxLastDim)
    } else {
        softmax_last_dim_composed(x)
    }
}

/// Composed softmax (candle autograd through exp/sum/div). The max is detached: softmax is
/// shift-invariant, so its gradient through the max is zero anyway.
pub fn softmax_last_dim_composed(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// log-softmax over the last dimension (composed; used by the cross-entropy losses).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    z.broadcast_sub(&lse)
}

// ---------------------------------------------------------------------------------------------
// GELU (exact, erf form: Hugging Face "gelu")

struct GeluErf;
struct GeluErfGrad;

fn gelu<T: num_like::Float>(x: T) -> T {
    x.gelu()
}

fn gelu_grad<T: num_like::Float>(x: T) -> T {
    // d/dx [x Phi(x)] = Phi(x) + x phi(x)
    x.gelu_grad()
}

fn map_elems<T: Copy + Send + Sync + Default>(x: &[T], f: impl Fn(T) -> T + Send + Sync) -> Vec<T> {
    if x.len() >= PAR_MIN_ELEMS {
        x.par_iter().map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

macro_rules! elementwise_op {
    ($ty:ident, $name:literal, $f:ident, $bwd:expr) => {
        impl CustomOp1 for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
                let out = match s {
                    CpuStorage::F32(v) => {
                        CpuStorage::F32(map_elems(contiguous_slice(v, l, $name)?, $f::<f32>))
                    }
                    CpuStorage::F64(v) => {
                        CpuStorage::F64(map_elems(contiguous_slice(v, l, $name)?, $f::<f64>))
                    }
                    _ => candle_core::bail!("{}: unsupported dtype {:?}", $name, s.dtype()),
                };
                Ok((out, l.shape().clone()))
            }
            fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
                let f: fn(&Tensor, &Tensor) -> Result<Option<Tensor>> = $bwd;
                f(x, g)
            }
        }
    };
}

elementwise_op!(GeluErf, "medvlp-gelu", gelu, |x, g| Ok(Some(
    (g * x.apply_op1_no_bwd(&GeluErfGrad)?)?
)));
elementwise_op!(GeluErfGrad, "medvlp-gelu-grad", gelu_grad, |_x, _g| Err(
    candle_core::Error::BackwardNotSupported { op: "medvlp-gelu-grad (second derivative)" }
));

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, differentiable.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if use_kernel(x) {
        x.contiguous()?.apply_op1(GeluErf)
    } else {
        gelu_erf_composed(x)
    }
}

/// Composed exact GELU (candle's erf carries a backward rule).
pub fn gelu_erf_composed(x: &Tensor) -> Result<Tensor> {
    let cdf = ((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5;
    x * cdf?
}

// ---------------------------------------------------------------------------------------------
// LayerNorm over the last dimension with affine weight and bias

/// LayerNorm, followed by GELU when `gelu` (the ConvNet's normalisation + activation as one op:
/// one pass over the activations each way and one autograd node instead of two).
struct LayerNormOp {
    eps: f64,
    gelu: bool,
}

/// Backward of LayerNorm: inputs (x, params, grad_out) with params = weight, or weight and bias
/// concatenated when `gelu` (its derivative needs the LayerNorm output); output is the
/// concatenation `[dx (numel x) | dweight (d) | dbias (d)]` so that one pass over the rows yields
/// all three.
struct LayerNormBwdOp {
    eps: f64,
    gelu: bool,
}

/// Independent accumulators in the row reductions below: a plain fold must add in order and
/// stays scalar, lanes let the compiler vectorise (the rows are 32-1024 wide).
const LANES: usize = 16;

/// `sum_i f(x_i, y_i)` over [`LANES`] running sums (lane `l` takes elements `l, l + LANES, ...`;
/// the tail starts the total). Chunks, not indices: bounds checks on `x[i]` kept the loop scalar.
fn lane_sum<T: num_like::Float>(x: &[T], y: &[T], f: impl Fn(T, T) -> T) -> T {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [T::zero(); LANES];
    let (mut xc, mut yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    for (xs, ys) in (&mut xc).zip(&mut yc) {
        for ((a, &u), &v) in acc.iter_mut().zip(xs).zip(ys) {
            *a += f(u, v);
        }
    }
    let mut s = T::zero();
    for (&u, &v) in xc.remainder().iter().zip(yc.remainder()) {
        s += f(u, v);
    }
    acc.iter().fold(s, |s, &a| s + a)
}

/// Mean and `1 / sqrt(var + eps)` of a row (two passes, in the row's precision).
fn row_stats<T: num_like::Float>(r: &[T], eps: f64) -> (T, T) {
    let d = T::from_f64(r.len() as f64);
    let mean = lane_sum(r, r, |u, _| u) / d;
    let var = lane_sum(r, r, |u, _| (u - mean) * (u - mean)) / d;
    (mean, T::from_f64(1.0 / (var.to_f64() + eps).sqrt()))
}

/// `u = (r - mean) * rstd * w + b` for one row; returns (mean, rstd).
fn ln_row<T: num_like::Float>(r: &[T], w: &[T], b: &[T], eps: f64, u: &mut [T]) -> (T, T) {
    let (mean, rstd) = row_stats(r, eps);
    for (((u, &x), &w), &b) in u.iter_mut().zip(r).zip(w).zip(b) {
        *u = (x - mean) * rstd * w + b;
    }
    (mean, rstd)
}

/// Rows per parallel task for rows of `d` elements.
fn rows_per_task(d: usize) -> usize {
    (PAR_MIN_ELEMS / 4 / d.max(1)).max(1)
}

/// LayerNorm of every row of `x`, followed by GELU when `gelu`.
fn layer_norm_fwd<T: num_like::Float>(x: &[T], w: &[T], b: &[T], eps: f64, gelu: bool) -> Vec<T> {
    let d = w.len();
    if !gelu {
        return map_rows(x, d, |r, o| {
            ln_row(r, w, b, eps, o);
        });
    }
    let chunk = rows_per_task(d) * d;
    // SAFETY: gelu_into writes every element of each output row.
    unsafe {
        written(x.len(), |out: &mut [T]| {
            out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each_init(
                || vec![T::zero(); d],
                |u, (o, xc)| {
                    for (o, r) in o.chunks_mut(d).zip(xc.chunks(d)) {
                        ln_row(r, w, b, eps, u);
                        T::gelu_into(u, o);
                    }
                },
            )
        })
    }
}

/// Gradients of LayerNorm (of `GELU(LayerNorm(x))` when `gelu_bias` holds the LayerNorm bias)
/// from the output gradient `g`, packed as `[dx | dweight | dbias]`.
fn layer_norm_bwd<T: num_like::Float>(
    x: &[T],
    w: &[T],
    gelu_bias: Option<&[T]>,
    g: &[T],
    eps: f64,
) -> Vec<T> {
    let d = w.len();
    let rows = x.len() / d;
    let mut out = zeroed(x.len() + 2 * d);
    let (dx, dwb) = out.split_at_mut(x.len());
    // dx row by row; dweight/dbias accumulated in the row precision over blocks of rows, in f64
    // across blocks and chunks.
    const BLOCK: usize = 256;
    let chunk_rows = (rows / (4 * rayon::current_num_threads()).max(1)).max(16);
    let partials: Vec<Vec<f64>> = dx
        .par_chunks_mut(chunk_rows * d)
        .enumerate()
        .map(|(ci, dxc)| {
            let mut acc = vec![0f64; 2 * d];
            let mut block = vec![T::zero(); 2 * d];
            let (mut u, mut gu) = (vec![T::zero(); d], vec![T::zero(); d]);
            let (mut xh, mut dxh) = (vec![T::zero(); d], vec![T::zero(); d]);
            let dn = T::from_f64(d as f64);
            for (ri, dxr) in dxc.chunks_mut(d).enumerate() {
                let row = ci * chunk_rows + ri;
                let xr = &x[row * d..(row + 1) * d];
                let mut gr = &g[row * d..(row + 1) * d];
                let (mean, rstd) = match gelu_bias {
                    // the gradient at the LayerNorm's output: g * gelu'(u)
                    Some(b) => {
                        let stats = ln_row(xr, w, b, eps, &mut u);
                        T::gelu_backward_into(gr, &u, &mut gu);
                        gr = &gu;
                        stats
                    }
                    None => row_stats(xr, eps),
                };
                // dxhat = g * w;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
                for (((xh, dxh), (&x, &g)), &w) in
                    xh.iter_mut().zip(dxh.iter_mut()).zip(xr.iter().zip(gr)).zip(w)
                {
                    *xh = (x - mean) * rstd;
                    *dxh = g * w;
                }
                let m1 = lane_sum(&dxh, &dxh, |u, _| u) / dn;
                let m2 = lane_sum(&dxh, &xh, |u, v| u * v) / dn;
                for ((o, &a), &h) in dxr.iter_mut().zip(&dxh).zip(&xh) {
                    *o = rstd * (a - m1 - h * m2);
                }
                let (bw, bb) = block.split_at_mut(d);
                for (((bw, bb), &g), &h) in bw.iter_mut().zip(bb.iter_mut()).zip(gr).zip(&xh) {
                    *bw += g * h;
                    *bb += g;
                }
                if (ri + 1) % BLOCK == 0 {
                    acc.iter_mut().zip(block.iter_mut()).for_each(|(a, b)| {
                        *a += b.to_f64();
                        *b = T::zero();
                    });
                }
            }
            acc.iter_mut().zip(&block).for_each(|(a, b)| *a += b.to_f64());
            acc
        })
        .collect();
    for p in partials {
        for (o, v) in dwb.iter_mut().zip(p) {
            *o = T::from_f64(o.to_f64() + v);
        }
    }
    out
}

fn three_slices<'a, T>(
    s1: &'a [T],
    l1: &Layout,
    s2: &'a [T],
    l2: &Layout,
    s3: &'a [T],
    l3: &Layout,
    op: &str,
) -> Result<(&'a [T], &'a [T], &'a [T])> {
    Ok((
        contiguous_slice(s1, l1, op)?,
        contiguous_slice(s2, l2, op)?,
        contiguous_slice(s3, l3, op)?,
    ))
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        if self.gelu {
            "medvlp-layer-norm-gelu"
        } else {
            "medvlp-layer-norm"
        }
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
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                let (x, w, b) = three_slices(x, l1, w, l2, b, l3, self.name())?;
                CpuStorage::F32(layer_norm_fwd(x, w, b, self.eps, self.gelu))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                let (x, w, b) = three_slices(x, l1, w, l2, b, l3, self.name())?;
                CpuStorage::F64(layer_norm_fwd(x, w, b, self.eps, self.gelu))
            }
            _ => candle_core::bail!("{}: unsupported or mixed dtypes", self.name()),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let n = x.elem_count();
        let params = if self.gelu { Tensor::cat(&[w, b], 0)? } else { w.clone() };
        let packed = x.apply_op3_no_bwd(
            &params,
            &g.contiguous()?,
            &LayerNormBwdOp { eps: self.eps, gelu: self.gelu },
        )?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, d)?.reshape(w.shape())?;
        let db = packed.narrow(0, n + d, d)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp3 for LayerNormBwdOp {
    fn name(&self) -> &'static str {
        "medvlp-layer-norm-bwd"
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
        let d = l2.shape().elem_count() / if self.gelu { 2 } else { 1 };
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(p), CpuStorage::F32(g)) => {
                let (x, p, g) = three_slices(x, l1, p, l2, g, l3, self.name())?;
                CpuStorage::F32(layer_norm_bwd(x, &p[..d], self.gelu.then(|| &p[d..]), g, self.eps))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p), CpuStorage::F64(g)) => {
                let (x, p, g) = three_slices(x, l1, p, l2, g, l3, self.name())?;
                CpuStorage::F64(layer_norm_bwd(x, &p[..d], self.gelu.then(|| &p[d..]), g, self.eps))
            }
            _ => candle_core::bail!("{}: unsupported or mixed dtypes", self.name()),
        };
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * d)))
    }
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    layer_norm_op(x, weight, bias, eps, false)
}

/// `GELU(layer_norm(x))` as one op.
pub fn layer_norm_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    layer_norm_op(x, weight, bias, eps, true)
}

fn layer_norm_op(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    gelu: bool,
) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if weight.elem_count() != d || bias.elem_count() != d {
        candle_core::bail!(
            "layer_norm: last dim {d} does not match weight {:?} / bias {:?}",
            weight.shape(),
            bias.shape()
        );
    }
    if use_kernel(x) && x.dtype() == weight.dtype() && x.dtype() == bias.dtype() {
        x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNormOp { eps, gelu },
        )
    } else if gelu {
        gelu_erf_composed(&layer_norm_composed(x, weight, bias, eps)?)
    } else {
        layer_norm_composed(x, weight, bias, eps)
    }
}

/// Composed LayerNorm (candle autograd through mean/var/sqrt).
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xh = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xh.broadcast_mul(weight)?.broadcast_add(bias)
}

use super::fused::num as num_like;
