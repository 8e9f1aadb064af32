//! The bf16 GEMM on AMX (`tdpbf16ps`, Intel Sapphire Rapids and later): `dst (+)= alpha * lhs *
//! rhs` with bf16 operands and f32 accumulation, as [`super::bf16_gemm`]'s other paths.
//!
//! Every tile is configured as 16 rows of 64 bytes. A block of 32 rows x 48 columns keeps its
//! six f32 accumulator tiles (`tmm0..tmm5`) in the tile registers over all of k, loading each
//! 16-row x 16-pair slice of the left operand into `tmm6` and each 16-pair x 16-column slice of
//! the right operand into `tmm7`. The right operand is [`super::gemm512::Bf16Pairs`]' packing
//! (`[16-column block][pair][16]`), whose 16 consecutive pairs of a block are exactly one B tile
//! (64 bytes per row), so packed weights serve both paths. The left operand is packed per row
//! task as rows of pairs. The last `kp % 16` pairs (and any k below 32) go through the
//! `vdpbf16ps` tiles, which every AMX CPU also has, so no tile is ever configured twice.
//!
//! The tile instructions are behind [`Tiles`]: [`Amx`] issues them (`asm!`; Rust has no stable
//! AMX intrinsics), and the tests run the same driver on a software model of the instructions
//! (`Emulated`, following the pseudo-code of the Intel SDM), so the packing, tiling and tails are
//! checked on any CPU with AVX-512 BF16. Because the hardware instructions themselves could only
//! be checked on a CPU with AMX, [`available`] also multiplies a small product on them once per
//! process and keeps the path only if it equals the `vdpbf16ps` path's result.

use super::gemm512::{self as g, ALayout, Bf16Pairs};
use super::{Epilogue, Mat, SendPtr};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows of a tile, and pairs of k in one of its rows (64 bytes).
const TR: usize = 16;
const TP: usize = 16;
/// Row tiles and 16-column tiles of one block: 2 x 3 accumulators + one tile per operand.
const RT: usize = 2;
const CT: usize = 3;
/// Rows per parallel task (a multiple of a block's 32).
const ROWS_PER_TASK: usize = 128;

/// The tile instructions the driver uses; tile `c < 6` accumulates, A is `tmm6`, B is `tmm7`.
pub(super) trait Tiles: Sized {
    /// Starts this thread's use of the tiles: every tile 16 rows of 64 bytes.
    unsafe fn begin() -> Self;
    unsafe fn zero(&mut self, c: usize);
    /// 16 rows of 64 bytes, `stride` bytes apart, into A.
    unsafe fn load_a(&mut self, p: *const u32, stride: usize);
    unsafe fn load_b(&mut self, p: *const u32, stride: usize);
    /// `c += A * B` over bf16 pairs.
    unsafe fn dp(&mut self, c: usize);
    unsafe fn store(&mut self, c: usize, p: *mut f32, stride: usize);
    /// Ends this thread's use of the tiles.
    unsafe fn end(self);
}

/// The hardware: AMX-TILE and AMX-BF16 instructions.
pub(super) struct Amx;

/// `ldtilecfg`'s 64-byte operand: palette 1, `rows[t]` at byte 48 + t, `colsb[t]` at 16 + 2t.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_16x64() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = 16;
        }
        Self(c)
    }
}

/// Runs `$m!(t)` with the tile number as a literal (the instructions encode it).
macro_rules! per_tile {
    ($t:expr, $m:ident) => {
        match $t {
            0 => $m!("0"),
            1 => $m!("1"),
            2 => $m!("2"),
            3 => $m!("3"),
            4 => $m!("4"),
            _ => $m!("5"),
        }
    };
}

impl Tiles for Amx {
    #[inline(always)]
    unsafe fn begin() -> Self {
        let cfg = TileConfig::all_16x64();
        std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        Amx
    }
    #[inline(always)]
    unsafe fn zero(&mut self, c: usize) {
        macro_rules! z {
            ($t:literal) => {
                std::arch::asm!(concat!("tilezero tmm", $t), options(nostack, nomem))
            };
        }
        per_tile!(c, z)
    }
    #[inline(always)]
    unsafe fn load_a(&mut self, p: *const u32, stride: usize) {
        std::arch::asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) p, s = in(reg) stride,
            options(nostack, readonly));
    }
    #[inline(always)]
    unsafe fn load_b(&mut self, p: *const u32, stride: usize) {
        std::arch::asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) p, s = in(reg) stride,
            options(nostack, readonly));
    }
    #[inline(always)]
    unsafe fn dp(&mut self, c: usize) {
        macro_rules! d {
            ($t:literal) => {
                std::arch::asm!(
                    concat!("tdpbf16ps tmm", $t, ", tmm6, tmm7"),
                    options(nostack, nomem)
                )
            };
        }
        per_tile!(c, d)
    }
    #[inline(always)]
    unsafe fn store(&mut self, c: usize, p: *mut f32, stride: usize) {
        macro_rules! s {
            ($t:literal) => {
                std::arch::asm!(concat!("tilestored [{p} + {s}*1], tmm", $t), p = in(reg) p,
                    s = in(reg) stride, options(nostack))
            };
        }
        per_tile!(c, s)
    }
    #[inline(always)]
    unsafe fn end(self) {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
}

/// A software model of the instructions (Intel SDM pseudo-code of `tdpbf16ps`: per output
/// element, for each pair in order, `acc += a.lo * b.lo; acc += a.hi * b.hi` in f32), to test
/// the driver on CPUs without AMX.
#[cfg(test)]
pub(super) struct Emulated {
    /// 8 tiles of 16 rows x 16 32-bit elements; A is 6, B is 7.
    t: Box<[[[u32; 16]; 16]; 8]>,
}

#[cfg(test)]
impl Emulated {
    unsafe fn load(&mut self, t: usize, p: *const u32, stride: usize) {
        for r in 0..TR {
            for e in 0..16 {
                let q = (p as *const u8).add(r * stride + 4 * e) as *const u32;
                self.t[t][r][e] = q.read_unaligned();
            }
        }
    }
}

#[cfg(test)]
impl Tiles for Emulated {
    unsafe fn begin() -> Self {
        Self { t: Box::new([[[0; 16]; 16]; 8]) }
    }
    unsafe fn zero(&mut self, c: usize) {
        assert!(c < 6, "accumulator tile {c}");
        self.t[c] = [[0; 16]; 16];
    }
    unsafe fn load_a(&mut self, p: *const u32, stride: usize) {
        self.load(6, p, stride)
    }
    unsafe fn load_b(&mut self, p: *const u32, stride: usize) {
        self.load(7, p, stride)
    }
    unsafe fn dp(&mut self, c: usize) {
        assert!(c < 6, "accumulator tile {c}");
        let (lo, hi) = (|x: u32| f32::from_bits(x << 16), |x: u32| f32::from_bits(x & !0xffff));
        for m in 0..TR {
            for n in 0..16 {
                let mut acc = f32::from_bits(self.t[c][m][n]);
                for k in 0..TP {
                    let (a, b) = (self.t[6][m][k], self.t[7][k][n]);
                    acc += lo(a) * lo(b);
                    acc += hi(a) * hi(b);
                }
                self.t[c][m][n] = acc.to_bits();
            }
        }
    }
    unsafe fn store(&mut self, c: usize, p: *mut f32, stride: usize) {
        for r in 0..TR {
            for e in 0..16 {
                let q = (p as *mut u8).add(r * stride + 4 * e) as *mut u32;
                q.write_unaligned(self.t[c][r][e]);
            }
        }
    }
    unsafe fn end(self) {}
}

/// `R x C` accumulator tiles over `chunks` slices of 16 pairs, stored to `out` (`[R * 16][48]`):
/// rows of `a` are `lda` elements apart; column tile `c` of `b` starts `c * kp * 16` in.
#[inline(always)]
unsafe fn block_rc<X: Tiles, const R: usize, const C: usize>(
    x: &mut X,
    a: *const u32,
    lda: usize,
    b: *const u32,
    kp: usize,
    chunks: usize,
    out: *mut f32,
) {
    for r in 0..R {
        for c in 0..C {
            x.zero(r * CT + c);
        }
    }
    for s in 0..chunks {
        for r in 0..R {
            x.load_a(a.add(r * TR * lda + s * TP), lda * 4);
            for c in 0..C {
                x.load_b(b.add((c * kp + s * TP) * 16), 64);
                x.dp(r * CT + c);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            x.store(r * CT + c, out.add(r * TR * CT * 16 + c * 16), CT * 16 * 4);
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<X: Tiles>(
    x: &mut X,
    rt: usize,
    ct: usize,
    a: *const u32,
    lda: usize,
    b: *const u32,
    kp: usize,
    chunks: usize,
    out: *mut f32,
) {
    match (rt, ct) {
        (1, 1) => block_rc::<X, 1, 1>(x, a, lda, b, kp, chunks, out),
        (1, 2) => block_rc::<X, 1, 2>(x, a, lda, b, kp, chunks, out),
        (1, _) => block_rc::<X, 1, 3>(x, a, lda, b, kp, chunks, out),
        (_, 1) => block_rc::<X, 2, 1>(x, a, lda, b, kp, chunks, out),
        (_, 2) => block_rc::<X, 2, 2>(x, a, lda, b, kp, chunks, out),
        _ => block_rc::<X, 2, 3>(x, a, lda, b, kp, chunks, out),
    }
}

/// `dst = alpha * out (+ dst)` for `rows x cols` of a block's `[32][48]` sums.
#[target_feature(enable = "avx512f")]
unsafe fn write_block(
    out: *const f32,
    rows: usize,
    cols: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    alpha: f32,
) {
    let al = _mm512_set1_ps(alpha);
    for i in 0..rows {
        for j in (0..cols).step_by(16) {
            let mask = g::mask16(cols - j);
            let p = dst.add(i * dst_rs + j);
            let mut y = _mm512_mul_ps(_mm512_loadu_ps(out.add(i * CT * 16 + j)), al);
            if accumulate {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, p));
            }
            _mm512_mask_storeu_ps(p, mask, y);
        }
    }
}

/// Rows `0..nr` of the result from packed rows `a` (`lda` apart), every column of `bp`.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_task<X: Tiles>(
    x: &mut X,
    a: *const u32,
    lda: usize,
    bp: &[u32],
    kp: usize,
    n: usize,
    nr: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    alpha: f32,
) {
    let chunks = kp / TP;
    let q_tail = chunks * TP;
    let blocks = n.div_ceil(16);
    let mut out = [0f32; RT * TR * CT * 16];
    let mut jb = 0;
    while jb < blocks {
        let nb = (blocks - jb).min(CT);
        let cols = (n - jb * 16).min(nb * 16);
        let b = bp.as_ptr().add(jb * kp * 16);
        let mut r = 0;
        while r < nr {
            let rows = (nr - r).min(RT * TR);
            let (a, d) = (a.add(r * lda), dst.add(r * dst_rs + jb * 16));
            if chunks > 0 {
                block(x, rows.div_ceil(TR), nb, a, lda, b, kp, chunks, out.as_mut_ptr());
                write_block(out.as_ptr(), rows, cols, d, dst_rs, accumulate, alpha);
            }
            if chunks == 0 || q_tail < kp {
                // The last kp % 16 pairs on `vdpbf16ps`, added to the tiles' sums.
                let acc = accumulate || chunks > 0;
                let mut r8 = 0;
                while r8 < rows {
                    let rr = (rows - r8).min(8);
                    g::tile_any::<Bf16Pairs>(
                        rr,
                        nb,
                        a.add(r8 * lda + q_tail),
                        ALayout::rows(lda),
                        b.add(q_tail * 16),
                        kp,
                        kp - q_tail,
                        d.add(r8 * dst_rs),
                        dst_rs,
                        cols,
                        acc,
                        alpha,
                    );
                    r8 += rr;
                }
            }
            r += rows;
        }
        jb += nb;
    }
}

/// Rows `i0..i0 + rows` of `lhs` as rows of bf16 pairs `lda` apart, in a buffer of whole tiles
/// (the rows past `rows` are read by the last tile and their sums discarded).
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_lhs(a: Mat<f32>, i0: usize, rows: usize, k: usize, lda: usize, out: &mut Vec<u32>) {
    let kp = k.div_ceil(2);
    g::sized(out, rows.next_multiple_of(TR) * lda);
    if a.rs == 1 && a.cs != 1 {
        // A transposed view (dW = x^T dy): 16 rows are contiguous at each k. Pairs of 16 rows
        // for 16 consecutive pairs, transposed in registers into 16 rows of 16 pairs.
        let a0 = a.ptr.add(i0);
        let mut v = [_mm512_setzero_si512(); 16];
        for i in (0..rows).step_by(16) {
            let w = (rows - i).min(16);
            for q0 in (0..kp).step_by(16) {
                for (t, v) in v.iter_mut().enumerate() {
                    let q = q0 + t;
                    *v = if q < kp {
                        let r0 = a0.offset((2 * q) as isize * a.cs + i as isize);
                        let r1 = (2 * q + 1 < k)
                            .then(|| a0.offset((2 * q + 1) as isize * a.cs + i as isize));
                        g::interleave(r0, r1, w)
                    } else {
                        _mm512_setzero_si512()
                    };
                }
                g::transpose16(&mut v);
                for (l, v) in v.iter().enumerate().take(w) {
                    let p = out.as_mut_ptr().add((i + l) * lda + q0);
                    _mm512_mask_storeu_epi32(p as *mut _, g::mask16(kp - q0), *v);
                }
            }
        }
    } else {
        g::bf16_lhs_rows(a, i0, rows, k, lda, out);
    }
}

/// `dst[m, n] (+)= alpha * bf16(lhs) * bf16(rhs)` on `X`, then the epilogue over every row once.
///
/// # Safety
/// As [`super::gemm`]; the CPU has AVX-512 BF16 and, for [`Amx`], AMX with the tile state
/// permitted ([`available`]).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm<X: Tiles>(
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
    let par = parallel && m * n * k >= g::PAR_MIN && rayon::current_num_threads() > 1;
    g::with_packed_rhs::<Bf16Pairs>(rhs, k, n, par, |bp| {
        gemm_packed::<X>(m, n, k, dst, dst_rs, accumulate, lhs, bp, alpha, parallel, epilogue)
    });
}

/// [`gemm`] with the right operand packed by `gemm512::pack::<Bf16Pairs>`.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_packed<X: Tiles>(
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
    let kp = k.div_ceil(2);
    // Rows a whole number of tile rows apart: no A row straddles more cache lines than needed.
    let lda = kp.next_multiple_of(TP);
    let par = parallel && m * n * k >= g::PAR_MIN && rayon::current_num_threads() > 1;
    let d = SendPtr(dst);
    if par && m >= 2 * RT * TR {
        let threads = rayon::current_num_threads();
        let per = m.div_ceil(threads * 2).next_multiple_of(RT * TR).min(ROWS_PER_TASK);
        let a = SendPtr(lhs.ptr as *mut f32);
        let (rs, cs) = (lhs.rs, lhs.cs);
        (0..m.div_ceil(per)).into_par_iter().for_each(|t| {
            // Capture the whole wrappers (Send), not their raw-pointer fields (edition 2021).
            #[allow(clippy::redundant_locals)]
            let (d, a) = (d, a);
            let r0 = t * per;
            let rows = per.min(m - r0);
            g::TASK_A.with(|buf| {
                let mut buf = buf.borrow_mut();
                let lhs = Mat { ptr: a.0 as *const f32, rs, cs };
                pack_lhs(lhs, r0, rows, k, lda, &mut buf);
                let mut x = X::begin();
                let out = d.0.add(r0 * dst_rs);
                rows_task(
                    &mut x,
                    buf.as_ptr(),
                    lda,
                    bp,
                    kp,
                    n,
                    rows,
                    out,
                    dst_rs,
                    accumulate,
                    alpha,
                );
                x.end();
            });
            if let Some(epi) = epilogue {
                epi(r0, rows);
            }
        });
        return;
    }
    let mut ap = g::BUFS.with(|b| std::mem::take(&mut b.borrow_mut().0));
    pack_lhs(lhs, 0, m, k, lda, &mut ap);
    if par {
        // Few rows: split the columns (whole 48-column groups) instead.
        let group = 16 * CT;
        let a = SendPtr(ap.as_ptr() as *mut u32);
        (0..n.div_ceil(group)).into_par_iter().for_each(|gi| {
            // Capture the whole wrappers (Send), not their raw-pointer fields (edition 2021).
            #[allow(clippy::redundant_locals)]
            let (d, a) = (d, a);
            let j0 = gi * group;
            let cols = group.min(n - j0);
            let mut x = X::begin();
            let out = d.0.add(j0);
            let bp = &bp[j0 * kp..];
            rows_task(&mut x, a.0, lda, bp, kp, cols, m, out, dst_rs, accumulate, alpha);
            x.end();
        });
    } else {
        let mut x = X::begin();
        rows_task(&mut x, ap.as_ptr(), lda, bp, kp, n, m, dst, dst_rs, accumulate, alpha);
        x.end();
    }
    g::BUFS.with(|b| b.borrow_mut().0 = ap);
    if let Some(epi) = epilogue {
        epi(0, m);
    }
}

/// Whether this process can use AMX for bf16 products: the CPU has AMX-TILE, AMX-BF16 and
/// AVX-512 BF16, Linux grants the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, required
/// once per process before the first tile instruction), and the instructions reproduce the
/// `vdpbf16ps` path on a small product (a guard for hardware the tests could not run on). Decided
/// once per process.
pub fn available() -> bool {
    static A: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *A.get_or_init(|| {
        if !(cpu_has_amx() && super::bf16::available() && request_tile_state()) {
            return false;
        }
        let ok = unsafe { self_check::<Amx>() };
        if !ok {
            tracing::warn!("AMX bf16 products disagree with the AVX-512 BF16 path; not using AMX");
        }
        ok
    })
}

/// CPUID leaf 7: AMX-BF16 (edx bit 22) and AMX-TILE (edx bit 24).
fn cpu_has_amx() -> bool {
    if __cpuid(0).eax < 7 {
        return false;
    }
    let r = __cpuid_count(7, 0);
    r.edx & (1 << 22) != 0 && r.edx & (1 << 24) != 0
}

/// Asks Linux for the AMX tile data state (XFEATURE 18) for this process.
fn request_tile_state() -> bool {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// A product with every kind of tail (rows, columns, pairs), transposed operands and
/// accumulation, on AMX and on `vdpbf16ps`: equal within f32 rounding of their sums.
unsafe fn self_check<X: Tiles>() -> bool {
    let (m, n, k) = (45, 53, 75);
    let val = |i: usize, s: usize| ((i * 2654435761 + s * 97) % 1999) as f32 / 999.5 - 1.0;
    let a: Vec<f32> = (0..m * k).map(|i| val(i, 1)).collect();
    let b: Vec<f32> = (0..k * n).map(|i| val(i, 2)).collect();
    let init: Vec<f32> = (0..m * n).map(|i| val(i, 3)).collect();
    let mut ok = true;
    for lhs_t in [false, true] {
        let lhs = if lhs_t { Mat::rows(a.as_ptr(), m).t() } else { Mat::rows(a.as_ptr(), k) };
        let rhs = Mat::rows(b.as_ptr(), n);
        let (mut x, mut y) = (init.clone(), init.clone());
        gemm::<X>(m, n, k, x.as_mut_ptr(), n, true, lhs, rhs, 0.5, false, None);
        g::gemm::<Bf16Pairs>(m, n, k, y.as_mut_ptr(), n, true, lhs, rhs, 0.5, false, None);
        // |products| <= 1, so every sum's rounding error is well below 1e-4.
        ok &= x.iter().zip(&y).all(|(x, y)| (x - y).abs() <= 1e-4);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiles that lose one product of each pair, as a miscompiled or misconfigured instruction
    /// would.
    struct Broken(Emulated);

    impl Tiles for Broken {
        unsafe fn begin() -> Self {
            Broken(Emulated::begin())
        }
        unsafe fn zero(&mut self, c: usize) {
            self.0.zero(c)
        }
        unsafe fn load_a(&mut self, p: *const u32, stride: usize) {
            self.0.load_a(p, stride);
            for row in self.0.t[6].iter_mut() {
                for e in row.iter_mut() {
                    *e &= 0xffff;
                }
            }
        }
        unsafe fn load_b(&mut self, p: *const u32, stride: usize) {
            self.0.load_b(p, stride)
        }
        unsafe fn dp(&mut self, c: usize) {
            self.0.dp(c)
        }
        unsafe fn store(&mut self, c: usize, p: *mut f32, stride: usize) {
            self.0.store(c, p, stride)
        }
        unsafe fn end(self) {}
    }

    #[test]
    fn the_self_check_passes_correct_tiles_and_rejects_wrong_ones() {
        if !super::super::bf16::available() {
            println!("not tested here: the AMX self-check (it compares with AVX-512 BF16)");
            return;
        }
        unsafe {
            assert!(self_check::<Emulated>());
            assert!(!self_check::<Broken>());
        }
        println!("AMX on this CPU: {}", available());
    }
}
