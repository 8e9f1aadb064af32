//! The GEMM of bf16 autocast on the CPU: `dst (+)= alpha * lhs * rhs` with both operands rounded
//! to bf16 (round to nearest even) and every product accumulated in f32, PyTorch's autocast
//! semantics. Four implementations, chosen at run time ([`path`]):
//!
//! - `amx`: AMX tiles (`tdpbf16ps`, [`super::amx`]) on CPUs with AMX-BF16 (Intel Sapphire Rapids
//!   and later), the default wherever Linux grants the tile state and the instructions pass a
//!   check at first use;
//! - `avx512bf16`: operands packed as bf16 pairs along k, `vdpbf16ps` (two bf16 products per f32
//!   lane per instruction) in an 8-row x 48-column register tile ([`super::gemm512`]). On AMD
//!   Zen 4 this is twice the fp32 FMA rate (309-353 against 150-199 GFLOP/s on 2 cores);
//! - `avx512-fp32`: the operands are rounded to bf16 while they are packed and the AVX-512 fp32
//!   FMA tile multiplies them. On an Intel Xeon without AMX (family 6, model 207) `vdpbf16ps`
//!   runs at half the rate of its two FMA ports (tile ceilings 86 against 172 GFLOP/s per core),
//!   and this path trained the reference model 18% faster (paired runs: 0.89 against 1.09-1.15 s
//!   per step) and encoded 42% faster (384 against 271 images/s);
//! - `rounded-fp32` on CPUs without AVX-512: rounded copies of the operands through the `gemm`
//!   crate.
//!
//! A bf16 x bf16 product is exact in f32, so the four differ only by summation order.

use super::{Epilogue, Mat, SendPtr};
use rayon::prelude::*;

/// Which bf16 GEMM this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    Amx,
    Avx512Bf16,
    Avx512Fp32,
    RoundedFp32,
}

impl Bf16Path {
    pub const ALL: [Bf16Path; 4] =
        [Bf16Path::Amx, Bf16Path::Avx512Bf16, Bf16Path::Avx512Fp32, Bf16Path::RoundedFp32];

    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx",
            Self::Avx512Bf16 => "avx512bf16",
            Self::Avx512Fp32 => "avx512-fp32",
            Self::RoundedFp32 => "rounded-fp32",
        }
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Amx => super::amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Amx => false,
            Self::Avx512Bf16 => super::bf16::available(),
            Self::Avx512Fp32 => super::avx512f(),
            Self::RoundedFp32 => true,
        }
    }

    /// Whether bf16 products are faster than fp32 ones on this path (so that bf16 autocast pays).
    pub fn native(self) -> bool {
        matches!(self, Self::Amx | Self::Avx512Bf16)
    }
}

/// The path of this process: `MEDVLP_BF16_GEMM` (`amx`, `avx512bf16`, `avx512-fp32` or
/// `rounded-fp32`) forces one the CPU can run (tests compare them); by default `amx` where it is
/// available, `avx512bf16` on AMD CPUs with AVX-512 BF16, `avx512-fp32` on other CPUs with
/// AVX-512, `rounded-fp32` elsewhere.
pub fn path() -> Bf16Path {
    static P: std::sync::OnceLock<Bf16Path> = std::sync::OnceLock::new();
    *P.get_or_init(|| {
        let all = Bf16Path::ALL;
        if let Ok(forced) = std::env::var("MEDVLP_BF16_GEMM") {
            match all.into_iter().find(|p| p.name() == forced) {
                Some(p) if p.available() => return p,
                Some(p) => tracing::warn!("MEDVLP_BF16_GEMM={forced}: this CPU cannot run {p:?}"),
                None => tracing::warn!("MEDVLP_BF16_GEMM={forced:?} is not one of amx, avx512bf16, avx512-fp32, rounded-fp32"),
            }
        }
        if Bf16Path::Amx.available() {
            Bf16Path::Amx
        } else if Bf16Path::Avx512Bf16.available() && super::cpu_is_amd() {
            Bf16Path::Avx512Bf16
        } else if Bf16Path::Avx512Fp32.available() {
            Bf16Path::Avx512Fp32
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

/// `dst[m, n] (+)= alpha * bf16(lhs)[m, k] * bf16(rhs)[k, n]` in f32 on path `p` (which the CPU
/// runs; [`path`] is this process's), then the epilogue over every row once (see
/// [`super::gemm_then`]).
///
/// # Safety
/// As [`super::gemm`]: the views are valid for their extents and `dst` aliases neither operand.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_bf16(
    p: Bf16Path,
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
    #[cfg(target_arch = "x86_64")]
    use super::gemm512 as g;
    match p {
        #[cfg(target_arch = "x86_64")]
        Bf16Path::Amx => super::amx::gemm::<super::amx::Amx>(
            m, n, k, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel, epilogue,
        ),
        #[cfg(target_arch = "x86_64")]
        Bf16Path::Avx512Bf16 => g::gemm::<g::Bf16Pairs>(
            m, n, k, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel, epilogue,
        ),
        #[cfg(target_arch = "x86_64")]
        Bf16Path::Avx512Fp32 => g::gemm::<g::F32Rounded>(
            m, n, k, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel, epilogue,
        ),
        _ => {
            rounded(m, n, k, dst, dst_rs, accumulate, lhs, rhs, alpha, parallel);
            if let Some(epi) = epilogue {
                epi(0, m);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::super::test_data::{data, ODD_SHAPES};
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

    /// A bf16 GEMM under test: `(m, n, k, dst, accumulate, lhs, rhs)` with alpha 0.5 and `dst`'s
    /// row stride n.
    type Run<'a> = &'a dyn Fn(usize, usize, usize, *mut f32, bool, Mat<f32>, Mat<f32>);

    fn check(
        p: Bf16Path,
        m: usize,
        n: usize,
        k: usize,
        transposed: bool,
        accumulate: bool,
        lhs_t: bool,
    ) {
        let run = |m, n, k, dst, accumulate, lhs, rhs| unsafe {
            gemm_bf16(p, m, n, k, dst, n, accumulate, lhs, rhs, 0.5, true, None)
        };
        check_run(p.name(), &run, m, n, k, transposed, accumulate, lhs_t)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_run(
        name: &str,
        run: Run<'_>,
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
        let lhs = if lhs_t { Mat::rows(at.as_ptr(), m).t() } else { Mat::rows(a.as_ptr(), k) };
        run(m, n, k, dst.as_mut_ptr(), accumulate, lhs, rhs);
        let zero = vec![0f32; m * n];
        let want = reference(&a, &b, m, n, k, 0.5, if accumulate { &init } else { &zero });
        for (i, (g, w)) in dst.iter().zip(&want).enumerate() {
            // f32 accumulation of exact products: relative to the sum of magnitudes.
            let scale: f64 = (0..k)
                .map(|p| (a[(i / n) * k + p] as f64 * b[p * n + i % n] as f64).abs())
                .sum::<f64>()
                * 0.5
                + 1.0;
            assert!((*g as f64 - w).abs() <= 2e-6 * scale, "{name} {m}x{n}x{k} ({i}): {g} vs {w}");
        }
    }

    #[test]
    fn bf16_gemm_equals_the_f64_reference_on_odd_shapes() {
        let mut paths = vec![];
        for p in Bf16Path::ALL {
            if p.available() {
                paths.push(p);
            } else {
                println!(
                    "not tested here: the {} path (this CPU lacks its instructions)",
                    p.name()
                );
            }
        }
        for p in paths {
            for &(m, n, k) in ODD_SHAPES {
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

    /// The AMX driver (packing, blocks, tails, threading) on a software model of the tile
    /// instructions, so that it is checked on CPUs without AMX too; the test above runs it on the
    /// hardware where there is one.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_driver_on_emulated_tiles_equals_the_f64_reference_on_odd_shapes() {
        use super::super::amx;
        if !super::super::bf16::available() {
            println!("not tested here: the AMX driver (its tails need AVX-512 BF16)");
            return;
        }
        let run = |m, n, k, dst, accumulate, lhs, rhs| unsafe {
            amx::gemm::<amx::Emulated>(m, n, k, dst, n, accumulate, lhs, rhs, 0.5, true, None)
        };
        let mut shapes = ODD_SHAPES.to_vec();
        // Several whole blocks and tasks, with and without a tail of pairs.
        shapes.extend([(300, 130, 96), (97, 50, 65), (64, 48, 32)]);
        for (m, n, k) in shapes {
            for transposed in [false, true] {
                for accumulate in [false, true] {
                    for lhs_t in [false, true] {
                        check_run("amx-emulated", &run, m, n, k, transposed, accumulate, lhs_t);
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
        // `MEDVLP_SPEED_SHAPES="m,n,k,lhs_t,rhs_t;..."` (lhs_t/rhs_t 0 or 1: the operand is a
        // transposed view, as `g^T` in a weight gradient or `W^T` in a dense layer) replaces the
        // default shapes; `MEDVLP_SPEED_FP32_ONLY=1` skips the bf16 paths. An optional sixth
        // field 1 marks a GELU layer's forward product ("fp32 step" packs its weight per call).
        let shapes: Vec<(usize, usize, usize, bool, bool, bool)> =
            match std::env::var("MEDVLP_SPEED_SHAPES") {
                Ok(v) => v
                    .split(';')
                    .map(|t| {
                        let f: Vec<usize> =
                            t.split(',').map(|x| x.trim().parse().unwrap()).collect();
                        (f[0], f[1], f[2], f[3] == 1, f[4] == 1, f.get(5) == Some(&1))
                    })
                    .collect(),
                Err(_) => vec![
                    (2080, 1024, 256, false, true, true),
                    (2080, 256, 1024, false, true, false),
                    (256, 1024, 2080, true, false, false),
                    (2080, 256, 256, false, true, false),
                    (65, 65, 64, false, true, false),
                ],
            };
        for &(m, n, k, ta, tb, gelu) in &shapes {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut c = vec![0f32; m * n];
            let rhs = if tb { Mat::rows(b.as_ptr(), k).t() } else { Mat::rows(b.as_ptr(), n) };
            let lhs = if !ta { Mat::rows(a.as_ptr(), k) } else { Mat::rows(a.as_ptr(), m).t() };
            let flops = 2.0 * (m * n * k) as f64;
            let paths = match std::env::var_os("MEDVLP_SPEED_FP32_ONLY") {
                Some(_) => vec![],
                None => Bf16Path::ALL.to_vec(),
            };
            type Run<'a> = Box<dyn Fn(*mut f32) + 'a>;
            let mut runs: Vec<(String, Run<'_>)> = vec![
                (
                    "fp32 gemm-crate".into(),
                    Box::new(|c| unsafe {
                        super::super::gemm_crate(m, n, k, c, n, false, lhs, rhs, 1.0, true)
                    }),
                ),
                (
                    // what an fp32 op runs: the path `MEDVLP_F32_GEMM` or the CPU selects
                    format!("fp32 default ({})", super::super::f32_path().name()),
                    Box::new(|c| unsafe {
                        super::super::gemm(
                            m,
                            n,
                            k,
                            c,
                            n,
                            false,
                            lhs,
                            rhs,
                            1.0,
                            true,
                            super::super::Products::Fp32,
                        )
                    }),
                ),
            ];
            if !(ta && tb) {
                runs.push((
                    // what the dense layer's op runs in a training step: weight gradients and
                    // the MLM head's input gradient split over k, GELU layers' weights packed
                    "fp32 step".into(),
                    Box::new(|_| {
                        std::hint::black_box(unsafe {
                            super::super::linear::step_product(m, n, k, ta, tb, gelu, &a, &b)
                        });
                    }),
                ));
            }
            #[cfg(target_arch = "x86_64")]
            if super::super::avx512f() {
                runs.push((
                    "fp32 avx512".into(),
                    Box::new(|c| unsafe {
                        super::super::gemm512::gemm::<super::super::gemm512::F32>(
                            m, n, k, c, n, false, lhs, rhs, 1.0, true, None,
                        )
                    }),
                ));
            }
            for p in paths.into_iter().filter(|p| p.available()) {
                runs.push((
                    format!("bf16 {}", p.name()),
                    Box::new(move |c| unsafe {
                        gemm_bf16(p, m, n, k, c, n, false, lhs, rhs, 1.0, true, None)
                    }),
                ));
            }
            for (name, f) in runs {
                // as bench/gemm_vs_torch.sh times PyTorch
                let reps = if m * n * k < 1 << 20 { 200 } else { 5 };
                let s = super::super::test_data::best_secs(reps, &mut || f(c.as_mut_ptr()));
                println!(
                    "{m}x{n}x{k}{}{}: {name} {:.2} ms, {:.1} GFLOP/s",
                    if ta { " lhs^T" } else { "" },
                    if tb { " rhs^T" } else { "" },
                    s * 1e3,
                    flops / s / 1e9
                );
            }
        }
    }
}
