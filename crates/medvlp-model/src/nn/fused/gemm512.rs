//! AVX-512 GEMM: `dst (+)= alpha * lhs * rhs` with f32 accumulators in register tiles of 8 rows x
//! 48 columns over packed operands, then an epilogue per row task. One driver (packing, tiling,
//! threading) and three operand formats ([`Format`]):
//!
//! - [`F32`]: fp32 operands and `vfmadd231ps` (inference's dense layers off AMD, see
//!   [`super::f32_path`]);
//! - [`F32Rounded`]: the same kernel on operands rounded to bf16 while they are packed, for bf16
//!   autocast where `vdpbf16ps` is no faster than two FMAs (a bf16 x bf16 product is exact in f32,
//!   so this differs from [`Bf16Pairs`] only by summation order);
//! - [`Bf16Pairs`]: operands as bf16 pairs along k and `vdpbf16ps` (two products per f32 lane).
//!
//! A fourth format, `gemm256::F32Avx2`, runs the same driver with AVX2 strips on CPUs
//! without AVX-512.
//!
//! Written here because the `gemm` crate has no bf16-input/f32-accumulate kernel, and a bf16
//! GEMM that rounds its operands while packing them needs its own packing and tiles. Every output
//! element is one tile's sum over k in a fixed order (blocks of [`KC`]), so results do not depend
//! on the number of threads.
//!
//! Tile ceilings on one core (`gemm512_tile_ceiling`): Intel Xeon family 6 model 207, 172 GFLOP/s
//! fp32 (two FMA ports) and 86 with `vdpbf16ps`; AMD Zen 4, about 230 with `vdpbf16ps`.

use super::{Epilogue, Mat, SendPtr};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows and 16-column blocks of one register tile: 8 x 3 accumulators + 3 operands + 1 broadcast
/// fit the 32 zmm registers.
const MR: usize = 8;
const NB: usize = 3;
/// Rows per parallel task: a multiple of every tile height (8, and the tall tiles' 24 and 12, see
/// [`tall_rows`]), so that a task is whole tiles. 64-row tasks ended in 16 rows of 8-row tiles
/// wherever a width leaves one 16-column block (256, 1024). Encoding the reference model,
/// alternating runs, 2-core Xeon (family 6, model 207): 544 -> 555 images/s median (8 pairs),
/// 551 -> 558 (12 pairs), later on a quieter host 577 -> 580 (12 pairs, 9 faster); bf16 540 ->
/// 560 (6 pairs, 5 faster); the training step unchanged.
const ROWS_PER_TASK: usize = 48;
/// Rows per step of a serial product with many rows (each step streams all of the packed right
/// operand once; the split weight gradients' parts were measured with 64).
const SERIAL_ROWS: usize = 64;
/// Packed elements of k per block: a 48-column panel of the right operand is 24 KiB, half an L1.
const KC: usize = 128;
/// Problems at least this large (m * n * k) are split over rayon's threads.
pub(super) const PAR_MIN: usize = 1 << 20;
/// Source rows per pass of the f32 packers whose source rows run along m or n (a weight
/// gradient's operands): each pass writes a run of this many rows into one panel before moving
/// to the next. Row by row, every source row scattered 32 or 64 bytes into each of up to 64
/// panels whose addresses are multiples of 4 KiB apart plus a constant, so the stores kept
/// evicting each other from L1. Intel Xeon model 207, one core, 3 runs of `gemm512_dw_breakdown`
/// each: packing `x` (2048 x 1024) 1.00-1.14 -> 0.79-0.84 ms, `g^T` (2048 x 256) 0.34-0.39 ->
/// 0.24-0.27 ms.
const PACK_ROWS: usize = 16;

/// Where a tile finds its rows' packed elements: element `q` of row `r` is `a[q * qs + r * rs]`,
/// and the tile starting at row `r` (a multiple of [`MR`]) at `a[r * panel]`.
#[derive(Clone, Copy)]
pub(super) struct ALayout {
    qs: usize,
    rs: usize,
    panel: usize,
}

impl ALayout {
    /// Rows of packed elements `ld` apart, each contiguous along k.
    pub(super) fn rows(ld: usize) -> Self {
        Self { qs: 1, rs: ld, panel: ld }
    }

    /// Elements between consecutive k of one row.
    #[inline(always)]
    pub(super) fn qs(&self) -> usize {
        self.qs
    }

    /// Where row `r` of a tile starts, relative to the tile's first row: a tall tile
    /// ([`tile_tall`]) spans several [`MR`]-row panels. Constant for a tile's unrolled rows.
    #[inline(always)]
    pub(super) fn row(&self, r: usize) -> usize {
        (r / MR) * MR * self.panel + (r % MR) * self.rs
    }
}

/// An operand format: how k is packed into 32-bit elements and the tile that multiplies them.
pub(super) trait Format: Sync {
    /// k values per packed element: 2 for bf16 pairs, 1 for f32.
    const PER: usize;
    /// Rows of a tile [`NB`] blocks wide (the driver's step down a task's rows below the tall
    /// tiles): [`MR`], or fewer for tiles that keep fewer accumulators in registers.
    const TILE_ROWS: usize = MR;
    /// Packs rows `i0..i0 + rows` of `lhs` into `out` (or reads them in place) and says where a
    /// tile finds them.
    unsafe fn lhs(a: Mat<f32>, i0: usize, rows: usize, k: usize, out: &mut Vec<u32>) -> LhsRef;
    /// Packed elements `q0..q1` of a `rhs` whose rows are contiguous (`cs == 1`) into every
    /// 16-column block of `out` (`[block][kp][16]`).
    unsafe fn pack_rhs_rows(b: Mat<f32>, q0: usize, q1: usize, k: usize, n: usize, out: *mut u32);
    /// Blocks `jb0..` of any `rhs` into `blocks` (`[block][kp][16]`).
    unsafe fn pack_rhs_blocks(b: Mat<f32>, jb0: usize, blocks: &mut [u32], k: usize, n: usize);
    /// One `R x (C * 16)` tile over `kn` packed elements of k, written to `dst` (columns clipped
    /// at `cols`); block `c` of `b` starts at `b + c * bs * 16`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const C: usize>(
        a: *const u32,
        al: ALayout,
        b: *const u32,
        bs: usize,
        kn: usize,
        dst: *mut f32,
        dst_rs: usize,
        cols: usize,
        accumulate: bool,
        alpha: f32,
    );
}

/// A task's left operand: its first row and how the tiles read it.
pub(super) struct LhsRef {
    ptr: *const u32,
    al: ALayout,
}

impl LhsRef {
    pub(super) fn new(ptr: *const u32, al: ALayout) -> Self {
        Self { ptr, al }
    }
}

#[inline]
pub(super) fn mask16(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// `v` with `len` elements: the packers write every element, so a reused buffer is not cleared.
pub(super) fn sized(v: &mut Vec<u32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0);
    } else {
        v.truncate(len);
    }
}

/// Transposes 16 x 16 32-bit elements: `v[l][t] <- v[t][l]`. Four stages, one per index bit
/// `s`: rows `l` and `l + s` (bit `s` of `l` clear) exchange their elements whose column has
/// bit `s` set and clear respectively, which swaps bit `s` between row and column. Constant
/// index vectors and one const-generic function per stage keep all 16 rows in registers (with
/// indices built at run time the rows went through the stack: the transposes took 20% as long as
/// attention's per-head products).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn transpose16(v: &mut [__m512i; 16]) {
    transpose_stage::<8>(v);
    transpose_stage::<4>(v);
    transpose_stage::<2>(v);
    transpose_stage::<1>(v);
}

/// `[lo, hi]` permutation indices of [`transpose16`]'s stage `s` (index 16 + i picks element i
/// of the second operand).
const fn transpose_indices(s: usize) -> [[i32; 16]; 2] {
    let mut out = [[0i32; 16]; 2];
    let mut t = 0;
    while t < 16 {
        (out[0][t], out[1][t]) = if t & s == 0 {
            (t as i32, (t + s) as i32)
        } else {
            ((16 + t - s) as i32, (16 + t) as i32)
        };
        t += 1;
    }
    out
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose_stage<const S: usize>(v: &mut [__m512i; 16]) {
    let idx = const { transpose_indices(S) };
    let lo = _mm512_loadu_si512(idx[0].as_ptr() as *const _);
    let hi = _mm512_loadu_si512(idx[1].as_ptr() as *const _);
    for l in 0..16 {
        if l & S == 0 {
            let (a, b) = (v[l], v[l + S]);
            v[l] = _mm512_permutex2var_epi32(a, lo, b);
            v[l + S] = _mm512_permutex2var_epi32(a, hi, b);
        }
    }
}

/// One 16-column block of a `rhs` whose columns are contiguous along k (`rs == 1`, a transposed
/// weight) into `blk` (`[kp][16]`): `load(column, q0)` gives a column's 16 packed elements from
/// `q0` on; 16 columns are transposed in registers and stored as one row of 16 per element (a
/// gather per element took 3x as long). Columns from `w` on are zero.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn pack_columns(
    b: Mat<f32>,
    j0: usize,
    w: usize,
    kp: usize,
    blk: &mut [u32],
    load: impl Fn(*const f32, usize) -> __m512i,
) {
    let mut v = [_mm512_setzero_si512(); 16];
    for q0 in (0..kp).step_by(16) {
        for (l, v) in v.iter_mut().enumerate() {
            *v = if l < w {
                load(b.ptr.offset((j0 + l) as isize * b.cs), q0)
            } else {
                _mm512_setzero_si512()
            };
        }
        transpose16(&mut v);
        // constant indices keep `v` in registers
        #[allow(clippy::needless_range_loop)]
        for t in 0..16 {
            if q0 + t < kp {
                _mm512_storeu_si512(blk.as_mut_ptr().add((q0 + t) * 16) as *mut _, v[t]);
            }
        }
    }
}

/// Writes `alpha * acc` (+ `dst`) for an `R x (C * 16)` tile, columns clipped at `cols`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store_tile<const R: usize, const C: usize>(
    acc: &[[__m512; C]; R],
    dst: *mut f32,
    dst_rs: usize,
    cols: usize,
    accumulate: bool,
    alpha: f32,
) {
    let al = _mm512_set1_ps(alpha);
    for (r, ar) in acc.iter().enumerate() {
        for (c, v) in ar.iter().enumerate() {
            let j0 = c * 16;
            if j0 >= cols {
                break;
            }
            let mask = mask16(cols - j0);
            let p = dst.add(r * dst_rs + j0);
            let mut y = _mm512_mul_ps(*v, al);
            if accumulate {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, p));
            }
            _mm512_mask_storeu_ps(p, mask, y);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// f32 formats

/// fp32 operands, FMA tiles.
pub(super) struct F32;
/// fp32 tiles on operands rounded to bf16 while packing (bf16 autocast semantics).
pub(super) struct F32Rounded;

/// 16 floats rounded to the nearest bf16 (ties to even), NaN kept quiet; as
/// [`super::bf16_gemm::round_bf16`].
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn round16(x: __m512) -> __m512 {
    let b = _mm512_castps_si512(x);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let r = _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    let r = _mm512_and_si512(r, _mm512_set1_epi32(-65536));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let q = _mm512_and_si512(
        _mm512_or_si512(b, _mm512_set1_epi32(0x0040_0000)),
        _mm512_set1_epi32(-65536),
    );
    _mm512_castsi512_ps(_mm512_mask_blend_epi32(nan, r, q))
}

/// Up to 16 floats from `p` (the rest read as 0), rounded when `ROUND`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load16<const ROUND: bool>(p: *const f32, n: usize) -> __m512 {
    let v = _mm512_maskz_loadu_ps(mask16(n), p);
    if ROUND {
        round16(v)
    } else {
        v
    }
}

/// Rows `i0..i0 + rows` of `lhs`: rows contiguous along k (`cs == 1`) copied row-major (`out[r * k
/// + q]`), any other strides as panels of [`MR`] rows (the layout of [`f32_lhs_t`]).
#[target_feature(enable = "avx512f")]
unsafe fn f32_lhs_rows<const ROUND: bool>(
    a: Mat<f32>,
    i0: usize,
    rows: usize,
    k: usize,
    out: &mut [u32],
) {
    let out = out.as_mut_ptr() as *mut f32;
    for r in 0..rows {
        let src = a.ptr.offset((i0 + r) as isize * a.rs);
        if a.cs == 1 {
            let dst = out.add(r * k);
            for q in (0..k).step_by(16) {
                _mm512_mask_storeu_ps(
                    dst.add(q),
                    mask16(k - q),
                    load16::<ROUND>(src.add(q), k - q),
                );
            }
        } else {
            for q in 0..k {
                let v = *src.offset(q as isize * a.cs);
                let v = if ROUND { super::bf16_gemm::round_bf16(v) } else { v };
                *out.add(((r / MR) * k + q) * MR + r % MR) = v;
            }
        }
    }
}

/// Rows `i0..i0 + m` of a transposed view (`rs == 1`) as panels of [`MR`] rows: element `q` of
/// row `r` at `out[(r / MR) * k * MR + q * MR + r % MR]`, 16 rows (two panels) per load.
#[target_feature(enable = "avx512f")]
unsafe fn f32_lhs_t<const ROUND: bool>(
    a: Mat<f32>,
    i0: usize,
    m: usize,
    k: usize,
    out: &mut [u32],
) {
    let out = out.as_mut_ptr() as *mut f32;
    let a0 = a.ptr.add(i0);
    let mut qa = 0;
    while qa < k {
        let qb = (qa + PACK_ROWS).min(k);
        for i in (0..m).step_by(16) {
            let n = (m - i).min(16);
            let p0 = i / MR;
            for q in qa..qb {
                let v = load16::<ROUND>(a0.offset(q as isize * a.cs).add(i), n);
                _mm256_storeu_ps(out.add((p0 * k + q) * MR), _mm512_castps512_ps256(v));
                if n > MR {
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                    _mm256_storeu_ps(out.add(((p0 + 1) * k + q) * MR), hi);
                }
            }
        }
        qa = qb;
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn f32_rhs_rows<const ROUND: bool>(
    b: Mat<f32>,
    q0: usize,
    q1: usize,
    k: usize,
    n: usize,
    out: *mut u32,
) {
    let out = out as *mut f32;
    let mut qa = q0;
    while qa < q1 {
        let qb = (qa + PACK_ROWS).min(q1);
        for jb in 0..n.div_ceil(16) {
            let j0 = jb * 16;
            for q in qa..qb {
                let src = b.ptr.offset(q as isize * b.rs);
                let v = load16::<ROUND>(src.add(j0), n - j0);
                _mm512_storeu_ps(out.add((jb * k + q) * 16), v);
            }
        }
        qa = qb;
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn f32_rhs_blocks<const ROUND: bool>(
    b: Mat<f32>,
    jb0: usize,
    blocks: &mut [u32],
    k: usize,
    n: usize,
) {
    for (bi, blk) in blocks.chunks_mut((k * 16).max(1)).enumerate() {
        let j0 = (jb0 + bi) * 16;
        let w = (n - j0).min(16);
        if b.rs == 1 {
            pack_columns(b, j0, w, k, blk, |col, q0| {
                _mm512_castps_si512(load16::<ROUND>(col.add(q0), k - q0))
            });
        } else {
            blk.fill(0);
            for l in 0..w {
                for q in 0..k {
                    let v = *b.ptr.offset(q as isize * b.rs + (j0 + l) as isize * b.cs);
                    let v = if ROUND { super::bf16_gemm::round_bf16(v) } else { v };
                    blk[q * 16 + l] = v.to_bits();
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn f32_tile<const R: usize, const C: usize>(
    a: *const u32,
    al: ALayout,
    b: *const u32,
    bs: usize,
    kn: usize,
    dst: *mut f32,
    dst_rs: usize,
    cols: usize,
    accumulate: bool,
    alpha: f32,
) {
    let (a, b) = (a as *const f32, b as *const f32);
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for q in 0..kn {
        let mut bv = [_mm512_setzero_ps(); C];
        for (c, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(b.add((c * bs + q) * 16));
        }
        for (r, ar) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(q * al.qs + al.row(r)));
            for c in 0..C {
                ar[c] = _mm512_fmadd_ps(x, bv[c], ar[c]);
            }
        }
    }
    store_tile(&acc, dst, dst_rs, cols, accumulate, alpha);
}

/// The f32 formats' left operand, `ROUND` rounding it to bf16 on the way.
unsafe fn f32_lhs<const ROUND: bool>(
    a: Mat<f32>,
    i0: usize,
    rows: usize,
    k: usize,
    out: &mut Vec<u32>,
) -> LhsRef {
    if a.cs == 1 {
        // Rows contiguous along k: the tiles broadcast from them in place (fp32), or from a
        // rounded copy in the same layout. Measured against panels of MR rows (a 16 x 16
        // transpose per block): 0.88-0.98x the reference model's encoding speed in 4 of 5 pairs.
        if !ROUND {
            let ptr = a.ptr.offset(i0 as isize * a.rs) as *const u32;
            let rs = a.rs as usize;
            return LhsRef { ptr, al: ALayout { qs: 1, rs, panel: rs } };
        }
        sized(out, rows * k);
        f32_lhs_rows::<true>(a, i0, rows, k, out);
        return LhsRef { ptr: out.as_ptr(), al: ALayout { qs: 1, rs: k, panel: k } };
    }
    sized(out, rows.div_ceil(MR) * k * MR);
    if a.rs == 1 && a.cs != 1 {
        f32_lhs_t::<ROUND>(a, i0, rows, k, out);
    } else {
        f32_lhs_rows::<ROUND>(a, i0, rows, k, out);
    }
    LhsRef { ptr: out.as_ptr(), al: ALayout { qs: MR, rs: 1, panel: k } }
}

macro_rules! f32_format {
    ($t:ty, $round:literal) => {
        impl Format for $t {
            const PER: usize = 1;
            unsafe fn lhs(
                a: Mat<f32>,
                i0: usize,
                rows: usize,
                k: usize,
                out: &mut Vec<u32>,
            ) -> LhsRef {
                f32_lhs::<$round>(a, i0, rows, k, out)
            }
            unsafe fn pack_rhs_rows(
                b: Mat<f32>,
                q0: usize,
                q1: usize,
                k: usize,
                n: usize,
                out: *mut u32,
            ) {
                f32_rhs_rows::<$round>(b, q0, q1, k, n, out)
            }
            unsafe fn pack_rhs_blocks(
                b: Mat<f32>,
                jb0: usize,
                blocks: &mut [u32],
                k: usize,
                n: usize,
            ) {
                f32_rhs_blocks::<$round>(b, jb0, blocks, k, n)
            }
            unsafe fn tile<const R: usize, const C: usize>(
                a: *const u32,
                al: ALayout,
                b: *const u32,
                bs: usize,
                kn: usize,
                dst: *mut f32,
                dst_rs: usize,
                cols: usize,
                accumulate: bool,
                alpha: f32,
            ) {
                f32_tile::<R, C>(a, al, b, bs, kn, dst, dst_rs, cols, accumulate, alpha)
            }
        }
    };
}
f32_format!(F32, false);
f32_format!(F32Rounded, true);

// ---------------------------------------------------------------------------------------------
// bf16 pairs

/// bf16 pairs along k, `vdpbf16ps` tiles (AVX-512 BF16).
pub(super) struct Bf16Pairs;

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
pub(super) unsafe fn interleave(a: *const f32, b: Option<*const f32>, n: usize) -> __m512i {
    let m = mask16(n);
    let va = _mm512_maskz_loadu_ps(m, a);
    let vb = match b {
        Some(b) => _mm512_maskz_loadu_ps(m, b),
        None => _mm512_setzero_ps(),
    };
    // [a0..a15, b0..b15] as 16-bit values, then (a0, b0), (a1, b1), ...
    let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(vb, va));
    let idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    _mm512_permutexvar_epi16(idx, v)
}

/// Rows `i0..i0 + rows` of `lhs` as row-major pairs `ld` apart: pair `q` of row `r` at
/// `out[r * ld + q]`, `(a[i, 2q], a[i, 2q + 1])` with the low half first.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
pub(super) unsafe fn bf16_lhs_rows(
    a: Mat<f32>,
    i0: usize,
    rows: usize,
    k: usize,
    ld: usize,
    out: &mut [u32],
) {
    use super::bf16_gemm::bf16_bits;
    let kp = k.div_ceil(2);
    for r in 0..rows {
        let i = (i0 + r) as isize;
        let dst = out.as_mut_ptr().add(r * ld);
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
unsafe fn bf16_lhs_t(a: Mat<f32>, i0: usize, m: usize, k: usize, out: &mut [u32]) {
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
                _mm256_storeu_si256(out.as_mut_ptr().add(((p0 + 1) * kp + q) * MR) as *mut _, hi);
            }
        }
    }
}

/// Pairs `q0..q1` of a `rhs` whose rows are contiguous (`cs == 1`) into every block: two source
/// rows give 16 pairs per block at once. Reads the rows in order; packing block by block instead
/// walked all of k once per 16 columns, at a stride the prefetcher did not follow (a third of the
/// packing time was load stalls).
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn bf16_rhs_rows(b: Mat<f32>, q0: usize, q1: usize, k: usize, n: usize, out: *mut u32) {
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

/// Blocks `jb0..` of `rhs` as `[16-column block][kp][16]` pairs `(b[2p, j], b[2p + 1, j])`.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn bf16_rhs_blocks(b: Mat<f32>, jb0: usize, blocks: &mut [u32], k: usize, n: usize) {
    use super::bf16_gemm::bf16_bits;
    let kp = k.div_ceil(2);
    for (bi, blk) in blocks.chunks_mut((kp * 16).max(1)).enumerate() {
        let j0 = (jb0 + bi) * 16;
        let w = (n - j0).min(16);
        if b.rs == 1 {
            // Column j's pairs for 16 consecutive q are one conversion of its 32 floats.
            pack_columns(b, j0, w, kp, blk, |col, q0| cvt32(col.add(2 * q0), k - 2 * q0));
        } else {
            blk.fill(0);
            let at = |kk: usize, j: usize| *b.ptr.offset(kk as isize * b.rs + j as isize * b.cs);
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

#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_tile<const R: usize, const C: usize>(
    a: *const u32,
    al: ALayout,
    b: *const u32,
    bs: usize,
    kn: usize,
    dst: *mut f32,
    dst_rs: usize,
    cols: usize,
    accumulate: bool,
    alpha: f32,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for q in 0..kn {
        let mut bv = [_mm512_setzero_si512(); C];
        for (c, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(b.add((c * bs + q) * 16) as *const _);
        }
        for (r, ar) in acc.iter_mut().enumerate() {
            let x: __m512bh =
                std::mem::transmute(_mm512_set1_epi32(*a.add(q * al.qs + al.row(r)) as i32));
            for c in 0..C {
                ar[c] = _mm512_dpbf16_ps(ar[c], x, std::mem::transmute::<__m512i, __m512bh>(bv[c]));
            }
        }
    }
    store_tile(&acc, dst, dst_rs, cols, accumulate, alpha);
}

impl Format for Bf16Pairs {
    const PER: usize = 2;
    unsafe fn lhs(a: Mat<f32>, i0: usize, rows: usize, k: usize, out: &mut Vec<u32>) -> LhsRef {
        let kp = k.div_ceil(2);
        sized(out, rows.div_ceil(MR) * kp * MR);
        let al = if a.rs == 1 && a.cs != 1 {
            bf16_lhs_t(a, i0, rows, k, out);
            ALayout { qs: MR, rs: 1, panel: kp }
        } else {
            bf16_lhs_rows(a, i0, rows, k, kp, out);
            ALayout { qs: 1, rs: kp, panel: kp }
        };
        LhsRef { ptr: out.as_ptr(), al }
    }
    unsafe fn pack_rhs_rows(b: Mat<f32>, q0: usize, q1: usize, k: usize, n: usize, out: *mut u32) {
        bf16_rhs_rows(b, q0, q1, k, n, out)
    }
    unsafe fn pack_rhs_blocks(b: Mat<f32>, jb0: usize, blocks: &mut [u32], k: usize, n: usize) {
        bf16_rhs_blocks(b, jb0, blocks, k, n)
    }
    unsafe fn tile<const R: usize, const C: usize>(
        a: *const u32,
        al: ALayout,
        b: *const u32,
        bs: usize,
        kn: usize,
        dst: *mut f32,
        dst_rs: usize,
        cols: usize,
        accumulate: bool,
        alpha: f32,
    ) {
        bf16_tile::<R, C>(a, al, b, bs, kn, dst, dst_rs, cols, accumulate, alpha)
    }
}

// ---------------------------------------------------------------------------------------------
// driver

pub(super) unsafe fn pack_rhs<K: Format>(
    b: Mat<f32>,
    k: usize,
    n: usize,
    parallel: bool,
    out: &mut Vec<u32>,
) {
    let kp = k.div_ceil(K::PER);
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
                K::pack_rhs_rows(b, t * per, ((t + 1) * per).min(kp), k, n, op.0);
            });
        } else {
            K::pack_rhs_rows(b, 0, kp, k, n, out.as_mut_ptr());
        }
    } else if parallel && n * k >= PAR_MIN / 16 {
        let bp = SendPtr(b.ptr as *mut f32);
        out.par_chunks_mut((kp * 16).max(1)).enumerate().for_each(|(jb, blk)| {
            let p = bp;
            let b = Mat { ptr: p.0 as *const f32, rs: b.rs, cs: b.cs };
            K::pack_rhs_blocks(b, jb, blk, k, n)
        });
    } else {
        K::pack_rhs_blocks(b, 0, out, k, n);
    }
}

thread_local! {
    /// Packing buffers reused across calls (the attention kernel makes many small products);
    /// shared with [`super::amx`].
    pub(super) static BUFS: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// A row task's packed rows of the left operand (on rayon's worker threads).
    pub(super) static TASK_A: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Packs `rhs` in format `K` into this thread's reused buffer and hands it to `f`.
pub(super) unsafe fn with_packed_rhs<K: Format>(
    rhs: Mat<f32>,
    k: usize,
    n: usize,
    parallel: bool,
    f: impl FnOnce(&[u32]),
) {
    let mut bp = BUFS.with(|b| std::mem::take(&mut b.borrow_mut().1));
    pack_rhs::<K>(rhs, k, n, parallel, &mut bp);
    f(&bp);
    BUFS.with(|b| b.borrow_mut().1 = bp);
}

/// Dispatches a tile of `rows <= MR` and `blocks <= NB`, or a tall one ([`tall_rows`]), to its
/// monomorphised kernel.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_any<K: Format>(
    rows: usize,
    blocks: usize,
    a: *const u32,
    al: ALayout,
    b: *const u32,
    bs: usize,
    kn: usize,
    dst: *mut f32,
    dst_rs: usize,
    cols: usize,
    accumulate: bool,
    alpha: f32,
) {
    macro_rules! go {
        ($r:literal, $c:literal) => {
            K::tile::<$r, $c>(a, al, b, bs, kn, dst, dst_rs, cols, accumulate, alpha)
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
    match (blocks, rows) {
        (1, TALL_1) => go!(24, 1),
        (2, TALL_2) => go!(12, 2),
        (3, _) => rows!(3),
        (2, _) => rows!(2),
        _ => rows!(1),
    }
}

/// Rows of the tall tiles of one and two 16-column blocks ([`tile_any`] spells them out).
const TALL_1: usize = 3 * MR;
const TALL_2: usize = 3 * MR / 2;
const _: () = assert!(TALL_1 == 24 && TALL_2 == 12);

/// Rows of the tall tiles for the last one or two 16-column blocks of a row (`nb < NB`): an 8-row
/// tile of one block has 8 accumulators and a load per FMA, far below the FMA ports' rate, and
/// every width of our models (128, 256, 512, 1024) leaves such a remainder of 48-column groups.
/// 24 x 16 and 12 x 32 keep 24 accumulators busy, as the full 8 x 48 tile does. A task's tiles
/// start at row 0, so 24-row tiles start on panel boundaries; 12-row ones only where rows are
/// evenly spaced (a row-major left operand), not in [`MR`]-row panels.
fn tall_rows(nb: usize, al: ALayout) -> usize {
    match nb {
        1 => TALL_1,
        2 if al.qs == 1 && al.panel == al.rs => TALL_2,
        _ => usize::MAX,
    }
}

/// Rows `0..nr` of the result (from `a`, laid out as `al`), every column of `bp`. Blocked along
/// k ([`KC`]): one 48-column panel of a k block stays in L1 while every row tile of the task
/// multiplies it (each tile streams only its rows' small panel of the left operand); later
/// blocks add to the earlier ones' partial sums in `dst`.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_task<K: Format>(
    a: *const u32,
    al: ALayout,
    bp: &[u32],
    kp: usize,
    n: usize,
    nr: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    alpha: f32,
) {
    let blocks = n.div_ceil(16);
    let mut q0 = 0;
    loop {
        let kn = (kp - q0).min(KC);
        let acc = accumulate || q0 > 0;
        let mut jb = 0;
        while jb < blocks {
            let nb = (blocks - jb).min(NB);
            let cols = (n - jb * 16).min(nb * 16);
            let tall = tall_rows(nb, al);
            let mut r = 0;
            while r < nr {
                let (a, b) =
                    (a.add(r * al.panel + q0 * al.qs), bp.as_ptr().add((jb * kp + q0) * 16));
                let dst = dst.add(r * dst_rs + jb * 16);
                let rows = if nr - r >= tall { tall } else { (nr - r).min(K::TILE_ROWS) };
                tile_any::<K>(rows, nb, a, al, b, kp, kn, dst, dst_rs, cols, acc, alpha);
                r += rows;
            }
            jb += nb;
        }
        q0 += kn;
        if q0 >= kp {
            break;
        }
    }
}

/// `dst[m, n] (+)= alpha * lhs * rhs` in format `K`, then the epilogue over every row once.
///
/// # Safety
/// As [`super::gemm`]; the CPU has `K`'s instructions.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm<K: Format>(
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
    with_packed_rhs::<K>(rhs, k, n, par, |bp| {
        gemm_packed::<K>(m, n, k, dst, dst_rs, accumulate, lhs, bp, alpha, parallel, epilogue)
    });
}

/// `rhs` packed as [`gemm`] packs it.
pub(super) unsafe fn pack<K: Format>(rhs: Mat<f32>, k: usize, n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    pack_rhs::<K>(rhs, k, n, true, &mut out);
    out
}

/// [`gemm`] with the right operand already packed.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_packed<K: Format>(
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
    compute::<K>(lhs, &mut ap, bp, m, n, k, dst, dst_rs, accumulate, alpha, par, epilogue);
    BUFS.with(|b| b.borrow_mut().0 = ap);
}

/// Packs the rows of `lhs` and multiplies them with the packed `bp`. Split over rows, each
/// task packs its own rows just before using them (they stay in cache, and packing runs in
/// parallel with no separate pass); with few rows, the columns are split instead.
#[allow(clippy::too_many_arguments)]
unsafe fn compute<K: Format>(
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
    let kp = k.div_ceil(K::PER);
    let d = SendPtr(dst);
    // Serial products with many rows are split the same way, run in order: one pass over all
    // rows per k block and column group would stream a large left operand from memory again
    // for each (the MLM head's weight gradient, 39 MB, 18 times).
    if (par && m >= 2 * MR) || m > 2 * SERIAL_ROWS {
        let per = if par {
            let threads = rayon::current_num_threads();
            m.div_ceil(threads * 2).next_multiple_of(MR).clamp(MR, ROWS_PER_TASK)
        } else {
            SERIAL_ROWS
        };
        let a = SendPtr(lhs.ptr as *mut f32);
        let (rs, cs) = (lhs.rs, lhs.cs);
        let task = |t: usize| {
            // Capture the whole wrappers (Send), not their raw-pointer fields (edition 2021).
            #[allow(clippy::redundant_locals)]
            let (d, a) = (d, a);
            let r0 = t * per;
            let rows = per.min(m - r0);
            TASK_A.with(|buf| {
                let mut buf = buf.borrow_mut();
                let lhs = Mat { ptr: a.0 as *const f32, rs, cs };
                let LhsRef { ptr, al } = K::lhs(lhs, r0, rows, k, &mut buf);
                let out = d.0.add(r0 * dst_rs);
                rows_task::<K>(ptr, al, bp, kp, n, rows, out, dst_rs, accumulate, alpha);
            });
            if let Some(epi) = epilogue {
                epi(r0, rows);
            }
        };
        if par {
            (0..m.div_ceil(per)).into_par_iter().for_each(task);
        } else {
            (0..m.div_ceil(per)).for_each(task);
        }
    } else {
        let LhsRef { ptr, al } = K::lhs(lhs, 0, m, k, ap);
        if par {
            // Few rows: split the columns (whole 48-column groups) instead.
            let group = 16 * NB;
            let a = SendPtr(ptr as *mut u32);
            (0..n.div_ceil(group)).into_par_iter().for_each(|g| {
                // Capture the whole wrappers (Send), not their raw-pointer fields (edition 2021).
                #[allow(clippy::redundant_locals)]
                let (d, a) = (d, a);
                let j0 = g * group;
                let cols = group.min(n - j0);
                rows_task::<K>(
                    a.0,
                    al,
                    &bp[j0 * kp..],
                    kp,
                    cols,
                    m,
                    d.0.add(j0),
                    dst_rs,
                    accumulate,
                    alpha,
                );
            });
        } else {
            rows_task::<K>(ptr, al, bp, kp, n, m, dst, dst_rs, accumulate, alpha);
        }
        if let Some(epi) = epilogue {
            epi(0, m);
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// Single-thread ceiling of one 8x48 tile on L1-resident packed data, per format:
    /// `cargo test --release -p medvlp-model --lib gemm512_tile_ceiling -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn gemm512_tile_ceiling() {
        fn run<K: Format>(name: &str, per: usize) {
            for kp in [32usize, 128, 512] {
                let one = if per == 2 { 0x3f80_3f80u32 } else { 1f32.to_bits() };
                let a = vec![one; kp * MR];
                let b = vec![one; kp * 16 * NB];
                let mut c = vec![0f32; MR * 48];
                let reps = 2_000_000 / kp;
                let al = ALayout { qs: 1, rs: kp, panel: kp };
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    unsafe {
                        K::tile::<8, 3>(
                            a.as_ptr(),
                            al,
                            b.as_ptr(),
                            kp,
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
                let flops = 2.0 * (MR * 48 * per * kp) as f64 * reps as f64;
                println!(
                    "{name} tile 8x48 k {}: {:.1} GFLOP/s single thread",
                    kp * per,
                    flops / s / 1e9
                );
            }
        }
        if super::super::avx512f() {
            run::<F32>("f32", 1);
        }
        if super::super::bf16::available() {
            run::<Bf16Pairs>("bf16 pairs", 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data::{data, ODD_SHAPES};
    use super::*;

    /// The fp32 tiles against an f64 reference, on shapes that are not multiples of the tile
    /// (1, 15, 17, 33, ...), k across several [`KC`] blocks, every operand layout the fused ops
    /// use (rows, transposed, strided), with and without accumulation, packed once or per call,
    /// single-threaded and split over rows or columns; the epilogue sees every row once.
    #[test]
    fn f32_gemm_equals_the_f64_reference_on_odd_shapes() {
        if super::super::avx512f() {
            f32_format_equals_the_f64_reference::<F32>("F32");
        } else {
            println!("not tested here: the AVX-512 fp32 tiles (AVX-512 not available)");
        }
        if super::super::cpu::avx2() {
            f32_format_equals_the_f64_reference::<super::super::gemm256::F32Avx2>("F32Avx2");
        } else {
            println!("not tested here: the AVX2 fp32 strips (AVX2 and FMA not available)");
        }
    }

    fn f32_format_equals_the_f64_reference<K: Format>(name: &str) {
        for &(m, n, k) in ODD_SHAPES.iter().chain(&[(5, 7, 0), (50, 40, 20), (24, 16, 9)]) {
            let a = data(m * k, 1);
            let b = data(k * n, 2);
            let init = data(m * n, 3);
            // the same values as [n, k] (a weight) and [k, m] (dW = g^T x's left operand), and
            // at a row stride wider than the row (a slice of a wider matrix)
            let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
            let aw: Vec<f32> = (0..m * (k + 3))
                .map(
                    |x| if x % (k + 3) < k { a[(x / (k + 3)) * k + x % (k + 3)] } else { f32::NAN },
                )
                .collect();
            let lhs_views = [
                Mat::rows(a.as_ptr(), k),
                Mat::rows(at.as_ptr(), m).t(),
                Mat::rows(aw.as_ptr(), k + 3),
                Mat { ptr: at.as_ptr(), rs: 1, cs: m as isize }, // the transpose by strides
            ];
            let bs: Vec<f32> = (0..k * n).map(|x| b[(x % k) * n + x / k]).collect();
            let rhs_views = [
                Mat::rows(b.as_ptr(), n),
                Mat::rows(bt.as_ptr(), k).t(),
                Mat { ptr: bs.as_ptr(), rs: 1, cs: k as isize },
            ];
            for (li, lhs) in lhs_views.iter().enumerate() {
                for (ri, rhs) in rhs_views.iter().enumerate() {
                    for accumulate in [false, true] {
                        for (parallel, packed) in [(false, false), (true, false), (true, true)] {
                            let mut dst = if accumulate { init.clone() } else { vec![0f32; m * n] };
                            let seen = std::sync::Mutex::new(vec![0u8; m]);
                            let epi = |r0: usize, nr: usize| {
                                let mut s = seen.lock().unwrap();
                                s[r0..r0 + nr].iter_mut().for_each(|c| *c += 1);
                            };
                            unsafe {
                                if packed {
                                    let bp = pack::<K>(*rhs, k, n);
                                    gemm_packed::<K>(
                                        m,
                                        n,
                                        k,
                                        dst.as_mut_ptr(),
                                        n,
                                        accumulate,
                                        *lhs,
                                        &bp,
                                        0.5,
                                        parallel,
                                        Some(&epi),
                                    );
                                } else {
                                    gemm::<K>(
                                        m,
                                        n,
                                        k,
                                        dst.as_mut_ptr(),
                                        n,
                                        accumulate,
                                        *lhs,
                                        *rhs,
                                        0.5,
                                        parallel,
                                        Some(&epi),
                                    );
                                }
                            }
                            assert!(seen.lock().unwrap().iter().all(|&c| c == 1), "epilogue rows");
                            for i in 0..m {
                                for j in 0..n {
                                    let (mut s, mut mag) = (0f64, 0f64);
                                    for p in 0..k {
                                        let v = a[i * k + p] as f64 * b[p * n + j] as f64;
                                        s += v;
                                        mag += v.abs();
                                    }
                                    let base =
                                        if accumulate { init[i * n + j] as f64 } else { 0.0 };
                                    let want = 0.5 * s + base;
                                    let got = dst[i * n + j] as f64;
                                    assert!(
                                        (got - want).abs() <= 1e-6 * (0.5 * mag + 1.0),
                                        "{name} {m}x{n}x{k} lhs {li} rhs {ri} acc {accumulate} par {parallel} packed {packed} ({i}, {j}): {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`F32Rounded`] multiplies bf16-rounded operands exactly as [`F32`] multiplies rounded copies.
    #[test]
    fn rounded_packing_equals_fp32_tiles_on_rounded_copies() {
        if !super::super::avx512f() {
            println!("not tested here: the AVX-512 fp32 tiles (this CPU lacks AVX-512 F)");
            return;
        }
        let round = super::super::bf16_gemm::round_bf16;
        for &(m, n, k) in &[(15, 17, 33), (70, 100, 300), (40, 300, 701)] {
            let mut a = data(m * k, 4);
            a[0] = f32::NAN;
            let b = data(k * n, 5);
            let (ar, br): (Vec<f32>, Vec<f32>) =
                (a.iter().map(|&x| round(x)).collect(), b.iter().map(|&x| round(x)).collect());
            for lhs_t in [false, true] {
                let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
                let art: Vec<f32> = (0..k * m).map(|x| ar[(x % m) * k + x / m]).collect();
                let (l, lr) = if lhs_t {
                    (Mat::rows(at.as_ptr(), m).t(), Mat::rows(art.as_ptr(), m).t())
                } else {
                    (Mat::rows(a.as_ptr(), k), Mat::rows(ar.as_ptr(), k))
                };
                let mut got = vec![0f32; m * n];
                let mut want = vec![0f32; m * n];
                unsafe {
                    let (r, rr) = (Mat::rows(b.as_ptr(), n), Mat::rows(br.as_ptr(), n));
                    gemm::<F32Rounded>(m, n, k, got.as_mut_ptr(), n, false, l, r, 1.0, true, None);
                    gemm::<F32>(m, n, k, want.as_mut_ptr(), n, false, lr, rr, 1.0, true, None);
                }
                for (g, w) in got.iter().zip(&want) {
                    assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{g} vs {w}");
                }
            }
        }
    }
}

#[cfg(test)]
mod dw_breakdown {
    use super::*;

    /// One core's time for a weight gradient's parts (packing `g^T`, packing `x`, the tiles on
    /// packed operands), best of 5 batches; `MEDVLP_DW_SHAPE=m,n,k` (default the text encoder's
    /// fc2 `256,1024,2048`):
    /// `cargo test --release -p medvlp-model --lib gemm512_dw_breakdown -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn gemm512_dw_breakdown() {
        if !super::super::avx512f() {
            println!("not run here: the AVX-512 fp32 tiles (this CPU lacks AVX-512 F)");
            return;
        }
        let v: Vec<usize> = std::env::var("MEDVLP_DW_SHAPE")
            .unwrap_or_else(|_| "256,1024,2048".into())
            .split(',')
            .map(|x| x.trim().parse().expect("MEDVLP_DW_SHAPE is m,n,k"))
            .collect();
        let (m, n, k) = (v[0], v[1], v[2]);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect(); // g: [k, m]
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect(); // x: [k, n]
        let (lhs, rhs) = (Mat::rows(a.as_ptr(), m).t(), Mat::rows(b.as_ptr(), n));
        let (mut c, mut ap, mut bp) = (vec![0f32; m * n], Vec::new(), Vec::new());
        let best = |f: &mut dyn FnMut()| super::super::test_data::best_secs(10, f);
        unsafe {
            let ta = best(&mut || {
                F32::lhs(lhs, 0, m, k, &mut ap);
            });
            let tb = best(&mut || pack_rhs::<F32>(rhs, k, n, false, &mut bp));
            let LhsRef { ptr, al } = F32::lhs(lhs, 0, m, k, &mut ap);
            let tt = best(&mut || {
                rows_task::<F32>(ptr, al, &bp, k, n, m, c.as_mut_ptr(), n, false, 1.0)
            });
            let gf = 2.0 * (m * n * k) as f64 / 1e9;
            println!(
                "{m}x{n}x{k} weight gradient, one core: packing g^T {:.3} ms, packing x {:.3} ms, \
                 tiles {:.3} ms ({:.1} GFLOP/s)",
                ta * 1e3,
                tb * 1e3,
                tt * 1e3,
                gf / tt
            );
        }
    }
}
