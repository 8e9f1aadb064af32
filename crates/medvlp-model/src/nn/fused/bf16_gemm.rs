//! The GEMM of bf16 autocast on the CPU: `dst (+)= alpha * lhs * rhs` with both operands rounded
//! to bf16 (round to nearest even) and every product accumulated in f32, PyTorch's autocast
//! semantics. Two implementations, chosen at run time:
//!
//! - `avx512bf16`: operands packed as bf16 pairs along k, `vdpbf16ps` (two bf16 products per f32
//!   lane per instruction, twice the work of an fp32 FMA) in an 8-row x 48-column register tile;
//! - `rounded-fp32` on every other CPU: the operands are rounded to bf16 values held in f32 and
//!   the fp32 GEMM multiplies them; a bf16 x bf16 product is exact in f32, so the result differs
//!   from the bf16 kernel only by summation order.
//!
//! Written here because the `gemm` crate has no bf16-input/f32-accumulate kernel and candle's CPU
//! bf16 matmul widens to f32 after rounding the result too. AMX (`tdpbf16ps`) is not implemented.

use super::{Epilogue, Mat, SendPtr};
use rayon::prelude::*;

/// Which bf16 GEMM this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    Avx512Bf16,
    RoundedFp32,
}

impl Bf16Path {
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Bf16 => "avx512bf16",
            Self::RoundedFp32 => "rounded-fp32",
        }
    }
}

/// The path of this process: `MEDVLP_BF16_GEMM=rounded-fp32` forces the portable one (tests
/// compare the two).
pub fn path() -> Bf16Path {
    static P: std::sync::OnceLock<Bf16Path> = std::sync::OnceLock::new();
    *P.get_or_init(|| {
        let forced = std::env::var("MEDVLP_BF16_GEMM").ok();
        if forced.as_deref() != Some("rounded-fp32") && super::bf16::available() {
            Bf16Path::Avx512Bf16
        } else {
            Bf16Path::RoundedFp32
        }
    })
}

/// `x` rounded to the nearest bf16 (ties to even), as the upper 16 bits.
#[inline]
pub fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if x.is_nan() {
        return (b >> 16) | 0x40;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16
}

/// `x` rounded to bf16 precision, as an f32.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// Problems at least this large (m * n * k) are split over rayon's threads.
const PAR_MIN: usize = 1 << 20;

/// `dst[m, n] (+)= alpha * bf16(lhs)[m, k] * bf16(rhs)[k, n]` in f32, then the epilogue over
/// every row once (see [`super::gemm_then`]).
///
/// # Safety
/// As [`super::gemm`]: the views are valid for their extents and `dst` aliases neither operand.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<f32>,
    rhs: Mat<f32>,
    alpha: f32,
    parallel: bool,
    epilogue: Option<Epilogue>,
) {
    match path() {
        #[cfg(target_arch = "x86_64")]
        Bf16Path::Avx512Bf16 => {
            avx512::gemm(m, n, k, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel, epilogue)
        }
        _ => {
            rounded(m, n, k, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel);
            if let Some(epi) = epilogue {
                epi(0, m);
            }
        }
    }
}

/// A right operand packed once for [`gemm_bf16_packed`]: a frozen dense layer's `W^T` in inference,
/// where packing it on every call costs a few percent of the encoder's time.
pub struct PackedRhs {
    k: usize,
    n: usize,
    data: Vec<u32>,
}

impl PackedRhs {
    /// `rhs` (`[k, n]`) packed for this CPU's kernel; `None` on the portable path, which has no
    /// packed form.
    ///
    /// # Safety
    /// `rhs` is valid for its extent.
    pub(crate) unsafe fn new(rhs: Mat<f32>, k: usize, n: usize) -> Option<Self> {
        match path() {
            #[cfg(target_arch = "x86_64")]
            Bf16Path::Avx512Bf16 => Some(Self { k, n, data: avx512::pack(rhs, k, n) }),
            _ => None,
        }
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

/// [`gemm_bf16`] with a right operand packed by [`PackedRhs::new`] (the same products, bit for bit).
///
/// # Safety
/// As [`gemm_bf16`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_bf16_packed(
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
    #[cfg(target_arch = "x86_64")]
    avx512::gemm_packed(
        m, rhs.n, rhs.k, dst, dst_rs, accumulate, lhs, &rhs.data, alpha, parallel, epilogue,
    );
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel, epilogue);
        unreachable!("PackedRhs::new returns None off x86_64")
    }
}

/// Copies a strided view into a dense row-major `[rows, cols]` buffer of bf16-rounded values.
unsafe fn rounded_copy(a: Mat<f32>, rows: usize, cols: usize, parallel: bool) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    let a_ptr = SendPtr(a.ptr as *mut f32);
    let fill = |(i, row): (usize, &mut [f32])| {
        let p = a_ptr;
        for (j, v) in row.iter_mut().enumerate() {
            *v = round_bf16(*p.0.offset(i as isize * a.rs + j as isize * a.cs));
        }
    };
    if parallel && rows * cols >= PAR_MIN / 16 {
        out.par_chunks_mut(cols.max(1)).enumerate().for_each(fill);
    } else {
        out.chunks_mut(cols.max(1)).enumerate().for_each(fill);
    }
    out
}

#[allow(clippy::too_many_arguments)]
unsafe fn rounded(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<f32>,
    rhs: Mat<f32>,
    alpha: f32,
    parallel: bool,
) {
    let a = rounded_copy(lhs, m, k, parallel);
    let b = rounded_copy(rhs, k, n, parallel);
    super::gemm_crate(
        m,
        n,
        k,
        dst,
        dst_rs,
        accumulate,
        Mat::rows(a.as_ptr(), k),
        Mat::rows(b.as_ptr(), n),
        alpha,
        parallel,
    );
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{bf16_bits, Epilogue, Mat, SendPtr, PAR_MIN};
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// Rows and 16-column blocks of one register tile: 8 x 3 accumulators + 3 operands + 1 broadcast
    /// fit the 32 zmm registers.
    const MR: usize = 8;
    const NB: usize = 3;
    /// Rows per parallel task.
    const ROWS_PER_TASK: usize = 64;

    /// 32 floats from `p` (the first `n` of them; the rest read as 0) as 16 bf16 pairs.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    #[inline]
    unsafe fn cvt32(p: *const f32, n: usize) -> __m512i {
        let (m0, m1) = (mask16(n), mask16(n.saturating_sub(16)));
        let lo = _mm512_maskz_loadu_ps(m0, p);
        let hi = if m1 != 0 { _mm512_maskz_loadu_ps(m1, p.add(16)) } else { _mm512_setzero_ps() };
        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
    }

    /// 16 floats from `a` and 16 from `b` (the first `n` of each) as pairs `(a[l], b[l])`.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    #[inline]
    unsafe fn interleave(a: *const f32, b: Option<*const f32>, n: usize) -> __m512i {
        let m = mask16(n);
        let va = _mm512_maskz_loadu_ps(m, a);
        let vb = match b {
            Some(b) => _mm512_maskz_loadu_ps(m, b),
            None => _mm512_setzero_ps(),
        };
        // [a0..a15, b0..b15] as 16-bit values, then (a0, b0), (a1, b1), ...
        let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(vb, va));
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        _mm512_permutexvar_epi16(idx, v)
    }

    #[inline]
    fn mask16(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// Rows `i0..i0 + rows` of `lhs` as row-major pairs: pair `q` of row `r` at `out[r * kp + q]`,
    /// `(a[i, 2q], a[i, 2q + 1])` with the low half first. For rows contiguous along k this is a
    /// straight conversion; tiles read the rows at stride `kp`.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn pack_lhs_rows(a: Mat<f32>, i0: usize, rows: usize, k: usize, out: &mut [u32]) {
        let kp = k.div_ceil(2);
        for r in 0..rows {
            let i = (i0 + r) as isize;
            let dst = out.as_mut_ptr().add(r * kp);
            if a.cs == 1 {
                let base = a.ptr.offset(i * a.rs);
                for q in (0..kp).step_by(16) {
                    let v = cvt32(base.add(2 * q), k - 2 * q);
                    _mm512_mask_storeu_epi32(dst.add(q) as *mut _, mask16(kp - q), v);
                }
            } else {
                let at = |kk: usize| *a.ptr.offset(i * a.rs + kk as isize * a.cs);
                for q in 0..kp {
                    let lo = bf16_bits(at(2 * q));
                    let hi = if 2 * q + 1 < k { bf16_bits(at(2 * q + 1)) } else { 0 };
                    *dst.add(q) = lo | (hi << 16);
                }
            }
        }
    }

    /// Rows `i0..i0 + m` of a transposed view (`rs == 1`) as panels of [`MR`] rows: pair `q` of
    /// row `r` at `out[(r / MR) * kp * MR + q * MR + r % MR]`. 16 rows (two panels) at a time
    /// from two source rows, each panel's 8 pairs one contiguous store.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn pack_lhs_t(a: Mat<f32>, i0: usize, m: usize, k: usize, out: &mut [u32]) {
        let kp = k.div_ceil(2);
        let a0 = a.ptr.add(i0);
        for q in 0..kp {
            let r0 = a0.offset((2 * q) as isize * a.cs);
            let r1 = (2 * q + 1 < k).then(|| a0.offset((2 * q + 1) as isize * a.cs));
            for i in (0..m).step_by(16) {
                let n = (m - i).min(16);
                let v = interleave(r0.add(i), r1.map(|p| p.add(i)), n);
                let p0 = i / MR;
                let lo = _mm512_castsi512_si256(v);
                _mm256_storeu_si256(out.as_mut_ptr().add((p0 * kp + q) * MR) as *mut _, lo);
                if n > MR {
                    let hi = _mm512_extracti64x4_epi64::<1>(v);
                    _mm256_storeu_si256(
                        out.as_mut_ptr().add(((p0 + 1) * kp + q) * MR) as *mut _,
                        hi,
                    );
                }
            }
        }
    }

    /// Rows `i0..i0 + rows` of `lhs` packed into `out` (row `r`'s first pair at `out[r * kp]` in
    /// both layouts, for `r` a multiple of [`MR`]); returns how a tile reads them.
    unsafe fn pack_lhs_range(
        a: Mat<f32>,
        i0: usize,
        rows: usize,
        k: usize,
        out: &mut Vec<u32>,
    ) -> ALayout {
        let kp = k.div_ceil(2);
        sized(out, rows.div_ceil(MR) * kp * MR);
        if a.rs == 1 && a.cs != 1 {
            pack_lhs_t(a, i0, rows, k, out);
            ALayout { qs: MR, rs: 1 }
        } else {
            pack_lhs_rows(a, i0, rows, k, out);
            ALayout { qs: 1, rs: kp }
        }
    }

    /// Pairs `q0..q1` of a `rhs` whose rows are contiguous (`cs == 1`) into every block of `out`
    /// (laid out as [`pack_rhs_blocks`]): two source rows give 16 pairs per block at once. Reads
    /// the rows in order; packing block by block instead walked all of k once per 16 columns, at
    /// a stride the prefetcher did not follow (a third of the packing time was load stalls).
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn pack_rhs_rows(b: Mat<f32>, q0: usize, q1: usize, k: usize, n: usize, out: *mut u32) {
        let kp = k.div_ceil(2);
        for q in q0..q1 {
            let r0 = b.ptr.offset((2 * q) as isize * b.rs);
            let r1 = (2 * q + 1 < k).then(|| b.ptr.offset((2 * q + 1) as isize * b.rs));
            for jb in 0..n.div_ceil(16) {
                let j0 = jb * 16;
                let v = interleave(r0.add(j0), r1.map(|p| p.add(j0)), (n - j0).min(16));
                _mm512_storeu_si512(out.add((jb * kp + q) * 16) as *mut _, v);
            }
        }
    }

    /// Transposes 16 x 16 32-bit elements: `v[l][t] <- v[t][l]`. Four stages, one per index bit
    /// `s`: rows `l` and `l + s` (bit `s` of `l` clear) exchange their elements whose column has
    /// bit `s` set and clear respectively, which swaps bit `s` between row and column.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn transpose16(v: &mut [__m512i; 16]) {
        for s in [8usize, 4, 2, 1] {
            let mut lo = [0i32; 16];
            let mut hi = [0i32; 16];
            for t in 0..16 {
                // index 16 + i picks element i of the second operand
                (lo[t], hi[t]) = if t & s == 0 {
                    (t as i32, (t + s) as i32)
                } else {
                    ((16 + t - s) as i32, (16 + t) as i32)
                };
            }
            let (lo, hi) = (
                _mm512_loadu_si512(lo.as_ptr() as *const _),
                _mm512_loadu_si512(hi.as_ptr() as *const _),
            );
            for l in (0..16).filter(|l| l & s == 0) {
                let (a, b) = (v[l], v[l + s]);
                v[l] = _mm512_permutex2var_epi32(a, lo, b);
                v[l + s] = _mm512_permutex2var_epi32(a, hi, b);
            }
        }
    }

    /// Blocks `jb0..` of `rhs` as `[16-column block][kp][16]` pairs `(b[2p, j], b[2p + 1, j])`.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn pack_rhs_blocks(b: Mat<f32>, jb0: usize, blocks: &mut [u32], k: usize, n: usize) {
        let kp = k.div_ceil(2);
        for (bi, blk) in blocks.chunks_mut((kp * 16).max(1)).enumerate() {
            let j0 = (jb0 + bi) * 16;
            let w = (n - j0).min(16);
            if b.rs == 1 {
                // Columns of b are contiguous along k (a transposed weight, K^T): column j's
                // pairs for 16 consecutive p are one conversion of its 32 floats. Convert 16
                // columns, transpose the 16 x 16 pairs in registers, store one row of 16 pairs
                // per p. (A 64-bit gather per pair took 3x as long.)
                let mut v = [_mm512_setzero_si512(); 16];
                for q0 in (0..kp).step_by(16) {
                    for (l, v) in v.iter_mut().enumerate() {
                        *v = if l < w {
                            cvt32(
                                b.ptr.offset((j0 + l) as isize * b.cs + 2 * q0 as isize),
                                k - 2 * q0,
                            )
                        } else {
                            _mm512_setzero_si512() // columns past n
                        };
                    }
                    transpose16(&mut v);
                    for (t, v) in v.iter().enumerate().take(kp - q0) {
                        _mm512_storeu_si512(blk.as_mut_ptr().add((q0 + t) * 16) as *mut _, *v);
                    }
                }
            } else {
                blk.fill(0);
                let at =
                    |kk: usize, j: usize| *b.ptr.offset(kk as isize * b.rs + j as isize * b.cs);
                for l in 0..w {
                    for q in 0..kp {
                        let lo = bf16_bits(at(2 * q, j0 + l));
                        let hi = if 2 * q + 1 < k { bf16_bits(at(2 * q + 1, j0 + l)) } else { 0 };
                        blk[q * 16 + l] = lo | (hi << 16);
                    }
                }
            }
        }
    }

    unsafe fn pack_rhs(b: Mat<f32>, k: usize, n: usize, parallel: bool, out: &mut Vec<u32>) {
        let kp = k.div_ceil(2);
        let nb = n.div_ceil(16);
        sized(out, nb * kp * 16);
        if b.cs == 1 {
            if parallel && n * k >= PAR_MIN / 16 {
                let (bp, op) = (SendPtr(b.ptr as *mut f32), SendPtr(out.as_mut_ptr()));
                let per = kp.div_ceil(rayon::current_num_threads() * 4).max(8);
                (0..kp.div_ceil(per)).into_par_iter().for_each(|t| {
                    // Capture the whole wrappers (Send), not their raw-pointer fields.
                    #[allow(clippy::redundant_locals)]
                    let (bp, op) = (bp, op);
                    let b = Mat { ptr: bp.0 as *const f32, rs: b.rs, cs: 1 };
                    pack_rhs_rows(b, t * per, ((t + 1) * per).min(kp), k, n, op.0);
                });
            } else {
                pack_rhs_rows(b, 0, kp, k, n, out.as_mut_ptr());
            }
        } else if parallel && n * k >= PAR_MIN / 16 {
            let bp = SendPtr(b.ptr as *mut f32);
            out.par_chunks_mut((kp * 16).max(1)).enumerate().for_each(|(jb, blk)| {
                let p = bp;
                let b = Mat { ptr: p.0 as *const f32, rs: b.rs, cs: b.cs };
                pack_rhs_blocks(b, jb, blk, k, n)
            });
        } else {
            pack_rhs_blocks(b, 0, out, k, n);
        }
    }

    /// `v` with `len` elements: the packers write every element, so a reused buffer is not cleared.
    fn sized(v: &mut Vec<u32>, len: usize) {
        if v.len() < len {
            v.resize(len, 0);
        } else {
            v.truncate(len);
        }
    }

    thread_local! {
        /// Packing buffers reused across calls (the attention kernel makes many small products).
        static BUFS: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        /// A row task's packed rows of the left operand (on rayon's worker threads).
        static TASK_A: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Where a tile finds its rows' pairs: pair `q` of row `r` is `a[q * qs + r * rs]`.
    #[derive(Clone, Copy)]
    struct ALayout {
        qs: usize,
        rs: usize,
    }

    /// One `R x (C * 16)` tile over all of k, written to `dst` (columns clipped at `n`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const C: usize>(
        a: *const u32,
        al: ALayout,
        b: *const u32,
        kp: usize,
        dst: *mut f32,
        dst_rs: usize,
        cols: usize,
        accumulate: bool,
        alpha: f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for q in 0..kp {
            let mut bv = [_mm512_setzero_si512(); C];
            for (c, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(b.add((c * kp + q) * 16) as *const _);
            }
            for (r, ar) in acc.iter_mut().enumerate() {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(q * al.qs + r * al.rs) as i32));
                for c in 0..C {
                    ar[c] =
                        _mm512_dpbf16_ps(ar[c], x, std::mem::transmute::<__m512i, __m512bh>(bv[c]));
                }
            }
        }
        let al = _mm512_set1_ps(alpha);
        for (r, ar) in acc.iter().enumerate() {
            for (c, v) in ar.iter().enumerate() {
                let j0 = c * 16;
                if j0 >= cols {
                    break;
                }
                let w = (cols - j0).min(16);
                let mask: __mmask16 = if w == 16 { 0xffff } else { (1u16 << w) - 1 };
                let p = dst.add(r * dst_rs + j0);
                let mut y = _mm512_mul_ps(*v, al);
                if accumulate {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, p));
                }
                _mm512_mask_storeu_ps(p, mask, y);
            }
        }
    }

    /// Dispatches a tile of `rows <= MR` and `blocks <= NB` to its monomorphised kernel.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_any(
        rows: usize,
        blocks: usize,
        a: *const u32,
        al: ALayout,
        b: *const u32,
        kp: usize,
        dst: *mut f32,
        dst_rs: usize,
        cols: usize,
        accumulate: bool,
        alpha: f32,
    ) {
        macro_rules! go {
            ($r:literal, $c:literal) => {
                tile::<$r, $c>(a, al, b, kp, dst, dst_rs, cols, accumulate, alpha)
            };
        }
        macro_rules! rows {
            ($c:literal) => {
                match rows {
                    8 => go!(8, $c),
                    7 => go!(7, $c),
                    6 => go!(6, $c),
                    5 => go!(5, $c),
                    4 => go!(4, $c),
                    3 => go!(3, $c),
                    2 => go!(2, $c),
                    _ => go!(1, $c),
                }
            };
        }
        match blocks {
            3 => rows!(3),
            2 => rows!(2),
            _ => rows!(1),
        }
    }

    /// Rows `r0..r0 + nr` of the result, every column.
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_task(
        ap: &[u32],
        al: ALayout,
        bp: &[u32],
        kp: usize,
        n: usize,
        r0: usize,
        nr: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        alpha: f32,
    ) {
        let blocks = n.div_ceil(16);
        let mut jb = 0;
        while jb < blocks {
            let nb = (blocks - jb).min(NB);
            let cols = (n - jb * 16).min(nb * 16);
            let mut r = r0;
            while r < r0 + nr {
                let rows = (r0 + nr - r).min(MR);
                tile_any(
                    rows,
                    nb,
                    // r is a multiple of MR: a panel boundary in the panel layout
                    ap.as_ptr().add(r * kp),
                    al,
                    bp.as_ptr().add(jb * kp * 16),
                    kp,
                    dst.add(r * dst_rs + jb * 16),
                    dst_rs,
                    cols,
                    accumulate,
                    alpha,
                );
                r += rows;
            }
            jb += nb;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        lhs: Mat<f32>,
        rhs: Mat<f32>,
        alpha: f32,
        parallel: bool,
        epilogue: Option<Epilogue>,
    ) {
        let par = parallel && m * n * k >= PAR_MIN && rayon::current_num_threads() > 1;
        let mut bp = BUFS.with(|b| std::mem::take(&mut b.borrow_mut().1));
        pack_rhs(rhs, k, n, par, &mut bp);
        gemm_packed(m, n, k, dst, dst_rs, accumulate, lhs, &bp, alpha, parallel, epilogue);
        BUFS.with(|b| b.borrow_mut().1 = bp);
    }

    /// `rhs` packed as [`gemm`] packs it.
    pub(super) unsafe fn pack(rhs: Mat<f32>, k: usize, n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        pack_rhs(rhs, k, n, true, &mut out);
        out
    }

    /// [`gemm`] with the right operand already packed.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_packed(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        lhs: Mat<f32>,
        bp: &[u32],
        alpha: f32,
        parallel: bool,
        epilogue: Option<Epilogue>,
    ) {
        let par = parallel && m * n * k >= PAR_MIN && rayon::current_num_threads() > 1;
        let mut ap = BUFS.with(|b| std::mem::take(&mut b.borrow_mut().0));
        compute(lhs, &mut ap, bp, m, n, k, dst, dst_rs, accumulate, alpha, par, epilogue);
        BUFS.with(|b| b.borrow_mut().0 = ap);
    }

    /// Packs the rows of `lhs` and multiplies them with the packed `bp`. Split over rows, each
    /// task packs its own rows just before using them (they stay in cache, and packing runs in
    /// parallel with no separate pass); with few rows, the columns are split instead.
    #[allow(clippy::too_many_arguments)]
    unsafe fn compute(
        lhs: Mat<f32>,
        ap: &mut Vec<u32>,
        bp: &[u32],
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        alpha: f32,
        par: bool,
        epilogue: Option<Epilogue>,
    ) {
        let kp = k.div_ceil(2);
        let d = SendPtr(dst);
        if par && m >= 2 * MR {
            let threads = rayon::current_num_threads();
            let per = m.div_ceil(threads * 2).next_multiple_of(MR).clamp(MR, ROWS_PER_TASK);
            let a = SendPtr(lhs.ptr as *mut f32);
            let (rs, cs) = (lhs.rs, lhs.cs);
            (0..m.div_ceil(per)).into_par_iter().for_each(|t| {
                // Capture the whole wrappers (Send), not their raw-pointer fields (edition 2021).
                #[allow(clippy::redundant_locals)]
                let (d, a) = (d, a);
                let r0 = t * per;
                let rows = per.min(m - r0);
                TASK_A.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    let lhs = Mat { ptr: a.0 as *const f32, rs, cs };
                    let al = pack_lhs_range(lhs, r0, rows, k, &mut buf);
                    let out = d.0.add(r0 * dst_rs);
                    rows_task(&buf, al, bp, kp, n, 0, rows, out, dst_rs, accumulate, alpha);
                });
                if let Some(epi) = epilogue {
                    epi(r0, rows);
                }
            });
        } else {
            let al = pack_lhs_range(lhs, 0, m, k, ap);
            if par {
                // Few rows: split the columns (whole 48-column groups) instead.
                let group = 16 * NB;
                let ap = &ap[..];
                (0..n.div_ceil(group)).into_par_iter().for_each(|g| {
                    // Capture the whole wrapper (Send), not its raw-pointer field (edition 2021).
                    #[allow(clippy::redundant_locals)]
                    let d = d;
                    let j0 = g * group;
                    let cols = group.min(n - j0);
                    rows_task(
                        ap,
                        al,
                        &bp[j0 * kp..],
                        kp,
                        cols,
                        0,
                        m,
                        d.0.add(j0),
                        dst_rs,
                        accumulate,
                        alpha,
                    );
                });
            } else {
                rows_task(ap, al, bp, kp, n, 0, m, dst, dst_rs, accumulate, alpha);
            }
            if let Some(epi) = epilogue {
                epi(0, m);
            }
        }
    }

    #[cfg(test)]
    #[test]
    #[ignore]
    fn bf16_gemm_parts() {
        for &(m, n, k) in &[(2080usize, 1024usize, 256usize), (2080, 256, 1024), (2080, 256, 256)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut c = vec![0f32; m * n];
            let lhs = Mat::rows(a.as_ptr(), k);
            let rhs = Mat::rows(b.as_ptr(), k).t();
            let (mut ap, mut bp) = (Vec::new(), Vec::new());
            let reps = 20;
            let mut t = [0f64; 2];
            for rep in 0..reps + 1 {
                let t1 = std::time::Instant::now();
                unsafe { pack_rhs(rhs, k, n, true, &mut bp) };
                let t2 = std::time::Instant::now();
                unsafe {
                    compute(lhs, &mut ap, &bp, m, n, k, c.as_mut_ptr(), n, false, 1.0, true, None)
                };
                let t3 = std::time::Instant::now();
                if rep > 0 {
                    t[0] += (t2 - t1).as_secs_f64();
                    t[1] += (t3 - t2).as_secs_f64();
                }
            }
            let flops = 2.0 * (m * n * k) as f64;
            println!(
                "{m}x{n}x{k}: pack rhs {:.3} ms, pack lhs + compute {:.3} ms ({:.1} GFLOP/s)",
                t[0] / reps as f64 * 1e3,
                t[1] / reps as f64 * 1e3,
                flops / (t[1] / reps as f64) / 1e9
            );
        }
    }

    /// Single-thread ceiling of one 8x48 tile on L1-resident packed data:
    /// `cargo test --release -p medvlp-model --lib bf16_tile_ceiling -- --ignored --nocapture`
    #[cfg(test)]
    #[test]
    #[ignore]
    fn bf16_tile_ceiling() {
        if !super::super::bf16::available() {
            return;
        }
        for kp in [32usize, 128, 512] {
            let a = vec![0x3f80_3f80u32; kp * MR];
            let b = vec![0x3f80_3f80u32; kp * 16 * NB];
            let mut c = vec![0f32; MR * 48];
            let reps = 2_000_000 / kp;
            for (name, al) in
                [("panels", ALayout { qs: MR, rs: 1 }), ("rows", ALayout { qs: 1, rs: kp })]
            {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    unsafe {
                        tile::<8, 3>(
                            a.as_ptr(),
                            al,
                            b.as_ptr(),
                            kp,
                            c.as_mut_ptr(),
                            48,
                            48,
                            true,
                            1.0,
                        )
                    };
                }
                let s = t.elapsed().as_secs_f64();
                let flops = 2.0 * (MR * 48 * 2 * kp) as f64 * reps as f64;
                println!("tile 8x48 kp {kp} {name}: {:.1} GFLOP/s single thread", flops / s / 1e9);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 reference of `alpha * bf16(a) bf16(b)` (+ dst).
    fn reference(
        a: &[f32],
        b: &[f32],
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        dst: &[f32],
    ) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| round_bf16(a[i * k + p]) as f64 * round_bf16(b[p * n + j]) as f64)
                    .sum();
                y[i * n + j] = alpha as f64 * s + dst[i * n + j] as f64;
            }
        }
        y
    }

    fn data(len: usize, seed: u64) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1999) as f32 / 999.5) - 1.0)
            .collect()
    }

    fn check(
        p: Bf16Path,
        m: usize,
        n: usize,
        k: usize,
        transposed: bool,
        accumulate: bool,
        lhs_t: bool,
    ) {
        let a = data(m * k, 1);
        let b = data(k * n, 2);
        let init = data(m * n, 3);
        let mut dst = if accumulate { init.clone() } else { vec![0f32; m * n] };
        // b given as [n, k] read through a transposed view when asked (the weight layout).
        let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
        let rhs = if transposed { Mat::rows(bt.as_ptr(), k).t() } else { Mat::rows(b.as_ptr(), n) };
        // a given as [k, m] read through a transposed view when asked (dW = g^T x).
        let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
        unsafe {
            let lhs = if lhs_t { Mat::rows(at.as_ptr(), m).t() } else { Mat::rows(a.as_ptr(), k) };
            match p {
                #[cfg(target_arch = "x86_64")]
                Bf16Path::Avx512Bf16 => avx512::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    n,
                    accumulate,
                    lhs,
                    rhs,
                    0.5,
                    true,
                    None,
                ),
                _ => rounded(m, n, k, dst.as_mut_ptr(), n, accumulate, lhs, rhs, 0.5, true),
            }
        }
        let zero = vec![0f32; m * n];
        let want = reference(&a, &b, m, n, k, 0.5, if accumulate { &init } else { &zero });
        for (i, (g, w)) in dst.iter().zip(&want).enumerate() {
            // f32 accumulation of exact products: relative to the sum of magnitudes.
            let scale: f64 = (0..k)
                .map(|p| (a[(i / n) * k + p] as f64 * b[p * n + i % n] as f64).abs())
                .sum::<f64>()
                * 0.5
                + 1.0;
            assert!((*g as f64 - w).abs() <= 2e-6 * scale, "{p:?} {m}x{n}x{k} ({i}): {g} vs {w}");
        }
    }

    #[test]
    fn bf16_gemm_equals_the_f64_reference_on_odd_shapes() {
        let mut paths = vec![Bf16Path::RoundedFp32];
        if super::super::bf16::available() {
            paths.push(Bf16Path::Avx512Bf16);
        } else {
            println!("not tested here: the avx512bf16 path (this CPU lacks AVX-512 BF16)");
        }
        println!("not tested here: AMX (not implemented)");
        for p in paths {
            for &(m, n, k) in &[
                (1, 1, 1),
                (15, 17, 33),
                (17, 15, 1),
                (33, 49, 17),
                (8, 48, 64),
                (70, 100, 300),
                (3, 200, 31),
                (130, 35, 77),
                (2080, 64, 40),
                (150, 700, 90),
                (9, 900, 200),
                (40, 300, 701),
            ] {
                for transposed in [false, true] {
                    for accumulate in [false, true] {
                        for lhs_t in [false, true] {
                            check(p, m, n, k, transposed, accumulate, lhs_t);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even mantissa (1.0).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p medvlp-model --lib bf16_gemm_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bf16_gemm_speed() {
        for &(m, n, k, tb) in &[
            (2080, 1024, 256, true),
            (2080, 256, 1024, true),
            (256, 1024, 2080, false),
            (2080, 256, 256, true),
            (65, 65, 64, true),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut c = vec![0f32; m * n];
            let rhs = if tb { Mat::rows(b.as_ptr(), k).t() } else { Mat::rows(b.as_ptr(), n) };
            let lhs = if tb { Mat::rows(a.as_ptr(), k) } else { Mat::rows(a.as_ptr(), m).t() };
            let flops = 2.0 * (m * n * k) as f64;
            for (name, f) in [("fp32", 0), ("bf16", 1), ("rounded", 2)] {
                let reps = if m * n * k < 1 << 20 { 200 } else { 5 };
                let mut t = std::time::Instant::now();
                for rep in 0..reps + 1 {
                    if rep == 1 {
                        t = std::time::Instant::now(); // the first call warms buffers up
                    }
                    unsafe {
                        match f {
                            0 => super::super::gemm_crate(
                                m,
                                n,
                                k,
                                c.as_mut_ptr(),
                                n,
                                false,
                                lhs,
                                rhs,
                                1.0,
                                true,
                            ),
                            1 => gemm_bf16(
                                m,
                                n,
                                k,
                                c.as_mut_ptr(),
                                n,
                                false,
                                lhs,
                                rhs,
                                1.0,
                                true,
                                None,
                            ),
                            _ => rounded(m, n, k, c.as_mut_ptr(), n, false, lhs, rhs, 1.0, true),
                        }
                    }
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "{m}x{n}x{k} {}: {name} {:.2} ms, {:.1} GFLOP/s",
                    if tb { "rhs^T" } else { "lhs^T" },
                    s * 1e3,
                    flops / s / 1e9
                );
            }
        }
    }
}
