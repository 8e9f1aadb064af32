//! Fused CPU kernels with hand-written backward passes: dense layers with their bias (and GELU)
//! in the GEMM epilogue, multi-head attention in one op, softmax cross-entropy, embedding lookup.
//!
//! They are candle custom ops over f32/f64 CPU storage that call a GEMM directly with explicit
//! strides (no materialised transposes) and parallelise with rayon: the `gemm` crate, or our
//! AVX-512 tiles ([`gemm512`]) for bf16 products and, off AMD, inference's dense layers. Callers go through
//! the wrappers in [`linear`], [`attention`], [`cross_entropy`] and [`embedding`], which fall back to composed
//! tensor expressions on other devices and dtypes. Each kernel has a finite-difference test and an
//! equality test against the composed version (tests/gradients.rs, tests/fused.rs).

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention512;
pub mod bf16;
pub mod bf16_gemm;
pub mod cpu;
pub mod cross_entropy;
pub mod embedding;
#[cfg(target_arch = "x86_64")]
mod gemm256;
#[cfg(target_arch = "x86_64")]
pub mod gemm512;
pub mod linear;
pub mod vmath;

use candle_core::{DType, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

pub use num::Float;

/// Which implementation the ops take on the CPU: the fused kernels, or the composed candle
/// expressions that every other device (CUDA) runs. `MEDVLP_KERNELS=composed` selects the
/// latter for a whole process; [`with_kernels`] for one closure on one thread (tests compare the
/// two paths this way, so the CPU suite exercises exactly the code a GPU takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    Fused,
    Composed,
}

thread_local! {
    static KERNELS: std::cell::Cell<Option<Kernels>> = const { std::cell::Cell::new(None) };
}

fn process_kernels() -> Kernels {
    static K: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    *K.get_or_init(|| match std::env::var("MEDVLP_KERNELS").as_deref() {
        Ok("composed") => Kernels::Composed,
        Ok("fused") | Err(_) => Kernels::Fused,
        Ok(other) => {
            tracing::warn!("MEDVLP_KERNELS={other:?} is not `fused` or `composed`; using fused");
            Kernels::Fused
        }
    })
}

/// The implementation in effect on this thread.
pub fn kernels() -> Kernels {
    KERNELS.with(|k| k.get()).unwrap_or_else(process_kernels)
}

/// Runs `f` with `k` on this thread (restored afterwards, also on panic).
pub fn with_kernels<T>(k: Kernels, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Kernels>);
    impl Drop for Restore {
        fn drop(&mut self) {
            KERNELS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(KERNELS.with(|c| c.replace(Some(k))));
    f()
}

/// Whether the fused CPU kernels apply to `x`.
pub fn use_kernel(x: &Tensor) -> bool {
    x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && kernels() == Kernels::Fused
}

/// Whether the fused GEMM kernels (dense, attention, convolution, linear cross-entropy) apply to
/// `x`: as [`use_kernel`]. Under bf16 autocast their products run in bf16 ([`Products`]).
pub fn use_gemm_kernel(x: &Tensor) -> bool {
    use_kernel(x)
}

/// The arithmetic of a fused op's GEMMs, fixed when the op is recorded so that its backward pass
/// (which runs outside [`crate::nn::with_precision`]) multiplies the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Products {
    #[default]
    Fp32,
    /// bf16 operands, f32 accumulation ([`bf16_gemm`]).
    Bf16,
}

impl Products {
    /// bf16 under bf16 autocast for an f32 operand, else the operand's own precision.
    pub fn of(x: &Tensor) -> Self {
        if crate::nn::precision::autocast(x) {
            Products::Bf16
        } else {
            Products::Fp32
        }
    }
}

/// The contiguous slice of a CPU buffer that `layout` covers.
/// Every CPU kernel takes its inputs through here, so this is also where the spawned rayon workers
/// are told to stay awake for the kernel's jobs ([`crate::runtime::keep_workers_awake`]).
pub(crate) fn contiguous_slice<'a, T>(v: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    crate::runtime::keep_workers_awake();
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input is not contiguous"),
    }
}

/// Slices of the same float type from a list of tensors, handed to a generic kernel.
pub(crate) trait SliceKernel {
    type Out;
    fn run<T: Float>(self, data: &[&[T]]) -> Result<Self::Out>;
}

pub(crate) fn with_slices<K: SliceKernel>(ts: &[&Tensor], op: &str, k: K) -> Result<K::Out> {
    let ts: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    match ts.first().map(|t| t.dtype()) {
        Some(DType::F32) => k.run(&typed_slices::<f32>(&guards, op)?),
        Some(DType::F64) => k.run(&typed_slices::<f64>(&guards, op)?),
        _ => candle_core::bail!("{op}: needs f32 or f64 CPU tensors of one dtype"),
    }
}

fn typed_slices<'a, T: Float>(
    guards: &'a [(candle_core::StorageRef<'_>, &Layout)],
    op: &str,
) -> Result<Vec<&'a [T]>> {
    guards
        .iter()
        .map(|(s, l)| match &**s {
            Storage::Cpu(c) => contiguous_slice(T::cpu_storage_as_slice(c)?, l, op),
            _ => candle_core::bail!("{op}: needs CPU tensors"),
        })
        .collect()
}

/// A CPU tensor from a kernel's output buffer (no copy).
pub(crate) fn tensor_from<T: Float>(v: Vec<T>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// Buffers at least this long are filled by rayon's threads ([`zeroed`], [`repeat_rows`]).
const FILL_PAR_MIN: usize = 1 << 16;
/// Elements per task of a parallel fill.
const FILL_CHUNK: usize = 1 << 15;

/// `len` zeros, written in parallel when large. Freed blocks stay in the heap
/// ([`crate::runtime::configure`]), so `vec![0; len]` is a `memset` on the calling thread while
/// the other cores wait: 5% of the reference training step's time on 2 cores.
pub(crate) fn zeroed<T: Copy + Default + Send + Sync>(len: usize) -> Vec<T> {
    if len < FILL_PAR_MIN {
        return vec![T::default(); len];
    }
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(FILL_CHUNK)
        .for_each(|c| c.fill(std::mem::MaybeUninit::new(T::default())));
    // SAFETY: every element was written above.
    unsafe { v.set_len(len) };
    v
}

/// A `len`-element buffer that `fill` writes whole, without a zero fill first: a zero fill is a
/// full pass over memory (kernel outputs that are overwritten anyway: 1-2% of the reference
/// model's training step and encoding).
///
/// # Safety
/// `fill` must write every element and read none before writing it (f32/f64 have no invalid
/// values, but an element left unwritten holds stale heap bytes).
pub(crate) unsafe fn written<T: Copy>(len: usize, fill: impl FnOnce(&mut [T])) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    fill(std::slice::from_raw_parts_mut(v.as_mut_ptr(), len));
    v.set_len(len);
    v
}

/// `rows` copies of `row`, one after the other (a bias to accumulate a product onto), written in
/// parallel when large.
pub(crate) fn repeat_rows<T: Copy + Send + Sync>(row: &[T], rows: usize) -> Vec<T> {
    let (n, len) = (row.len(), row.len() * rows);
    let mut v = Vec::with_capacity(len);
    if len < FILL_PAR_MIN || n == 0 {
        for _ in 0..rows {
            v.extend_from_slice(row);
        }
        return v;
    }
    let per = (FILL_CHUNK / n).max(1) * n;
    v.spare_capacity_mut()[..len].par_chunks_mut(per).for_each(|c| {
        for r in c.chunks_mut(n) {
            for (d, &s) in r.iter_mut().zip(row) {
                d.write(s);
            }
        }
    });
    // SAFETY: every element was written above (`len` is a multiple of `n`).
    unsafe { v.set_len(len) };
    v
}

/// A raw pointer that rayon tasks may share: each task writes a disjoint (possibly strided)
/// region, which slices cannot express.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Row-major matrix view: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<T> {
    pub ptr: *const T,
    pub rs: isize,
    pub cs: isize,
}

impl<T> Mat<T> {
    /// A row-major `[rows, cols]` block with row stride `ld` starting at `ptr`.
    pub fn rows(ptr: *const T, ld: usize) -> Self {
        Self { ptr, rs: ld as isize, cs: 1 }
    }
    /// The transpose of [`Mat::rows`], by strides.
    pub fn t(self) -> Self {
        Self { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// Problems at least this large (m * n * k) use all threads; smaller ones run on the caller.
const GEMM_PAR_MIN: usize = 1 << 18;

/// Whether the kernels may use AVX-512 (the [`gemm512`] fp32 tiles, attention's head kernels):
/// the CPU has it and `MEDVLP_CPU` does not cap it ([`cpu::level`]).
pub fn avx512f() -> bool {
    cpu::avx512()
}

/// Whether the CPU's vendor is AMD (CPUID leaf 0): kernels whose relative speed differs between
/// AMD and Intel cores dispatch on it.
pub fn cpu_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let r = std::arch::x86_64::__cpuid(0);
        // "AuthenticAMD" in ebx, edx, ecx
        r.ebx == u32::from_le_bytes(*b"Auth")
            && r.edx == u32::from_le_bytes(*b"enti")
            && r.ecx == u32::from_le_bytes(*b"cAMD")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which fp32 GEMM this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F32Path {
    /// [`gemm512`]'s 8 x 48 FMA tiles for every product.
    Avx512,
    /// The tiles for frozen dense layers (inference: their weights packed once, bias and GELU in
    /// the row tasks' epilogue) and for products of a transposed left operand with at least twice
    /// as many rows as columns (weight gradients `g^T x` of layers whose output is wider than
    /// their input); the `gemm` crate for everything else. See [`tiles_win`].
    Avx512Inference,
    /// On CPUs with AVX2 but not AVX-512: [`gemm256`]'s strips for frozen dense layers (packed
    /// once, bias and GELU in the epilogue), the `gemm` crate for everything else.
    Avx2Inference,
    /// The `gemm` crate for every product.
    GemmCrate,
}

impl F32Path {
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512",
            Self::Avx512Inference => "avx512-inference",
            Self::Avx2Inference => "avx2-inference",
            Self::GemmCrate => "gemm-crate",
        }
    }

    /// Whether a frozen weight is packed for the tiles.
    pub fn packs(self) -> bool {
        self != Self::GemmCrate
    }
}

/// The fp32 path of this process: `MEDVLP_F32_GEMM` (`avx512`, `avx512-inference` or
/// `gemm-crate`) forces one; by default `avx512-inference` on CPUs with AVX-512 other than AMD's,
/// the `gemm` crate elsewhere. Measured on a 2-core Intel Xeon (family 6, model 207), alternating
/// runs of `medvlp bench`: with their weights packed once, the tiles encoded the reference model
/// 4-11% faster than the crate (14 of 16 pairs) and trained it 1-14% slower, hence the split; not
/// yet measured on AMD. The same tiles multiply bf16-rounded operands on that Xeon
/// ([`bf16_gemm::Bf16Path::Avx512Fp32`]).
pub fn f32_path() -> F32Path {
    static P: std::sync::OnceLock<F32Path> = std::sync::OnceLock::new();
    *P.get_or_init(|| {
        let all =
            [F32Path::Avx512, F32Path::Avx512Inference, F32Path::Avx2Inference, F32Path::GemmCrate];
        match std::env::var("MEDVLP_F32_GEMM") {
            Ok(v) => match all.into_iter().find(|p| p.name() == v) {
                Some(p @ (F32Path::Avx512 | F32Path::Avx512Inference)) if avx512f() => p,
                Some(p @ F32Path::Avx2Inference) if cpu::avx2() => p,
                Some(F32Path::GemmCrate) => F32Path::GemmCrate,
                _ => {
                    tracing::warn!(
                        "MEDVLP_F32_GEMM={v:?}: not one of avx512, avx512-inference (both need \
                         AVX-512), avx2-inference (AVX2), gemm-crate"
                    );
                    default_f32_path()
                }
            },
            Err(_) => default_f32_path(),
        }
    })
}

fn default_f32_path() -> F32Path {
    if cpu_is_amd() {
        F32Path::GemmCrate
    } else if avx512f() {
        F32Path::Avx512Inference
    } else if cpu::avx2() {
        F32Path::Avx2Inference
    } else {
        F32Path::GemmCrate
    }
}

/// A right operand (a frozen dense layer's `W^T`) packed once for [`gemm_packed`], in the format
/// of this CPU's kernel for the given products: inference reuses it instead of packing the weight
/// on every call.
pub struct PackedRhs {
    k: usize,
    n: usize,
    format: PackFormat,
    #[allow(dead_code)] // read only by the x86_64 kernels
    data: Vec<u32>,
}

/// The [`gemm512`] format a [`PackedRhs`] was packed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PackFormat {
    F32,
    /// [`gemm512::F32`]'s layout, multiplied by [`gemm256`].
    F32Avx2,
    F32Rounded,
    Bf16Pairs,
    /// [`gemm512::Bf16Pairs`]' layout, multiplied by [`amx`].
    AmxPairs,
}

impl PackedRhs {
    /// `rhs` (`[k, n]`) packed for `products`; `None` where that path has no packed form (the
    /// `gemm` crate and the portable bf16 path).
    ///
    /// # Safety
    /// `rhs` is valid for its extent.
    pub(crate) unsafe fn new(
        rhs: Mat<f32>,
        k: usize,
        n: usize,
        products: Products,
    ) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            use bf16_gemm::Bf16Path;
            use gemm256::F32Avx2;
            use gemm512::{pack, Bf16Pairs, F32Rounded, F32};
            let (format, data) = match (products, bf16_gemm::path(), f32_path()) {
                (Products::Fp32, _, F32Path::Avx2Inference) => {
                    (PackFormat::F32Avx2, pack::<F32Avx2>(rhs, k, n))
                }
                (Products::Fp32, _, p) if p.packs() => (PackFormat::F32, pack::<F32>(rhs, k, n)),
                (Products::Bf16, Bf16Path::Amx, _) => {
                    (PackFormat::AmxPairs, pack::<Bf16Pairs>(rhs, k, n))
                }
                (Products::Bf16, Bf16Path::Avx512Bf16, _) => {
                    (PackFormat::Bf16Pairs, pack::<Bf16Pairs>(rhs, k, n))
                }
                (Products::Bf16, Bf16Path::Avx512Fp32, _) => {
                    (PackFormat::F32Rounded, pack::<F32Rounded>(rhs, k, n))
                }
                _ => return None,
            };
            Some(Self { k, n, format, data })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (rhs, k, n, products);
            None
        }
    }

    /// `(k, n)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The products the packed operand is for.
    pub fn products(&self) -> Products {
        match self.format {
            PackFormat::F32 | PackFormat::F32Avx2 => Products::Fp32,
            PackFormat::F32Rounded | PackFormat::Bf16Pairs | PackFormat::AmxPairs => Products::Bf16,
        }
    }
}

/// [`gemm_then`] in f32 with a right operand packed by [`PackedRhs::new`] (the same products, bit
/// for bit).
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed(
    m: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<f32>,
    rhs: &PackedRhs,
    alpha: f32,
    parallel: bool,
    epilogue: Option<Epilogue>,
) {
    if parallel {
        crate::runtime::keep_workers_awake();
    }
    #[cfg(target_arch = "x86_64")]
    {
        use gemm256::F32Avx2;
        use gemm512::{gemm_packed as g, Bf16Pairs, F32Rounded, F32};
        let (n, k, d) = (rhs.n, rhs.k, &rhs.data[..]);
        match rhs.format {
            PackFormat::F32 => {
                g::<F32>(m, n, k, dst, dst_rs, accumulate, lhs, d, alpha, parallel, epilogue)
            }
            PackFormat::F32Avx2 => {
                g::<F32Avx2>(m, n, k, dst, dst_rs, accumulate, lhs, d, alpha, parallel, epilogue)
            }
            PackFormat::Bf16Pairs => {
                g::<Bf16Pairs>(m, n, k, dst, dst_rs, accumulate, lhs, d, alpha, parallel, epilogue)
            }
            PackFormat::F32Rounded => {
                g::<F32Rounded>(m, n, k, dst, dst_rs, accumulate, lhs, d, alpha, parallel, epilogue)
            }
            PackFormat::AmxPairs => amx::gemm_packed::<amx::Amx>(
                m, n, k, dst, dst_rs, accumulate, lhs, d, alpha, parallel, epilogue,
            ),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel, epilogue);
        unreachable!("PackedRhs::new returns None off x86_64")
    }
}

/// `dst[m, n] (+)= alpha * lhs[m, k] * rhs[k, n]`, accumulating into `dst` when `accumulate`.
/// `parallel` lets gemm use rayon's threads (only for large problems; the attention kernel calls
/// this from inside its own parallel loop with `parallel = false`). With [`Products::Bf16`] an f32
/// product takes bf16 operands ([`bf16_gemm`]).
///
/// # Safety
/// The views must be valid for their extents and `dst` must not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    alpha: T,
    parallel: bool,
    products: Products,
) {
    gemm_then(m, n, k, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel, products, None)
}

/// Rows `r0..r0 + rows` of a product are final: an epilogue may read and rewrite them.
pub(crate) type Epilogue<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// [`gemm`], then `epilogue(r0, rows)` over every row once. The bf16 kernel calls it per row task
/// right after the task's tiles, while the rows are still in cache; the fp32 path after the
/// product, over row chunks in parallel.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_then<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    alpha: T,
    parallel: bool,
    products: Products,
    epilogue: Option<Epilogue>,
) {
    if parallel {
        crate::runtime::keep_workers_awake();
    }
    if products == Products::Bf16 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        let cast = |a: Mat<T>| Mat { ptr: a.ptr as *const f32, rs: a.rs, cs: a.cs };
        return bf16_gemm::gemm_bf16(
            bf16_gemm::path(),
            m,
            n,
            k,
            dst as *mut f32,
            dst_rs,
            accumulate,
            cast(lhs),
            cast(rhs),
            alpha.to_f64() as f32,
            parallel,
            epilogue,
        );
    }
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && match f32_path() {
            F32Path::Avx512 => true,
            F32Path::Avx512Inference => tiles_win(m, n, lhs),
            F32Path::Avx2Inference | F32Path::GemmCrate => false,
        }
    {
        let cast = |a: Mat<T>| Mat { ptr: a.ptr as *const f32, rs: a.rs, cs: a.cs };
        let alpha = alpha.to_f64() as f32;
        let (lhs, rhs, dst) = (cast(lhs), cast(rhs), dst as *mut f32);
        return gemm512::gemm::<gemm512::F32>(
            m, n, k, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel, epilogue,
        );
    }
    gemm_crate(m, n, k, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel);
    if let Some(epi) = epilogue {
        // chunks of ~32k elements
        let per = (EPILOGUE_CHUNK / n.max(1)).max(1);
        if parallel && m * n >= 2 * EPILOGUE_CHUNK {
            (0..m.div_ceil(per)).into_par_iter().for_each(|c| epi(c * per, per.min(m - c * per)));
        } else {
            epi(0, m);
        }
    }
}

/// Whether [`F32Path::Avx512Inference`] runs an unpacked fp32 product on the tiles: a transposed
/// left operand (rows contiguous along m, as `g^T` in a weight gradient) with `m >= 2n` and
/// `n >= 256`. Medians of 4 runs of best-of-5 on a 2-core Intel Xeon (family 6, model 207),
/// tiles against the `gemm` crate in GFLOP/s: the MLM head's `30522x256x320` 244 vs 165,
/// `1024x256x544` 268 vs 247, `1024x256x2048` 254 vs 245, `768x256x2048` 250 vs 249; the crate
/// wins where n is 128 (the MAE decoder: `512x128x2080` 226 vs 251, `384x128x2080` 210 vs 221),
/// where m < 2n (`256x1024x544` 227 vs 254, `256x256x2048` 215 vs 236) and for every product
/// with a row-major left operand.
fn tiles_win<T>(m: usize, n: usize, lhs: Mat<T>) -> bool {
    lhs.rs == 1 && lhs.cs != 1 && m >= 2 * n && n >= 256
}

/// Elements per parallel chunk of an fp32 product's epilogue.
const EPILOGUE_CHUNK: usize = 1 << 15;

/// [`gemm`] through the `gemm` crate (also the product of [`bf16_gemm`]'s portable path).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_crate<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    alpha: T,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.add(i * dst_rs + j) = T::zero();
                }
            }
        }
        return;
    }
    let par = if parallel && m * n * k >= GEMM_PAR_MIN && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // gemm computes dst = a * dst + b * lhs * rhs (a is read only when read_dst).
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        T::one(),
        alpha,
        false,
        false,
        false,
        par,
    );
}

/// The numeric vocabulary the kernels need, for f32 and f64.
pub mod num {
    pub trait Float:
        Copy
        + Send
        + Sync
        + Default
        + PartialOrd
        + 'static
        + std::fmt::Debug
        + candle_core::WithDType
        + std::ops::Add<Output = Self>
        + std::ops::Sub<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
        + std::ops::AddAssign
        + std::ops::SubAssign
        + std::ops::MulAssign
    {
        fn neg_infinity() -> Self;
        fn exp(self) -> Self;
        fn ln(self) -> Self;
        /// Exact GELU `x Phi(x)` and its derivative `Phi(x) + x phi(x)`.
        fn gelu(self) -> Self;
        fn gelu_grad(self) -> Self;

        /// The largest element (NaN never wins; -inf for an empty slice).
        fn max_of(x: &[Self]) -> Self {
            let mut m = Self::neg_infinity();
            for &v in x {
                if v > m {
                    m = v;
                }
            }
            m
        }
        /// `sum_i exp(x_i - shift)`.
        fn exp_sum(x: &[Self], shift: Self) -> Self {
            let mut s = Self::zero();
            for &v in x {
                s += (v - shift).exp();
            }
            s
        }
        /// `x_i <- exp(x_i - shift)`, returning their sum.
        fn exp_inplace_sum(x: &mut [Self], shift: Self) -> Self {
            let mut s = Self::zero();
            for v in x.iter_mut() {
                *v = (*v - shift).exp();
                s += *v;
            }
            s
        }
        /// `x_i <- exp(x_i - shift) * scale`.
        fn exp_scale_inplace(x: &mut [Self], shift: Self, scale: Self) {
            for v in x.iter_mut() {
                *v = (*v - shift).exp() * scale;
            }
        }
        /// `x[r, j] <- x[r, j] + b[j]` for the rows of `x` (`b.len()` wide).
        fn add_rows(x: &mut [Self], b: &[Self]) {
            for row in x.chunks_exact_mut(b.len().max(1)) {
                for (v, &c) in row.iter_mut().zip(b) {
                    *v += c;
                }
            }
        }
        /// `x[r, j] <- gelu(x[r, j] + b[j])`.
        fn bias_gelu_inplace(x: &mut [Self], b: &[Self]) {
            for row in x.chunks_exact_mut(b.len().max(1)) {
                for (v, &c) in row.iter_mut().zip(b) {
                    *v = (*v + c).gelu();
                }
            }
        }
        /// `y_i <- gelu(x_i)`.
        fn gelu_into(x: &[Self], y: &mut [Self]) {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x.gelu();
            }
        }
        /// `x_i <- gelu(x_i)`.
        fn gelu_inplace(x: &mut [Self]) {
            for v in x.iter_mut() {
                *v = v.gelu();
            }
        }
        /// `y_i <- g_i gelu'(h_i)`.
        fn gelu_backward_into(g: &[Self], h: &[Self], y: &mut [Self]) {
            for ((y, &g), &h) in y.iter_mut().zip(g).zip(h) {
                *y = g * h.gelu_grad();
            }
        }
    }

    const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

    impl Float for f32 {
        fn neg_infinity() -> Self {
            f32::NEG_INFINITY
        }
        fn exp(self) -> Self {
            super::vmath::exp_f32(self)
        }
        fn ln(self) -> Self {
            f32::ln(self)
        }
        fn gelu(self) -> Self {
            super::vmath::gelu_f32(self)
        }
        fn gelu_grad(self) -> Self {
            super::vmath::gelu_grad_f32(self)
        }
        fn max_of(x: &[Self]) -> Self {
            super::vmath::max_of(x)
        }
        fn exp_sum(x: &[Self], shift: Self) -> Self {
            super::vmath::exp_sum(x, shift)
        }
        fn exp_inplace_sum(x: &mut [Self], shift: Self) -> Self {
            super::vmath::exp_inplace_sum(x, shift)
        }
        fn exp_scale_inplace(x: &mut [Self], shift: Self, scale: Self) {
            super::vmath::exp_scale_inplace(x, shift, scale)
        }
        fn add_rows(x: &mut [Self], b: &[Self]) {
            super::vmath::add_rows(x, b)
        }
        fn bias_gelu_inplace(x: &mut [Self], b: &[Self]) {
            super::vmath::bias_gelu_inplace(x, b)
        }
        fn gelu_into(x: &[Self], y: &mut [Self]) {
            super::vmath::gelu_into(x, y)
        }
        fn gelu_inplace(x: &mut [Self]) {
            super::vmath::gelu_inplace(x)
        }
        fn gelu_backward_into(g: &[Self], h: &[Self], y: &mut [Self]) {
            super::vmath::gelu_backward_into(g, h, y)
        }
    }

    impl Float for f64 {
        fn neg_infinity() -> Self {
            f64::NEG_INFINITY
        }
        fn exp(self) -> Self {
            f64::exp(self)
        }
        fn ln(self) -> Self {
            f64::ln(self)
        }
        fn gelu(self) -> Self {
            0.5 * self * (1.0 + libm::erf(self * std::f64::consts::FRAC_1_SQRT_2))
        }
        fn gelu_grad(self) -> Self {
            let cdf = 0.5 * (1.0 + libm::erf(self * std::f64::consts::FRAC_1_SQRT_2));
            cdf + self * (-0.5 * self * self).exp() * FRAC_1_SQRT_2PI
        }
    }
}

/// Shapes and data shared by the GEMM kernels' tests.
#[cfg(test)]
pub(crate) mod test_data {
    /// `(m, n, k)` that are not multiples of the tiles (1, 15, 17, 33, ...), on both sides of the
    /// parallel threshold.
    pub const ODD_SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (15, 17, 33),
        (17, 15, 1),
        (33, 49, 17),
        (8, 48, 64),
        (70, 100, 300),
        (3, 200, 31),
        (130, 35, 77),
        // 48-column groups leave two 16-column blocks: consecutive 12-row tall tiles
        (40, 80, 20),
        (2080, 64, 40),
        (150, 700, 90),
        (9, 900, 200),
        (40, 300, 701),
    ];

    /// Seconds per call of `f`: one warm-up call, then the best of 5 batches of `reps` calls (a
    /// shared VM's other tenants only ever slow a batch down). For the ignored speed tests.
    pub fn best_secs(reps: usize, f: &mut dyn FnMut()) -> f64 {
        f();
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    f();
                }
                t.elapsed().as_secs_f64() / reps as f64
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// `len` deterministic values in [-1, 1].
    pub fn data(len: usize, seed: u64) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1999) as f32 / 999.5) - 1.0)
            .collect()
    }
}

#[cfg(test)]
mod kernel_switch_tests {
    use super::*;

    #[test]
    fn with_kernels_selects_the_composed_path_on_this_thread_only() {
        let x = Tensor::zeros(4, DType::F32, &candle_core::Device::Cpu).unwrap();
        let before = use_kernel(&x);
        with_kernels(Kernels::Composed, || {
            assert!(!use_kernel(&x));
            let other = std::thread::spawn(kernels).join().unwrap();
            assert_eq!(other, process_kernels());
        });
        assert_eq!(use_kernel(&x), before);
        assert!(!use_kernel(&x.to_dtype(DType::BF16).unwrap()));
    }
}

#[cfg(test)]
mod fill_tests {
    use super::*;

    #[test]
    fn zeroed_and_repeat_rows_fill_every_element_on_both_sides_of_the_parallel_threshold() {
        for len in [0, 1, FILL_PAR_MIN - 1, FILL_PAR_MIN, FILL_PAR_MIN + 3 * FILL_CHUNK + 7] {
            let z: Vec<f32> = zeroed(len);
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|&v| v == 0.0), "len {len}");
        }
        // rows of odd widths, with chunks that are not a multiple of the width, and empty rows
        for (n, rows) in [(3, 5), (7, FILL_PAR_MIN / 7 + 11), (30522, 4), (1000, 300), (0, 9)] {
            let row: Vec<f32> = (0..n).map(|i| i as f32 - 0.5).collect();
            let v = repeat_rows(&row, rows);
            assert_eq!(v.len(), n * rows);
            assert!(v.chunks(n.max(1)).all(|r| r == &row[..]), "{n} x {rows}");
        }
    }
}
