//! fp32 tiles for CPUs with AVX2 and FMA but without AVX-512 (AMD Zen 2/3, Intel before
//! Skylake-SP): a [`gemm512::Format`] for [`gemm512`]'s driver, so that inference's frozen dense
//! layers get there what [`gemm512::F32`] gives them on AVX-512 CPUs: the weight packed once
//! (the `gemm` crate packs it on every call), and the bias and GELU in each row task's epilogue
//! while its rows are in cache.
//!
//! With 16 ymm registers a tile runs as strips of 6 rows by one 16-column block: 12 accumulators,
//! two operand registers and a broadcast, the classic AVX2 SGEMM kernel's shape. The driver's
//! tiles are 6 rows by 3 blocks for this format ([`Format::TILE_ROWS`]; 8-row tiles ran as 4 + 4
//! rows, 8 accumulators, about 5% slower), and its tall tiles (24 rows by one block, 12 by two)
//! are whole strips. The packed right operand has
//! [`gemm512::F32`]'s layout (`[16-column block][k][16]`); the packers are scalar loops, run once
//! per frozen weight.

use super::gemm512::{ALayout, Format, LhsRef};
use super::Mat;
use std::arch::x86_64::*;

/// fp32 operands, AVX2 FMA strips.
pub(super) struct F32Avx2;

/// Element `(q, j)` of `b`, or 0 past the last column (the packed blocks' padding).
#[inline(always)]
unsafe fn at(b: Mat<f32>, q: usize, j: usize, n: usize) -> u32 {
    if j < n {
        (*b.ptr.offset(q as isize * b.rs + j as isize * b.cs)).to_bits()
    } else {
        0
    }
}

impl Format for F32Avx2 {
    const PER: usize = 1;
    const TILE_ROWS: usize = STRIP_ROWS;

    unsafe fn lhs(a: Mat<f32>, i0: usize, rows: usize, k: usize, out: &mut Vec<u32>) -> LhsRef {
        if a.cs == 1 {
            // rows contiguous along k: read in place
            let ptr = a.ptr.offset(i0 as isize * a.rs) as *const u32;
            return LhsRef::new(ptr, ALayout::rows(a.rs as usize));
        }
        super::gemm512::sized(out, rows * k);
        for r in 0..rows {
            for q in 0..k {
                out[r * k + q] =
                    (*a.ptr.offset((i0 + r) as isize * a.rs + q as isize * a.cs)).to_bits();
            }
        }
        LhsRef::new(out.as_ptr(), ALayout::rows(k))
    }

    unsafe fn pack_rhs_rows(b: Mat<f32>, q0: usize, q1: usize, k: usize, n: usize, out: *mut u32) {
        for jb in 0..n.div_ceil(16) {
            for q in q0..q1 {
                for l in 0..16 {
                    *out.add((jb * k + q) * 16 + l) = at(b, q, jb * 16 + l, n);
                }
            }
        }
    }

    unsafe fn pack_rhs_blocks(b: Mat<f32>, jb0: usize, blocks: &mut [u32], k: usize, n: usize) {
        for (bi, blk) in blocks.chunks_mut((k * 16).max(1)).enumerate() {
            for q in 0..k {
                for l in 0..16 {
                    blk[q * 16 + l] = at(b, q, (jb0 + bi) * 16 + l, n);
                }
            }
        }
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
        tile::<R, C>(
            a as *const f32,
            al,
            b as *const f32,
            bs,
            kn,
            dst,
            dst_rs,
            cols,
            accumulate,
            alpha,
        )
    }
}

/// A tile of `R` rows (at most 6, or the driver's tall 12 and 24) by `C` 16-column blocks as
/// strips of 6 rows by one block.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const C: usize>(
    a: *const f32,
    al: ALayout,
    b: *const f32,
    bs: usize,
    kn: usize,
    dst: *mut f32,
    dst_rs: usize,
    cols: usize,
    accumulate: bool,
    alpha: f32,
) {
    for c in 0..C {
        if c * 16 >= cols {
            break;
        }
        let mut r = 0;
        while r < R {
            let rows = (R - r).min(STRIP_ROWS);
            macro_rules! go {
                ($n:literal) => {
                    strip::<$n>(a, al, r, b, bs, c, kn, dst, dst_rs, cols, accumulate, alpha)
                };
            }
            match rows {
                6 => go!(6),
                5 => go!(5),
                4 => go!(4),
                3 => go!(3),
                2 => go!(2),
                _ => go!(1),
            }
            r += rows;
        }
    }
}

/// Rows of a strip: 12 accumulators, two operand registers and a broadcast of the 16.
const STRIP_ROWS: usize = 6;

/// Rows `r0..r0 + N` of the tile times its packed block `c`, stored to the tile's `dst` (columns
/// clipped at `cols`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn strip<const N: usize>(
    a: *const f32,
    al: ALayout,
    r0: usize,
    b: *const f32,
    bs: usize,
    c: usize,
    kn: usize,
    dst: *mut f32,
    dst_rs: usize,
    cols: usize,
    accumulate: bool,
    alpha: f32,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let rows: [usize; N] = std::array::from_fn(|i| al.row(r0 + i));
    let b = b.add(c * bs * 16);
    for q in 0..kn {
        let (b0, b1) = (_mm256_loadu_ps(b.add(q * 16)), _mm256_loadu_ps(b.add(q * 16 + 8)));
        let aq = a.add(q * al.qs());
        for (acc, &row) in acc.iter_mut().zip(&rows) {
            let x = _mm256_broadcast_ss(&*aq.add(row));
            acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
        }
    }
    let al8 = _mm256_set1_ps(alpha);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (i, acc) in acc.iter().enumerate() {
        for (v, y) in acc.iter().enumerate() {
            let j = c * 16 + v * 8;
            if j >= cols {
                break;
            }
            let p = dst.add((r0 + i) * dst_rs + j);
            let mut y = _mm256_mul_ps(*y, al8);
            if cols - j >= 8 {
                if accumulate {
                    y = _mm256_add_ps(y, _mm256_loadu_ps(p));
                }
                _mm256_storeu_ps(p, y);
            } else {
                let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((cols - j) as i32), lane);
                if accumulate {
                    y = _mm256_add_ps(y, _mm256_maskload_ps(p, mask));
                }
                _mm256_maskstore_ps(p, mask, y);
            }
        }
    }
}
