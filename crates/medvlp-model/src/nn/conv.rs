//! 2-D convolution on channels-last (`[b, h, w, c]`) tensors as `im2col` + the fused dense layer.
//!
//! candle's own `conv2d` differentiates its input with a direct-loop `conv_transpose2d` on the
//! CPU (far slower than the GEMM it feeds), so the project owns the convolution: [`im2col`] is a
//! custom op that gathers every output position's `k x k x c` window into one row, and its
//! backward ([`col2im`], the adjoint: a scatter-add) is another. The matrix product then goes
//! through [`super::linear`] (GEMM with the bias in the epilogue, hand-written backward).
//! Channels-last keeps each window row a few contiguous copies and lets LayerNorm run over the
//! channels as a plain last-dimension op.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor,
};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::fused::{
    contiguous_slice, gemm, tensor_from, use_gemm_kernel, use_kernel, with_slices, Float, Mat,
    SendPtr, SliceKernel,
};
use super::{linear, Activation};

/// Window geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    /// An error naming `op` unless the window fits an `h x w` input.
    fn check_fits(&self, h: usize, w: usize, op: &str) -> Result<()> {
        if self.kernel == 0
            || self.stride == 0
            || h + 2 * self.padding < self.kernel
            || w + 2 * self.padding < self.kernel
        {
            candle_core::bail!("{op}: window {self:?} does not fit a {h}x{w} input");
        }
        Ok(())
    }

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

/// The kernel offsets `kx0..kx1` whose input columns (`ix0..`, consecutive) lie inside the
/// image, for output coordinate `o` along an axis of `n` inputs; empty when none does.
fn inside(win: Window, o: usize, n: usize) -> (usize, usize, usize) {
    let kx0 = win.padding.saturating_sub(o * win.stride).min(win.kernel);
    let kx1 = (n + win.padding).saturating_sub(o * win.stride).clamp(kx0, win.kernel);
    let ix0 = (o * win.stride + kx0).saturating_sub(win.padding);
    (kx0, kx1, ix0)
}

/// Window rows of every output position of one image (`img` `[h, w, c]`) into `dst`
/// (`[ho * wo, k * k * c]`), zeros where a window reaches into the padding. The kernel offsets of
/// one kernel row that fall inside the image read consecutive pixels: one copy each (the 3-channel
/// stem otherwise made a `memmove` call per 12 bytes).
fn im2col_image<T: Copy + Default>(
    img: &[T],
    dst: &mut [T],
    h: usize,
    w: usize,
    c: usize,
    win: Window,
) {
    let (wo, k) = (win.out_size(w), win.kernel);
    let row = k * k * c;
    for (oy, rows) in dst.chunks_mut(wo * row).enumerate() {
        for (ox, dst) in rows.chunks_mut(row).enumerate() {
            let (kx0, kx1, ix0) = inside(win, ox, w);
            for (ky, d) in dst.chunks_mut(k * c).enumerate() {
                let Some(iy) = win.input(oy, ky, h) else {
                    d.fill(T::default());
                    continue;
                };
                d[..kx0 * c].fill(T::default());
                if kx1 > kx0 {
                    let src = (iy * w + ix0) * c;
                    d[kx0 * c..kx1 * c].copy_from_slice(&img[src..src + (kx1 - kx0) * c]);
                }
                d[kx1 * c..].fill(T::default());
            }
        }
    }
}

/// The adjoint of [`im2col_image`]: adds every window row of `cols` back into `img` (`[h, w, c]`).
fn col2im_image<T: Copy + std::ops::AddAssign>(
    cols: &[T],
    img: &mut [T],
    h: usize,
    w: usize,
    c: usize,
    win: Window,
) {
    let (ho, wo, k) = (win.out_size(h), win.out_size(w), win.kernel);
    let row = k * k * c;
    for oy in 0..ho {
        for ox in 0..wo {
            let src = &cols[(oy * wo + ox) * row..(oy * wo + ox + 1) * row];
            let (kx0, kx1, ix0) = inside(win, ox, w);
            if kx1 == kx0 {
                continue;
            }
            for ky in 0..k {
                let Some(iy) = win.input(oy, ky, h) else { continue };
                let d = &mut img[(iy * w + ix0) * c..(iy * w + ix0 + kx1 - kx0) * c];
                for (d, &s) in d.iter_mut().zip(&src[(ky * k + kx0) * c..(ky * k + kx1) * c]) {
                    *d += s;
                }
            }
        }
    }
}

fn im2col_cpu<T: Copy + Default + Send + Sync>(
    x: &[T],
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    win: Window,
) -> Vec<T> {
    let (ho, wo, k) = (win.out_size(h), win.out_size(w), win.kernel);
    let mut out = vec![T::default(); b * ho * wo * k * k * c];
    out.par_chunks_mut(ho * wo * k * k * c)
        .zip(x.par_chunks(h * w * c))
        .for_each(|(dst, img)| im2col_image(img, dst, h, w, c, win));
    out
}

fn col2im_cpu<T: Copy + Default + Send + Sync + std::ops::AddAssign>(
    g: &[T],
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    win: Window,
) -> Vec<T> {
    let (ho, wo, k) = (win.out_size(h), win.out_size(w), win.kernel);
    let mut out = vec![T::default(); b * h * w * c];
    // One task per image: windows overlap within an image, never across images.
    out.par_chunks_mut(h * w * c)
        .zip(g.par_chunks(ho * wo * k * k * c))
        .for_each(|(img, cols)| col2im_image(cols, img, h, w, c, win));
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
            CpuStorage::F32(v) => {
                CpuStorage::F32(im2col_cpu(contiguous_slice(v, l, self.name())?, b, h, w, c, win))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(im2col_cpu(contiguous_slice(v, l, self.name())?, b, h, w, c, win))
            }
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
            CpuStorage::F32(v) => {
                CpuStorage::F32(col2im_cpu(contiguous_slice(v, l, self.name())?, b, h, w, c, win))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(col2im_cpu(contiguous_slice(v, l, self.name())?, b, h, w, c, win))
            }
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
    win.check_fits(h, w, "im2col")?;
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
        grads
            .get(x.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("col2im: no gradient".into()))
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
        let rows = x
            .narrow(1, ky, ho * s)?
            .reshape((b, ho, s, w + 2 * p + s - 1, c))?
            .narrow(2, 0, 1)?
            .squeeze(2)?;
        for kx in 0..k {
            let cols = rows
                .narrow(2, kx, wo * s)?
                .reshape((b, ho, wo, s, c))?
                .narrow(3, 0, 1)?
                .squeeze(3)?;
            parts.push(cols);
        }
    }
    Tensor::cat(&parts, 3)
}

/// Convolution as one op: `x` `[b, h, w, c]`, `wm` `[o, k * k * c]` (columns ordered like the
/// window rows), `bias` `[o]` -> `[b, ho, wo, o]`. Each task takes a few images, gathers their
/// window rows into its own buffer and runs one GEMM; the backward pass gathers them again. So the
/// column matrix, `k * k` times the input, never exists for the whole batch, and autograd sees one
/// node per convolution instead of im2col + linear (each node costs candle a zeroed gradient
/// buffer and an add in the backward pass).
struct Conv2dOp {
    win: Window,
    /// bf16 or fp32 products, fixed when the op is recorded.
    products: super::fused::Products,
}

/// Images per task: enough output rows for an efficient GEMM, while leaving every thread work.
fn images_per_task(b: usize, positions: usize) -> usize {
    let want = 256usize.div_ceil(positions.max(1));
    want.clamp(1, (b / (2 * rayon::current_num_threads())).max(1))
}

struct ConvGeometry {
    products: super::fused::Products,
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    o: usize,
    win: Window,
}

impl ConvGeometry {
    fn positions(&self) -> usize {
        self.win.out_size(self.h) * self.win.out_size(self.w)
    }
    fn row(&self) -> usize {
        self.win.kernel * self.win.kernel * self.c
    }
    /// Window rows of images `i0 .. i0 + n` into `cols`.
    fn gather<T: Float>(&self, x: &[T], i0: usize, n: usize, cols: &mut Vec<T>) {
        let (img, per) = (self.h * self.w * self.c, self.positions() * self.row());
        cols.resize(n * per, T::zero());
        for i in 0..n {
            im2col_image(
                &x[(i0 + i) * img..(i0 + i + 1) * img],
                &mut cols[i * per..(i + 1) * per],
                self.h,
                self.w,
                self.c,
                self.win,
            );
        }
    }
}

fn conv_forward<T: Float>(x: &[T], wm: &[T], bias: &[T], g: &ConvGeometry) -> Vec<T> {
    let (per, row, o) = (g.positions(), g.row(), g.o);
    let group = images_per_task(g.b, per);
    let mut out = vec![T::zero(); g.b * per * o];
    out.par_chunks_mut(group * per * o).enumerate().for_each_init(Vec::new, |cols, (ci, out)| {
        let n = out.len() / (per * o);
        g.gather(x, ci * group, n, cols);
        for r in out.chunks_mut(o) {
            r.copy_from_slice(bias);
        }
        // out (+)= cols wm^T
        unsafe {
            gemm(
                n * per,
                o,
                row,
                out.as_mut_ptr(),
                o,
                true,
                Mat::rows(cols.as_ptr(), row),
                Mat::rows(wm.as_ptr(), row).t(),
                T::one(),
                false,
                g.products,
            )
        };
    });
    out
}

/// dx (col2im of `g wm`), dwm (`g^T cols`, summed over tasks) and dbias, for those in `need`.
struct ConvBackward {
    geo: ConvGeometry,
    need: [bool; 3],
}

impl SliceKernel for ConvBackward {
    type Out = [Option<Tensor>; 3];
    /// data: x, wm, g
    fn run<T: Float>(self, data: &[&[T]]) -> Result<Self::Out> {
        let (x, wm, gr) = (data[0], data[1], data[2]);
        let g = &self.geo;
        let (per, row, o, img) = (g.positions(), g.row(), g.o, g.h * g.w * g.c);
        let group = images_per_task(g.b, per);
        let mut dx = vec![T::zero(); if self.need[0] { g.b * img } else { 0 }];
        let dxp = SendPtr(dx.as_mut_ptr());
        let need = self.need;
        let zeros = || (vec![T::zero(); if need[1] { o * row } else { 0 }], vec![T::zero(); o]);
        let (dw, db) = (0..g.b.div_ceil(group))
            .into_par_iter()
            .fold(
                || (zeros(), Vec::new()),
                |((mut dw, mut db), mut cols), ci| {
                    let (i0, n) = (ci * group, group.min(g.b - ci * group));
                    let gc = &gr[i0 * per * o..(i0 + n) * per * o];
                    if need[1] {
                        g.gather(x, i0, n, &mut cols);
                        // dwm += gc^T cols
                        unsafe {
                            gemm(
                                o,
                                row,
                                n * per,
                                dw.as_mut_ptr(),
                                row,
                                true,
                                Mat::rows(gc.as_ptr(), o).t(),
                                Mat::rows(cols.as_ptr(), row),
                                T::one(),
                                false,
                                g.products,
                            )
                        };
                    }
                    if need[2] {
                        for r in gc.chunks(o) {
                            for (a, &v) in db.iter_mut().zip(r) {
                                *a += v;
                            }
                        }
                    }
                    if need[0] {
                        // Capture the whole wrapper (Send), not its raw-pointer field (edition 2021 closures).
                        #[allow(clippy::redundant_locals)]
                        let dxp = dxp;
                        // the columns' gradient gc wm, scattered back into each image
                        cols.resize(n * per * row, T::zero());
                        unsafe {
                            gemm(
                                n * per,
                                row,
                                o,
                                cols.as_mut_ptr(),
                                row,
                                false,
                                Mat::rows(gc.as_ptr(), o),
                                Mat::rows(wm.as_ptr(), row),
                                T::one(),
                                false,
                                g.products,
                            )
                        };
                        for i in 0..n {
                            // Safety: each task owns images i0 .. i0 + n of dx.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(dxp.0.add((i0 + i) * img), img)
                            };
                            col2im_image(
                                &cols[i * per * row..(i + 1) * per * row],
                                dst,
                                g.h,
                                g.w,
                                g.c,
                                g.win,
                            );
                        }
                    }
                    ((dw, db), cols)
                },
            )
            .map(|(acc, _)| acc)
            .reduce(zeros, |(mut dw, mut db), (dw2, db2)| {
                dw.iter_mut().zip(dw2).for_each(|(a, v)| *a += v);
                db.iter_mut().zip(db2).for_each(|(a, v)| *a += v);
                (dw, db)
            });
        Ok([
            if need[0] { Some(tensor_from(dx, &[g.b, g.h, g.w, g.c])?) } else { None },
            if need[1] { Some(tensor_from(dw, &[o, row])?) } else { None },
            if need[2] { Some(tensor_from(db, &[o])?) } else { None },
        ])
    }
}

impl Conv2dOp {
    fn geometry(&self, lx: &Layout, lw: &Layout) -> Result<ConvGeometry> {
        let (b, h, w, c) = lx.shape().dims4()?;
        let (o, row) = lw.shape().dims2()?;
        if row != self.win.kernel * self.win.kernel * c {
            candle_core::bail!(
                "conv2d: weight {:?} does not match {c} input channels and a {}x{} window",
                lw.dims(),
                self.win.kernel,
                self.win.kernel
            );
        }
        Ok(ConvGeometry { products: self.products, b, h, w, c, o, win: self.win })
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "medvlp-conv2d"
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
        let g = self.geometry(l1, l2)?;
        let name = self.name();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(conv_forward(
                    contiguous_slice(x, l1, name)?,
                    contiguous_slice(w, l2, name)?,
                    contiguous_slice(b, l3, name)?,
                    &g,
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                CpuStorage::F64(conv_forward(
                    contiguous_slice(x, l1, name)?,
                    contiguous_slice(w, l2, name)?,
                    contiguous_slice(b, l3, name)?,
                    &g,
                ))
            }
            _ => candle_core::bail!("{name}: unsupported or mixed dtypes"),
        };
        Ok((out, Shape::from((g.b, self.win.out_size(g.h), self.win.out_size(g.w), g.o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wm: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let geo = self.geometry(x.layout(), wm.layout())?;
        let need = [x.track_op(), wm.track_op(), bias.track_op()];
        let [dx, dw, db] =
            with_slices(&[x, wm, g], "medvlp-conv2d-bwd", ConvBackward { geo, need })?;
        Ok((dx, dw, db))
    }
}

/// Convolution of a channels-last `x` `[b, h, w, c]` with `wm` `[o, k * k * c]` (columns in
/// im2col's (ky, kx, channel) order) plus `bias`: `[b, ho, wo, o]`. Differentiable.
pub fn conv2d(x: &Tensor, wm: &Tensor, bias: &Tensor, win: Window) -> Result<Tensor> {
    let (_, h, w, _) = x.dims4()?;
    win.check_fits(h, w, "conv2d")?;
    if use_gemm_kernel(x) && wm.dtype() == x.dtype() && bias.dtype() == x.dtype() {
        x.contiguous()?.apply_op3(
            &wm.contiguous()?,
            &bias.contiguous()?,
            Conv2dOp { win, products: super::fused::Products::of(x) },
        )
    } else {
        conv2d_composed(x, wm, bias, win)
    }
}

/// [`conv2d`] as im2col + the dense layer: the reference for the fused op and the path on other
/// devices.
pub fn conv2d_composed(x: &Tensor, wm: &Tensor, bias: &Tensor, win: Window) -> Result<Tensor> {
    linear(&im2col(x, win)?, wm, Some(bias), Activation::Identity)
}

/// 2-D convolution on channels-last tensors with a PyTorch-layout `[out, in, k, k]` kernel
/// (`weight`) and `bias`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub window: Window,
    /// A frozen weight's [`Conv2d::weight_matrix`], made on first use (inference): the permute
    /// is a copy of every kernel per call otherwise (7% of encoding the small preset).
    matrix: std::sync::Arc<std::sync::Mutex<Option<(candle_core::TensorId, Tensor)>>>,
}

impl Conv2d {
    /// PyTorch's default scale (`kaiming_uniform(a = sqrt 5)` has std `1 / sqrt(3 fan_in)`).
    pub fn new(in_dim: usize, out_dim: usize, window: Window, vb: VarBuilder) -> Result<Self> {
        let k = window.kernel;
        let stdev = (1.0 / (3.0 * (in_dim * k * k) as f64)).sqrt();
        let weight =
            vb.get_with_hints((out_dim, in_dim, k, k), "weight", Init::Randn { mean: 0.0, stdev })?;
        let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, window, matrix: Default::default() })
    }

    /// The kernel as a `[out, k * k * in]` matrix with (ky, kx, channel) columns, as im2col
    /// lays out the windows.
    pub fn weight_matrix(&self) -> Result<Tensor> {
        let (o, i, k, _) = self.weight.dims4()?;
        self.weight.permute((0, 2, 3, 1))?.reshape((o, k * k * i))
    }

    /// `[b, h, w, in]` -> `[b, ho, wo, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.weight.track_op() {
            return conv2d(x, &self.weight_matrix()?, &self.bias, self.window);
        }
        let wm = {
            let mut m = self.matrix.lock().unwrap_or_else(|e| e.into_inner());
            match m.as_ref() {
                Some((id, wm)) if *id == self.weight.id() => wm.clone(),
                _ => {
                    let wm = self.weight_matrix()?.contiguous()?;
                    *m = Some((self.weight.id(), wm.clone()));
                    wm
                }
            }
        };
        conv2d(x, &wm, &self.bias, self.window)
    }
}
