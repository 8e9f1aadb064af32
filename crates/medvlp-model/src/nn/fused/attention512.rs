//! AVX-512 kernels for attention's per-head products (see [`super::attention`]): a few dozen rows,
//! a head's 32-128 columns, operands that fit in L1, one thread each (the op parallelises over
//! sample x head). A general GEMM packs both operands into panels on every call and sizes its
//! blocks for large products; here that bookkeeping cost as much as the multiplications (the
//! reference model's per-head products ran at 18-99 GFLOP/s per thread through the `gemm`
//! crate). These kernels broadcast the left operand straight from its strided layout and read
//! the right operand's rows in place; only `Q K^T` and `dO V^T`, whose right operand is stored
//! transposed, copy it once per head into a `[head_dim, keys]` block (16 x 16 register
//! transposes).

use super::gemm512::{mask16, store_tile, transpose16};
use std::arch::x86_64::*;

/// A left operand read by broadcasting: element `(i, p)` at `ptr[i * rs + p * ps]`.
#[derive(Clone, Copy)]
pub(super) struct Lhs {
    pub ptr: *const f32,
    pub rs: usize,
    pub ps: usize,
}

/// `dst[i * dst_rs + j] = alpha * sum_p a(i, p) * b[p * b_rs + j]` for `i < m`, `j < n`, `p < k`;
/// `dst` is overwritten (nothing is read from it).
///
/// # Safety
/// AVX-512F must be present; the operands must be valid for their extents, and `dst` must not
/// alias them.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    a: Lhs,
    b: *const f32,
    b_rs: usize,
    dst: *mut f32,
    dst_rs: usize,
    alpha: f32,
) {
    // Column chunks of at most 5 vectors: 65 keys are one chunk of 5, not 4 + a lone vector.
    let mut j0 = 0;
    while j0 < n {
        let left = (n - j0).div_ceil(16);
        let nv = if left <= 5 { left } else { 4 };
        let cols = (n - j0).min(nv * 16);
        let (b, dst) = (b.add(j0), dst.add(j0));
        match nv {
            1 => rows::<1, 8>(m, k, a, b, b_rs, dst, dst_rs, cols, alpha),
            2 => rows::<2, 8>(m, k, a, b, b_rs, dst, dst_rs, cols, alpha),
            3 => rows::<3, 8>(m, k, a, b, b_rs, dst, dst_rs, cols, alpha),
            4 => rows::<4, 6>(m, k, a, b, b_rs, dst, dst_rs, cols, alpha),
            _ => rows::<5, 5>(m, k, a, b, b_rs, dst, dst_rs, cols, alpha),
        }
        j0 += cols;
    }
}

/// All rows of one column chunk: tiles of `R` rows (`R x NV` accumulators plus `NV` right-hand
/// vectors stay within the 32 registers), then one tile for the rows left over.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<const NV: usize, const R: usize>(
    m: usize,
    k: usize,
    a: Lhs,
    b: *const f32,
    b_rs: usize,
    dst: *mut f32,
    dst_rs: usize,
    cols: usize,
    alpha: f32,
) {
    let mut i = 0;
    while i + R <= m {
        let ai = Lhs { ptr: a.ptr.add(i * a.rs), ..a };
        tile::<R, NV>(k, ai, b, b_rs, dst.add(i * dst_rs), dst_rs, cols, alpha);
        i += R;
    }
    let ai = Lhs { ptr: a.ptr.add(i * a.rs), ..a };
    let d = dst.add(i * dst_rs);
    match m - i {
        0 => {}
        1 => tile::<1, NV>(k, ai, b, b_rs, d, dst_rs, cols, alpha),
        2 => tile::<2, NV>(k, ai, b, b_rs, d, dst_rs, cols, alpha),
        3 => tile::<3, NV>(k, ai, b, b_rs, d, dst_rs, cols, alpha),
        4 => tile::<4, NV>(k, ai, b, b_rs, d, dst_rs, cols, alpha),
        5 => tile::<5, NV>(k, ai, b, b_rs, d, dst_rs, cols, alpha),
        6 => tile::<6, NV>(k, ai, b, b_rs, d, dst_rs, cols, alpha),
        _ => tile::<7, NV>(k, ai, b, b_rs, d, dst_rs, cols, alpha),
    }
}

/// One `R x (NV * 16)` tile, columns clipped at `cols` (the last vector's load is masked, so
/// nothing past a row's end is read).
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const NV: usize>(
    k: usize,
    a: Lhs,
    b: *const f32,
    b_rs: usize,
    dst: *mut f32,
    dst_rs: usize,
    cols: usize,
    alpha: f32,
) {
    let last = mask16(cols - (NV - 1) * 16);
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    for p in 0..k {
        let bp = b.add(p * b_rs);
        let mut bv = [_mm512_setzero_ps(); NV];
        for (c, v) in bv.iter_mut().enumerate() {
            *v = if c + 1 == NV {
                _mm512_maskz_loadu_ps(last, bp.add(c * 16))
            } else {
                _mm512_loadu_ps(bp.add(c * 16))
            };
        }
        let ap = a.ptr.add(p * a.ps);
        for (r, ar) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*ap.add(r * a.rs));
            for c in 0..NV {
                ar[c] = _mm512_fmadd_ps(x, bv[c], ar[c]);
            }
        }
    }
    store_tile(&acc, dst, dst_rs, cols, false, alpha);
}

/// `dst[c * dst_rs + r] = src[r * src_rs + c]` for `r < rows`, `c < cols`, in 16 x 16 blocks
/// (masked loads and stores at the edges).
///
/// # Safety
/// AVX-512F must be present; `src` and `dst` must be valid for their extents and not overlap.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose(
    src: *const f32,
    src_rs: usize,
    rows: usize,
    cols: usize,
    dst: *mut f32,
    dst_rs: usize,
) {
    let mut v = [_mm512_setzero_si512(); 16];
    for r0 in (0..rows).step_by(16) {
        let rmask = mask16(rows - r0);
        for c0 in (0..cols).step_by(16) {
            let cmask = mask16(cols - c0);
            for (l, v) in v.iter_mut().enumerate() {
                *v = if r0 + l < rows {
                    _mm512_maskz_loadu_epi32(cmask, src.add((r0 + l) * src_rs + c0) as *const _)
                } else {
                    _mm512_setzero_si512()
                };
            }
            transpose16(&mut v);
            // constant indices keep `v` in registers
            #[allow(clippy::needless_range_loop)]
            for t in 0..16 {
                if c0 + t < cols {
                    _mm512_mask_storeu_epi32(
                        dst.add((c0 + t) * dst_rs + r0) as *mut _,
                        rmask,
                        v[t],
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        (ars, aps): (usize, usize),
        b: &[f32],
        b_rs: usize,
        alpha: f32,
    ) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 =
                    (0..k).map(|p| a[i * ars + p * aps] as f64 * b[p * b_rs + j] as f64).sum();
                out[i * n + j] = alpha as f64 * s;
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // a fixed pseudo-random sequence in [-1, 1)
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Every column chunk (1-5 vectors, several chunks), every row remainder, both left-operand
    /// layouts (rows along k as in `P V`, columns along k as in `P^T dO`), padded strides, and a
    /// destination wider than the product: the columns past `n` stay untouched.
    #[test]
    fn product_matches_f64_on_odd_shapes() {
        if !super::super::avx512f() {
            eprintln!("no AVX-512F on this CPU: attention512 kernels not tested");
            return;
        }
        let mut shapes = vec![];
        for m in [1, 5, 7, 8, 13, 17, 33, 65] {
            for n in [1, 15, 16, 17, 33, 48, 64, 65, 80, 81, 100, 130] {
                for k in [1, 3, 17, 64] {
                    shapes.push((m, n, k));
                }
            }
        }
        for (s, &(m, n, k)) in shapes.iter().enumerate() {
            for transposed in [false, true] {
                let pad = 3;
                let (ars, aps, alen) = if transposed {
                    (1, m + pad, k * (m + pad))
                } else {
                    (k + pad, 1, m * (k + pad))
                };
                let a = values(alen, s as u32);
                let b_rs = n + pad;
                let b = values(k * b_rs, 1000 + s as u32);
                let dst_rs = n + 5;
                let mut dst = vec![7.0f32; m * dst_rs];
                let alpha = 0.125;
                unsafe {
                    product(
                        m,
                        n,
                        k,
                        Lhs { ptr: a.as_ptr(), rs: ars, ps: aps },
                        b.as_ptr(),
                        b_rs,
                        dst.as_mut_ptr(),
                        dst_rs,
                        alpha,
                    );
                }
                let want = reference(m, n, k, &a, (ars, aps), &b, b_rs, alpha);
                for i in 0..m {
                    for j in 0..dst_rs {
                        let got = dst[i * dst_rs + j] as f64;
                        if j < n {
                            let w = want[i * n + j];
                            let tol = 1e-6 * (k as f64).sqrt() + 1e-6 * w.abs();
                            assert!(
                                (got - w).abs() <= tol,
                                "{m}x{n}x{k} transposed {transposed}: ({i}, {j}) {got} vs {w}"
                            );
                        } else {
                            assert_eq!(got, 7.0, "{m}x{n}x{k}: wrote past column {n}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn transpose_moves_every_element_and_nothing_else() {
        if !super::super::avx512f() {
            eprintln!("no AVX-512F on this CPU: attention512 kernels not tested");
            return;
        }
        for (rows, cols) in [(1, 1), (1, 17), (17, 1), (16, 16), (65, 64), (17, 32), (33, 100)] {
            let src_rs = cols + 2;
            let src = values(rows * src_rs, (rows * 31 + cols) as u32);
            let dst_rs = rows + 3;
            let mut dst = vec![f32::NAN; cols * dst_rs];
            unsafe { transpose(src.as_ptr(), src_rs, rows, cols, dst.as_mut_ptr(), dst_rs) };
            for c in 0..cols {
                for r in 0..dst_rs {
                    let got = dst[c * dst_rs + r];
                    if r < rows {
                        assert_eq!(got, src[r * src_rs + c], "{rows}x{cols}: ({r}, {c})");
                    } else {
                        assert!(got.is_nan(), "{rows}x{cols}: wrote past row {rows}");
                    }
                }
            }
        }
    }
}
