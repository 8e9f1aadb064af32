//! Vectorisable f32 `exp` and GELU for the kernels' inner loops, compiled three times: for the
//! baseline target, with AVX2 and FMA, and with AVX-512 (picked at run time by
//! [`super::cpu::level`]), so that the loops use 8- or 16-lane registers and fused multiply-adds
//! where the CPU has them. libm's `expf` is a scalar call that
//! stops the compiler from vectorising; written here because no maintained crate offers this
//! without nightly features.

/// `a * b + c`: one fused multiply-add where the loop is compiled for a CPU with FMA (`F`), else
/// a multiply and an add (a scalar `mul_add` without the instruction is a slow library call).
/// Rust never contracts `a * b + c` by itself, so the polynomials below spell it out.
#[inline(always)]
fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `exp(x)` for f32: range reduction `x = n ln2 + r`, a degree-6 polynomial on |r| <= ln2/2,
/// `2^n` from the exponent bits. Relative error ~2 ulp; exactly 0 below -87.3 (masked scores),
/// NaN stays NaN, +inf above 88.7.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_k::<false>(x)
}

#[inline(always)]
fn exp_k<const F: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let t = fma::<F>(xc, LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = fma::<F>(-n, LN2_LO, fma::<F>(-n, LN2_HI, xc));
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = fma::<F>(p, r, c);
    }
    // n as an integer from t's low mantissa bits: `n as i32` is a saturating cast, which LLVM
    // does not vectorise (it went lane by lane). |n| <= 127, so 2^n is a valid normal float.
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits((ni.wrapping_add(127) << 23) as u32);
    let y = p * scale;
    // Selects, not branches, so that the loops stay vectorised.
    let y = if x < -87.3 { 0.0 } else { y };
    let y = if x > 88.7 { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// erf (Abramowitz & Stegun 7.1.26, absolute error <= 1.5e-7).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    erf_with_exp::<false>(x, exp_f32(-x * x))
}

/// erf given `e = exp(-x^2)` (GELU's gradient shares it with the normal density).
#[inline(always)]
fn erf_with_exp<const F: bool>(x: f32, e: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / fma::<F>(0.327_591_1, a, 1.0);
    let mut p = 1.061_405_4;
    for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
        p = fma::<F>(p, t, c);
    }
    fma::<F>(-(p * t), e, 1.0).copysign(x)
}

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
pub fn gelu_f32(x: f32) -> f32 {
    gelu_k::<false>(x)
}

#[inline(always)]
fn gelu_k<const F: bool>(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    0.5 * x * (1.0 + erf_with_exp::<F>(u, exp_k::<F>(-u * u)))
}

#[inline(always)]
pub fn gelu_grad_f32(x: f32) -> f32 {
    gelu_grad_k::<false>(x)
}

#[inline(always)]
fn gelu_grad_k<const F: bool>(x: f32) -> f32 {
    // exp(-(x / sqrt 2)^2) is the density's exp(-x^2 / 2): computed once.
    let e = exp_k::<F>(-0.5 * x * x);
    let cdf = 0.5 * (1.0 + erf_with_exp::<F>(x * std::f32::consts::FRAC_1_SQRT_2, e));
    fma::<F>(x * e, FRAC_1_SQRT_2PI, cdf)
}

/// Defines `pub fn $name(args) -> ret`, which runs `$body` compiled for the kernels' level
/// ([`super::cpu::level`]): with AVX-512, with AVX2 and FMA, or for the baseline target; and a
/// module `$name` whose `at(level, args)` runs it at a given level (at most the CPU's), so that
/// tests compare the three builds on one machine.
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),*) -> $r:ty $body:block) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) -> $r {
            $name::run(super::cpu::level(), $($a),*)
        }
        pub(crate) mod $name {
            #[allow(unused_imports)] // (bodies that need nothing from the module)
            use super::*;
            use super::super::cpu::{self, CpuLevel};

            #[inline(always)]
            fn imp<const F: bool>($($a: $t),*) -> $r $body

            /// At level `l`, lowered to what this CPU has.
            #[allow(dead_code)] // the tests' entry
            pub(crate) fn at(l: CpuLevel, $($a: $t),*) -> $r {
                run(l.min(cpu::detected()), $($a),*)
            }

            /// At level `l`, which the CPU has.
            #[inline(always)]
            pub(super) fn run(l: CpuLevel, $($a: $t),*) -> $r {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                    unsafe fn avx512($($a: $t),*) -> $r {
                        imp::<true>($($a),*)
                    }
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($($a: $t),*) -> $r {
                        imp::<true>($($a),*)
                    }
                    // SAFETY: callers pass a level this CPU has (`cpu::level` never exceeds it).
                    match l {
                        CpuLevel::Avx512 => return unsafe { avx512($($a),*) },
                        CpuLevel::Avx2 => return unsafe { avx2($($a),*) },
                        CpuLevel::Baseline => {}
                    }
                }
                let _ = l;
                imp::<false>($($a),*)
            }
        }
    };
}

dispatch! {
    /// The largest element (NaN never wins; -inf for an empty slice), over [`MAX_LANES`] running
    /// maxima: one running maximum is a chain of compare-and-select that stays scalar. The MLM
    /// head's 30522-wide rows made that loop about 1.6% of the fp32 reference step.
    fn max_of(x: &[f32]) -> f32 {
        let mut m = [f32::NEG_INFINITY; MAX_LANES];
        let mut chunks = x.chunks_exact(MAX_LANES);
        for c in &mut chunks {
            for (m, &v) in m.iter_mut().zip(c) {
                *m = if v > *m { v } else { *m };
            }
        }
        let mut r = f32::NEG_INFINITY;
        for &v in m.iter().chain(chunks.remainder()) {
            r = if v > r { v } else { r };
        }
        r
    }
}

/// Running maxima of [`max_of`].
const MAX_LANES: usize = 16;

dispatch! {
    /// `sum_i exp(x_i - shift)`.
    fn exp_sum(x: &[f32], shift: f32) -> f32 {
        let mut s = [0f32; 16];
        let chunks = x.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..16 {
                s[i] += exp_k::<F>(c[i] - shift);
            }
        }
        let mut t: f32 = s.iter().sum();
        for &v in rest {
            t += exp_k::<F>(v - shift);
        }
        t
    }
}

dispatch! {
    /// `x_i <- exp(x_i - shift)`; returns their sum.
    fn exp_inplace_sum(x: &mut [f32], shift: f32) -> f32 {
        let mut s = [0f32; 16];
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            for i in 0..16 {
                c[i] = exp_k::<F>(c[i] - shift);
                s[i] += c[i];
            }
        }
        let mut t: f32 = s.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp_k::<F>(*v - shift);
            t += *v;
        }
        t
    }
}

dispatch! {
    /// `x_i <- exp(x_i - shift) * scale`.
    fn exp_scale_inplace(x: &mut [f32], shift: f32, scale: f32) -> () {
        for v in x.iter_mut() {
            *v = exp_k::<F>(*v - shift) * scale;
        }
    }
}

dispatch! {
    /// `y_i <- gelu(x_i)`.
    fn gelu_into(x: &[f32], y: &mut [f32]) -> () {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = gelu_k::<F>(x);
        }
    }
}

dispatch! {
    /// `x_i <- gelu(x_i)`.
    fn gelu_inplace(x: &mut [f32]) -> () {
        for v in x.iter_mut() {
            *v = gelu_k::<F>(*v);
        }
    }
}

dispatch! {
    /// `x[r, j] <- x[r, j] + b[j]` for the rows of `x` (`b.len()` wide): a bias after a product.
    fn add_rows(x: &mut [f32], b: &[f32]) -> () {
        if b.is_empty() {
            return;
        }
        for row in x.chunks_exact_mut(b.len()) {
            for (v, &c) in row.iter_mut().zip(b) {
                *v += c;
            }
        }
    }
}

dispatch! {
    /// `x[r, j] <- gelu(x[r, j] + b[j])`: bias and GELU in one pass.
    fn bias_gelu_inplace(x: &mut [f32], b: &[f32]) -> () {
        if b.is_empty() {
            return;
        }
        for row in x.chunks_exact_mut(b.len()) {
            for (v, &c) in row.iter_mut().zip(b) {
                *v = gelu_k::<F>(*v + c);
            }
        }
    }
}

dispatch! {
    /// `y_i <- g_i * gelu'(h_i)`.
    fn gelu_backward_into(g: &[f32], h: &[f32], y: &mut [f32]) -> () {
        for ((y, &g), &h) in y.iter_mut().zip(g).zip(h) {
            *y = g * gelu_grad_k::<F>(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu::{self, CpuLevel};
    use super::*;

    /// Every loop at every level this CPU has: the AVX2 and AVX-512 builds give the same bits
    /// (both fuse the same multiply-adds, lane by lane), the baseline build agrees within the
    /// functions' error bounds; reductions over odd lengths exercise the remainders.
    #[test]
    fn every_level_computes_the_same() {
        let levels: Vec<CpuLevel> =
            CpuLevel::ALL.into_iter().filter(|&l| l <= cpu::detected()).collect();
        println!(
            "vmath levels tested: {:?}; not on this CPU: {:?}",
            levels.iter().map(|l| l.name()).collect::<Vec<_>>(),
            CpuLevel::ALL
                .iter()
                .filter(|l| !levels.contains(l))
                .map(|l| l.name())
                .collect::<Vec<_>>()
        );
        for n in [0usize, 1, 7, 15, 16, 17, 33, 1000] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.17).collect();
            let g: Vec<f32> = (0..n).map(|i| ((i * 11 % 7) as f32 - 3.0) * 0.5).collect();
            let run = |l: CpuLevel| {
                let mut e = x.clone();
                let s = exp_inplace_sum::at(l, &mut e, 1.5);
                let mut es = x.clone();
                exp_scale_inplace::at(l, &mut es, 1.5, 0.25);
                let (mut y, mut yi, mut dy) = (vec![0f32; n], x.clone(), vec![0f32; n]);
                gelu_into::at(l, &x, &mut y);
                gelu_inplace::at(l, &mut yi);
                gelu_backward_into::at(l, &g, &x, &mut dy);
                // rows 7 wide (n = 15, 16, 17... leave a partial row alone)
                let w = n.min(7);
                let whole_rows = n.checked_div(w).map_or(0, |r| r * w);
                let (mut ar, mut bg) = (x.clone(), x.clone());
                add_rows::at(l, &mut ar, &g[..w]);
                bias_gelu_inplace::at(l, &mut bg, &g[..w]);
                // bias then GELU in one pass is the two passes, bit for bit
                let mut two = ar.clone();
                gelu_inplace::at(l, &mut two[..whole_rows]);
                assert_eq!(two, bg, "{} n={n}", l.name());
                let sums = [max_of::at(l, &x), exp_sum::at(l, &x, 1.5), s];
                (sums, [e, es, y, yi, dy, ar, bg])
            };
            let (want_sums, want) = run(levels[0]);
            for &l in &levels[1..] {
                let (sums, got) = run(l);
                for (a, b) in sums.iter().zip(&want_sums) {
                    // (an empty slice's maximum is -inf at every level)
                    assert!(
                        a == b || (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{} n={n}",
                        l.name()
                    );
                }
                for (v, w) in got.iter().zip(&want) {
                    for (a, b) in v.iter().zip(w) {
                        assert!((a - b).abs() <= 2e-6 * b.abs().max(1.0), "{} n={n}", l.name());
                    }
                }
            }
            if levels.contains(&CpuLevel::Avx512) {
                let (a, b) = (run(CpuLevel::Avx2), run(CpuLevel::Avx512));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a.0), bits(&b.0), "n={n}");
                for (v, w) in a.1.iter().zip(&b.1) {
                    assert_eq!(bits(v), bits(w), "n={n}");
                }
            }
        }
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp_f32(-1e9), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        let v: Vec<f32> = (0..37).map(|i| i as f32 * 0.1 - 2.0).collect();
        let s = exp_sum(&v, 0.5);
        let r: f32 = v.iter().map(|x| (x - 0.5).exp()).sum();
        assert!((s - r).abs() / r < 1e-6);
    }

    #[test]
    fn gelu_grad_matches_the_f64_derivative() {
        let xs: Vec<f32> = (0..2001).map(|i| i as f32 * 0.01 - 10.0).collect();
        let g = vec![1f32; xs.len()];
        let mut y = vec![0f32; xs.len()];
        gelu_backward_into(&g, &xs, &mut y);
        for (&x, &y) in xs.iter().zip(&y) {
            let x64 = x as f64;
            let cdf = 0.5 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let r = cdf + x64 * pdf;
            assert!((y as f64 - r).abs() < 2e-6, "gelu'({x}) = {y}, want {r}");
        }
    }

    #[test]
    fn gelu_and_its_gradient_saturate_in_the_tails_and_keep_nan() {
        let xs = [20.0f32, 1e4, 1e30, f32::INFINITY, -20.0, -1e4, -1e30, f32::NAN];
        let (mut y, mut dy) = ([0f32; 8], [0f32; 8]);
        gelu_into(&xs, &mut y);
        gelu_backward_into(&[1.0; 8], &xs, &mut dy);
        // the vectorised loops and the scalar functions (the baseline build) agree
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for i in 0..8 {
            assert!(same(y[i], gelu_f32(xs[i])), "gelu({})", xs[i]);
            assert!(same(dy[i], gelu_grad_f32(xs[i])), "gelu'({})", xs[i]);
        }
        assert_eq!(&y[..4], &xs[..4]);
        assert!(y[4..7].iter().all(|&v| v == 0.0));
        // (at +-inf the gradient is cdf + inf * 0, NaN, as PyTorch's formula gives)
        assert_eq!(&dy[..3], &[1.0; 3]);
        assert!(dy[4..7].iter().all(|&v| v == 0.0));
        assert!(y[7].is_nan() && dy[7].is_nan());
    }

    #[test]
    fn gelu_matches_libm_erf() {
        let xs: Vec<f32> = (0..2001).map(|i| i as f32 * 0.01 - 10.0).collect();
        let mut y = vec![0f32; xs.len()];
        gelu_into(&xs, &mut y);
        for (&x, &y) in xs.iter().zip(&y) {
            let r = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2));
            assert!((y as f64 - r).abs() < 1e-6 * (1.0 + r.abs()), "gelu({x}) = {y}, want {r}");
        }
    }

    /// The loops (with FMA where the CPU has it) against f64: exp within 5e-7 relative, GELU
    /// within 2e-6 absolute, as the scalar functions.
    #[test]
    fn vector_loops_match_f64() {
        let xs: Vec<f32> = (0..20001).map(|i| i as f32 * 0.0087 - 87.0).collect();
        let mut e = xs.clone();
        exp_inplace_sum(&mut e, 0.0);
        for (&x, &y) in xs.iter().zip(&e) {
            let r = (x as f64).exp();
            assert!(((y as f64 - r) / r).abs() < 5e-7, "exp({x}) = {y}, want {r}");
        }
        let xs: Vec<f32> = (0..4001).map(|i| i as f32 * 0.005 - 10.0).collect();
        let mut y = vec![0f32; xs.len()];
        gelu_into(&xs, &mut y);
        for (&x, &y) in xs.iter().zip(&y) {
            let x64 = x as f64;
            let r = 0.5 * x64 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
            assert!((y as f64 - r).abs() < 2e-6, "gelu({x}) = {y}, want {r}");
        }
    }

    #[test]
    fn max_of_finds_the_largest_element_and_skips_nan() {
        for n in [0usize, 1, 15, 16, 17, 100] {
            for at in [0, n / 2, n.saturating_sub(1)] {
                let mut v: Vec<f32> = (0..n).map(|i| -((i * 7 % 13) as f32)).collect();
                if n > 0 {
                    v[at] = 5.0;
                }
                let want = if n == 0 { f32::NEG_INFINITY } else { 5.0 };
                assert_eq!(max_of(&v), want, "n {n} at {at}");
            }
        }
        let v = [f32::NAN, -3.0, f32::NAN, -1.0, -2.0];
        assert_eq!(max_of(&v), -1.0);
        assert_eq!(max_of(&[f32::NAN; 20]), f32::NEG_INFINITY);
    }

    /// One core's element rate of the vector loops (best of 5 passes over 1M elements, in L2):
    /// `cargo test --release -p medvlp-model --lib vmath_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn vmath_speed() {
        let n = 1 << 20;
        let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.01 - 5.0).collect();
        let g = vec![1f32; n];
        let mut y = vec![0f32; n];
        let best = |name: &str, f: &mut dyn FnMut()| {
            let s = super::super::test_data::best_secs(1, f);
            println!("{name}: {:.2} G elements/s", n as f64 / s / 1e9);
        };
        best("gelu_into", &mut || gelu_into(&x, &mut y));
        best("gelu_backward_into", &mut || gelu_backward_into(&g, &x, &mut y));
        let mut z = x.clone();
        best("exp_inplace_sum", &mut || {
            z.copy_from_slice(&x);
            std::hint::black_box(exp_inplace_sum(&mut z, 1.0));
        });
        best("exp_sum", &mut || {
            std::hint::black_box(exp_sum(&x, 1.0));
        });
    }
}
