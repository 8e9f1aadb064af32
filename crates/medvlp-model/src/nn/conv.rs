//! 2-D convolution on channels-last (`[b, h, w, c]`) tensors as `im2col` + the fused dense layer.
//!
//! candle's own `conv2d` differentiates its input with a direct-loop `conv_transpose2d` on the
//! CPU (far slower than the GEMM it feeds), so the project owns the convolution: [`im2col`] is a
//! custom op that gathers every output position's `k x k x c` window into one row, and its
//! backward ([`col2im`], the adjoint: a scatter-add) is another. The matrix product then goes
//! through [`super::linear`] (GEMM with the bias in the epilogue, hand-written backward).
//! Channels-last keeps each window row a few contiguous copies and lets LayerNorm run over the
//! channels as a plain last-dimension op.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::fused::{contiguous_slice, use_kernel};
use super::{linear, Activation};

/// Window geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    pub fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1
    }

    /// Input coordinate read by output coordinate `o` at kernel offset `k` (None in the padding).
    fn input(&self, o: usize, k: usize, n: usize) -> Option<usize> {
        (o * self.stride + k).checked_sub(self.padding).filter(|&i| i < n)
    }
}

/// `[b, h, w, c]` -> `[b, ho, wo, k * k * c]`, each row ordered (ky, kx, channel); zero padding.
struct Im2Col {
    win: Window,
    /// Input spatial size and channels.
    h: usize,
    w: usize,
    c: usize,
}

/// The adjoint of [`Im2Col`]: `[b, ho, wo, k * k * c]` -> `[b, h, w, c]`, summing overlaps.
struct Col2Im {
    win: Window,
    h: usize,
    w: usize,
    c: usize,
}

fn im2col_cpu<T: Copy + Default + Send + Sync>(x: &[T], b: usize, h: usize, w: usize, c: usize, win: Window) -> Vec<T> {
    let (ho, wo, k) = (win.out_size(h), win.out_size(w), win.kernel);
    let row = k * k * c;
    let mut out = vec![T::default(); b * ho * wo * row];
    // One task per output row (b, oy): disjoint output chunks.
    out.par_chunks_mut(wo * row).enumerate().for_each(|(bo, chunk)| {
        let (bi, oy) = (bo / ho, bo % ho);
        let img = &x[bi * h * w * c..(bi + 1) * h * w * c];
        for ox in 0..wo {
            let dst = &mut chunk[ox * row..(ox + 1) * row];
            for ky in 0..k {
                let Some(iy) = win.input(oy, ky, h) else { continue };
                for kx in 0..k {
                    if let Some(ix) = win.input(ox, kx, w) {
                        let src = (iy * w + ix) * c;
                        dst[(ky * k + kx) * c..(ky * k + kx + 1) * c].copy_from_slice(&img[src..src + c]);
                    }
                }
            }
        }
    });
    out
}

fn col2im_cpu<T: Copy + Default + Send + Sync + std::ops::AddAssign>(g: &[T], b: usize, h: usize, w: usize, c: usize, win: Window) -> Vec<T> {
    let (ho, wo, k) = (win.out_size(h), win.out_size(w), win.kernel);
    let row = k * k * c;
    let mut out = vec![T::default(); b * h * w * c];
    // One task per image: windows overlap within an image, never across images.
    out.par_chunks_mut(h * w * c).enumerate().for_each(|(bi, img)| {
        let cols = &g[bi * ho * wo * row..(bi + 1) * ho * wo * row];
        for oy in 0..ho {
            for ox in 0..wo {
                let src = &cols[(oy * wo + ox) * row..(oy * wo + ox + 1) * row];
                for ky in 0..k {
                    let Some(iy) = win.input(oy, ky, h) else { continue };
                    for kx in 0..k {
                        if let Some(ix) = win.input(ox, kx, w) {
                            let d = &mut img[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                            for (d, &s) in d.iter_mut().zip(&src[(ky * k + kx) * c..(ky * k + kx + 1) * c]) {
                                *d += s;
                            }
                        }
                    }
                }
            }
        }
    });
    out
}

fn check_dims(l: &Layout, want: [Option<usize>; 3], op: &str) -> Result<usize> {
    let d = l.dims();
    if d.len() != 4 || want.iter().zip(&d[1..]).any(|(w, &n)| w.is_some_and(|w| w != n)) {
        candle_core::bail!("{op}: unexpected input shape {d:?}");
    }
    Ok(d[0])
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "medvlp-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let b = check_dims(l, [Some(self.h), Some(self.w), Some(self.c)], self.name())?;
        let (h, w, c, win) = (self.h, self.w, self.c, self.win);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(im2col_cpu(contiguous_slice(v, l, self.name())?, b, h, w, c, win)),
            CpuStorage::F64(v) => CpuStorage::F64(im2col_cpu(contiguous_slice(v, l, self.name())?, b, h, w, c, win)),
            _ => candle_core::bail!("{}: unsupported dtype {:?}", self.name(), s.dtype()),
        };
        let k = win.kernel;
        Ok((out, Shape::from((b, win.out_size(h), win.out_size(w), k * k * c))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(col2im(g, self.win, self.h, self.w, self.c)?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "medvlp-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let k = self.win.kernel;
        let (ho, wo) = (self.win.out_size(self.h), self.win.out_size(self.w));
        let b = check_dims(l, [Some(ho), Some(wo), Some(k * k * self.c)], self.name())?;
        let (h, w, c, win) = (self.h, self.w, self.c, self.win);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(col2im_cpu(contiguous_slice(v, l, self.name())?, b, h, w, c, win)),
            CpuStorage::F64(v) => CpuStorage::F64(col2im_cpu(contiguous_slice(v, l, self.name())?, b, h, w, c, win)),
            _ => candle_core::bail!("{}: unsupported dtype {:?}", self.name(), s.dtype()),
        };
        Ok((out, Shape::from((b, h, w, c))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(im2col(g, self.win)?))
    }
}

/// Sliding windows of a channels-last `[b, h, w, c]` tensor: `[b, ho, wo, k * k * c]`, each row
/// ordered (ky, kx, channel), zeros outside the image. Differentiable.
pub fn im2col(x: &Tensor, win: Window) -> Result<Tensor> {
    let (_, h, w, c) = x.dims4()?;
    if win.kernel == 0 || win.stride == 0 || h + 2 * win.padding < win.kernel || w + 2 * win.padding < win.kernel {
        candle_core::bail!("im2col: window {win:?} does not fit a {h}x{w} input");
    }
    if use_kernel(x) {
        x.contiguous()?.apply_op1(Im2Col { win, h, w, c })
    } else {
        im2col_composed(x, win)
    }
}

/// The adjoint of [`im2col`] for an `h x w x c` input: sums every window row back into place.
pub fn col2im(g: &Tensor, win: Window, h: usize, w: usize, c: usize) -> Result<Tensor> {
    if use_kernel(g) {
        g.contiguous()?.apply_op1(Col2Im { win, h, w, c })
    } else {
        // Off the CPU: the gradient of the composed im2col (pad + strided narrows) is its adjoint.
        let b = g.dim(0)?;
        let x = candle_core::Var::zeros((b, h, w, c), g.dtype(), g.device())?;
        let cols = im2col_composed(x.as_tensor(), win)?;
        let grads = (cols * g)?.sum_all()?.backward()?;
        grads.get(x.as_tensor()).cloned().ok_or_else(|| candle_core::Error::Msg("col2im: no gradient".into()))
    }
}

/// [`im2col`] from differentiable tensor ops (zero padding, then one strided slice per kernel
/// offset): the reference for the kernel and the path on other devices.
pub fn im2col_composed(x: &Tensor, win: Window) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (k, s, p) = (win.kernel, win.stride, win.padding);
    let (ho, wo) = (win.out_size(h), win.out_size(w));
    // Extra `s - 1` zeros at the end so that every strided slice below stays in bounds.
    let x = x.pad_with_zeros(1, p, p + s - 1)?.pad_with_zeros(2, p, p + s - 1)?;
    let mut parts = Vec::with_capacity(k * k);
    for ky in 0..k {
        let rows = x.narrow(1, ky, ho * s)?.reshape((b, ho, s, w + 2 * p + s - 1, c))?.narrow(2, 0, 1)?.squeeze(2)?;
        for kx in 0..k {
            let cols = rows.narrow(2, kx, wo * s)?.reshape((b, ho, wo, s, c))?.narrow(3, 0, 1)?.squeeze(3)?;
            parts.push(cols);
        }
    }
    Tensor::cat(&parts, 3)
}

/// 2-D convolution on channels-last tensors with a PyTorch-layout `[out, in, k, k]` kernel
/// (`weight`) and `bias`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub window: Window,
}

impl Conv2d {
    /// PyTorch's default scale (`kaiming_uniform(a = sqrt 5)` has std `1 / sqrt(3 fan_in)`).
    pub fn new(in_dim: usize, out_dim: usize, window: Window, vb: VarBuilder) -> Result<Self> {
        let k = window.kernel;
        let stdev = (1.0 / (3.0 * (in_dim * k * k) as f64)).sqrt();
        let weight = vb.get_with_hints((out_dim, in_dim, k, k), "weight", Init::Randn { mean: 0.0, stdev })?;
        let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, window })
    }

    /// `[b, h, w, in]` -> `[b, ho, wo, out]`, `act` fused into the GEMM epilogue.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let (o, i, k, _) = self.weight.dims4()?;
        // (ky, kx, channel) columns, as im2col lays them out
        let w = self.weight.permute((0, 2, 3, 1))?.reshape((o, k * k * i))?;
        linear(&im2col(x, self.window)?, &w, Some(&self.bias), act)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }
}
