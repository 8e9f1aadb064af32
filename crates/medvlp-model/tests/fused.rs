//! The fused CPU kernels (dense + bias + GELU, attention, softmax cross-entropy, embedding): finite-difference
//! gradient checks in f64, equality with the composed reference implementations (values and
//! gradients) in f64 and f32, and the untracked (inference) path.

use candle_core::{DType, Device, Tensor, Var};
use medvlp_model::gradcheck::{check, probe_like};
use medvlp_model::nn::fused::attention::{attention, attention_composed};
use medvlp_model::nn::fused::cross_entropy::{cross_entropy, cross_entropy_composed};
use medvlp_model::nn::fused::embedding::{embedding, embedding_composed};
use medvlp_model::nn::fused::linear::{linear, linear_composed, Activation};

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-5;

fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let t = Tensor::zeros(shape, DType::F64, &Device::Cpu).unwrap();
    probe_like(&t, seed).unwrap().to_dtype(dtype).unwrap()
}

fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&(randn(shape, seed, DType::F64) * 2.0).unwrap()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.to_dtype(DType::F64)
        .unwrap()
        .sub(&b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn linear_gradients_match_finite_differences() {
    for act in [Activation::Identity, Activation::Gelu] {
        for bias in [true, false] {
            let (x, w, b) = (var(&[2, 3, 5], 1), var(&[4, 5], 2), var(&[4], 3));
            let probe = randn(&[2, 3, 4], 4, DType::F64);
            let mut vars = vec![("x".into(), x.clone()), ("w".into(), w.clone())];
            if bias {
                vars.push(("b".into(), b.clone()));
            }
            let bb = bias.then(|| b.as_tensor().clone());
            let r = check(
                &vars,
                || (linear(x.as_tensor(), w.as_tensor(), bb.as_ref(), act)? * &probe)?.sum_all(),
                100,
                EPS,
                TOL,
            )
            .unwrap();
            r.assert_passed(&format!("linear {act:?} bias={bias}"));
        }
    }
}

/// Fused and composed agree on values and on every gradient, in f64 and f32.
#[test]
fn linear_equals_composed() {
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
        for act in [Activation::Identity, Activation::Gelu] {
            let x = Var::from_tensor(&randn(&[7, 33, 40], 5, dtype)).unwrap();
            let w = Var::from_tensor(&randn(&[50, 40], 6, dtype)).unwrap();
            let b = Var::from_tensor(&randn(&[50], 7, dtype)).unwrap();
            let probe = randn(&[7, 33, 50], 8, dtype);
            let y1 = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), act).unwrap();
            let y2 =
                linear_composed(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), act).unwrap();
            assert!(
                max_diff(&y1, &y2) < tol,
                "{dtype:?} {act:?} values differ by {}",
                max_diff(&y1, &y2)
            );
            let g1 = (y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                let (a, c) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                let scale = c
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
                    .max(1.0);
                assert!(
                    max_diff(a, c) / scale < tol * 10.0,
                    "{dtype:?} {act:?} d{name} differs by {}",
                    max_diff(a, c)
                );
            }
        }
    }
}

/// Sizes that take the parallel paths (row tasks, GELU epilogue on row chunks): untracked inputs
/// (GELU in place) equal tracked ones bit for bit, and both equal the composed layer on the same
/// operands, for fp32 and bf16 products (bf16: the composed layer on bf16-rounded operands).
#[test]
fn large_dense_layers_equal_composed_in_both_precisions() {
    use medvlp_model::nn::{with_precision, Precision};
    let x = randn(&[2, 300, 64], 21, DType::F32);
    let w = randn(&[512, 64], 22, DType::F32);
    let b = randn(&[512], 23, DType::F32);
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    for p in [Precision::Fp32, Precision::Bf16] {
        for bias in [None, Some(&b)] {
            for act in [Activation::Identity, Activation::Gelu] {
                let plain = with_precision(p, || linear(&x, &w, bias, act)).unwrap();
                let xv = Var::from_tensor(&x).unwrap();
                let tracked = with_precision(p, || linear(xv.as_tensor(), &w, bias, act)).unwrap();
                assert!(tracked.track_op());
                assert_eq!(
                    max_diff(&plain, &tracked),
                    0.0,
                    "{p:?} {act:?} bias {}",
                    bias.is_some()
                );
                let (xr, wr) = match p {
                    Precision::Fp32 => (x.clone(), w.clone()),
                    Precision::Bf16 => (round(&x), round(&w)),
                };
                let want = linear_composed(&xr, &wr, bias, act).unwrap();
                let d = max_diff(&plain, &want);
                assert!(d < 1e-4, "{p:?} {act:?} bias {}: differs by {d}", bias.is_some());
            }
        }
    }
}

/// A frozen layer keeps its weight packed for inference, in fp32 and bf16: the cached products
/// equal the uncached ones (odd shapes, both sides of the parallel threshold) bit for bit where
/// both run the same kernel, and to f32 rounding where fp32 inference takes the tiles and other
/// products the `gemm` crate (`avx512-inference`, `avx2-inference`); a replaced weight or the other precision is
/// packed again, and a `Var` weight never uses the cache.
#[test]
fn packed_weights_equal_packing_per_call() {
    use candle_core::Module;
    use medvlp_model::nn::fused::{bf16_gemm, f32_path, F32Path};
    use medvlp_model::nn::{with_precision, Linear, Precision};
    let same = |p: Precision, got: &Tensor, want: &Tensor, what: &str| {
        let d = max_diff(got, want);
        if p == Precision::Fp32
            && matches!(f32_path(), F32Path::Avx512Inference | F32Path::Avx2Inference)
        {
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d <= 1e-5 * (1.0 + scale as f64), "{what}: differs by {d}");
        } else {
            assert_eq!(d, 0.0, "{what}");
        }
    };
    for p in [Precision::Fp32, Precision::Bf16] {
        let run = |f: &dyn Fn() -> Tensor| with_precision(p, f);
        let packs = match p {
            Precision::Fp32 => f32_path().packs(),
            Precision::Bf16 => bf16_gemm::path() != bf16_gemm::Bf16Path::RoundedFp32,
        };
        if !packs {
            let path = match p {
                Precision::Fp32 => f32_path().name(),
                Precision::Bf16 => bf16_gemm::path().name(),
            };
            eprintln!("{p:?} kernel {path}: it has no packed form, the packed path was not tested");
        }
        for (rows, din, dout) in [(1, 17, 15), (15, 33, 49), (33, 64, 17), (600, 96, 130)] {
            let x = randn(&[rows, din], 31, DType::F32);
            let (w, b) = (randn(&[dout, din], 32, DType::F32), randn(&[dout], 33, DType::F32));
            let layer = Linear::from_parts(w.clone(), Some(b.clone()));
            for act in [Activation::Identity, Activation::Gelu] {
                let want = run(&|| linear(&x, &w, Some(&b), act).unwrap());
                for _ in 0..2 {
                    let got = run(&|| layer.forward_act(&x, act).unwrap());
                    same(p, &got, &want, &format!("{p:?} {rows}x{din}x{dout} {act:?}"));
                }
            }
            let cached = format!("{:?}", layer.packed);
            if packs {
                assert!(cached.contains(&format!("({din}, {dout})")), "{cached}");
            } else {
                assert!(cached.contains("None"), "{cached}");
            }
            // Another weight in the same layer (shared cache): packed again, not the stale one.
            let w2 = randn(&[dout, din], 34, DType::F32);
            let mut other = layer.clone();
            other.weight = w2.clone();
            let got = run(&|| other.forward(&x).unwrap());
            let want = run(&|| linear(&x, &w2, Some(&b), Activation::Identity).unwrap());
            same(p, &got, &want, &format!("{p:?} {rows}x{din}x{dout}: a stale packed weight"));
        }
    }
    // The other precision after a packed one: packed again in its own format, not reused.
    let x = randn(&[40, 24], 38, DType::F32);
    let w = randn(&[20, 24], 39, DType::F32);
    let layer = Linear::from_parts(w.clone(), None);
    for p in [Precision::Bf16, Precision::Fp32, Precision::Bf16] {
        let got = with_precision(p, || layer.forward(&x)).unwrap();
        let want = with_precision(p, || linear(&x, &w, None, Activation::Identity)).unwrap();
        same(p, &got, &want, &format!("{p:?} after the other precision"));
    }
    // Training layers leave the cache empty.
    let wv = Var::from_tensor(&randn(&[6, 8], 36, DType::F32)).unwrap();
    let layer = Linear::from_parts(wv.as_tensor().clone(), None);
    let x = randn(&[4, 8], 35, DType::F32);
    for p in [Precision::Fp32, Precision::Bf16] {
        with_precision(p, || layer.forward(&x)).unwrap();
    }
    assert!(format!("{:?}", layer.packed).contains("None"), "{:?}", layer.packed);
}

/// Without tracked inputs the op records nothing (inference path) and gives the same values.
#[test]
fn untracked_inputs_record_no_graph() {
    let x = randn(&[3, 8], 9, DType::F32);
    let w = randn(&[6, 8], 10, DType::F32);
    let y = linear(&x, &w, None, Activation::Gelu).unwrap();
    assert!(!y.track_op());
    let yc = linear_composed(&x, &w, None, Activation::Gelu).unwrap();
    assert!(max_diff(&y, &yc) < 1e-6);
    let (q, k) = (randn(&[2, 4, 8], 11, DType::F32), randn(&[2, 5, 8], 12, DType::F32));
    let (o, _) = attention(&q, &k, &k, 2, None).unwrap();
    assert!(!o.track_op());
}

fn key_mask(b: usize, lk: usize, dtype: DType) -> Tensor {
    // sample i masks its last i keys
    let v: Vec<f64> =
        (0..b).flat_map(|i| (0..lk).map(move |j| if j + i >= lk { -1e9 } else { 0.0 })).collect();
    Tensor::from_vec(v, (b, 1, 1, lk), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

#[test]
fn attention_gradients_match_finite_differences() {
    // cross-attention shape (lq != lk) with a padding mask, 2 heads
    let (q, k, v) = (var(&[2, 3, 8], 13), var(&[2, 5, 8], 14), var(&[2, 5, 8], 15));
    let mask = key_mask(2, 5, DType::F64);
    let probe = randn(&[2, 3, 8], 16, DType::F64);
    let vars = vec![("q".into(), q.clone()), ("k".into(), k.clone()), ("v".into(), v.clone())];
    let r = check(
        &vars,
        || {
            (attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), 2, Some(&mask))?.0 * &probe)?
                .sum_all()
        },
        100,
        EPS,
        TOL,
    )
    .unwrap();
    r.assert_passed("fused attention");
}

#[test]
fn attention_equals_composed() {
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        let (b, lq, lk, d, h) = (3, 17, 9, 32, 4);
        let q = Var::from_tensor(&randn(&[b, lq, d], 17, dtype)).unwrap();
        let k = Var::from_tensor(&randn(&[b, lk, d], 18, dtype)).unwrap();
        let v = Var::from_tensor(&randn(&[b, lk, d], 19, dtype)).unwrap();
        let mask = key_mask(b, lk, dtype);
        let probe = randn(&[b, lq, d], 20, dtype);
        let (y1, p1) =
            attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), h, Some(&mask)).unwrap();
        let (y2, p2) =
            attention_composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), h, Some(&mask))
                .unwrap();
        assert!(
            max_diff(&y1, &y2) < tol && max_diff(&p1, &p2) < tol,
            "{dtype:?}: {} / {}",
            max_diff(&y1, &y2),
            max_diff(&p1, &p2)
        );
        assert_eq!(p1.dims(), &[b, h, lq, lk]);
        // masked keys get exactly zero probability
        assert_eq!(
            p1.narrow(0, 2, 1)
                .unwrap()
                .narrow(3, lk - 2, 2)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            0.0
        );
        let g1 = (y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let d = max_diff(g1.get(t.as_tensor()).unwrap(), g2.get(t.as_tensor()).unwrap());
            assert!(d < tol * 10.0, "{dtype:?} d{name} differs by {d}");
        }
    }
}

/// f32 on the shapes the models run (where this CPU takes the AVX-512 per-head kernels, see
/// nn/fused/attention512.rs): values, probabilities and all three gradients against the composed
/// ops, self- and cross-attention, head widths 32 and 64, one to five 16-column vectors of keys.
#[test]
fn attention_equals_composed_on_model_shapes() {
    // (b, lq, lk, d, heads): masked ViT (17), text (64), ViT/decoder (65), cross-attention
    for (b, lq, lk, d, h) in [
        (2, 17, 17, 256, 4),
        (2, 64, 64, 256, 4),
        (2, 65, 65, 128, 4),
        (2, 64, 17, 256, 4),
        (1, 5, 70, 96, 3),
    ] {
        let q = Var::from_tensor(&randn(&[b, lq, d], 21, DType::F32)).unwrap();
        let k = Var::from_tensor(&randn(&[b, lk, d], 22, DType::F32)).unwrap();
        let v = Var::from_tensor(&randn(&[b, lk, d], 23, DType::F32)).unwrap();
        let mask = key_mask(b, lk, DType::F32);
        let probe = randn(&[b, lq, d], 24, DType::F32);
        let (y1, p1) =
            attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), h, Some(&mask)).unwrap();
        let (y2, p2) =
            attention_composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), h, Some(&mask))
                .unwrap();
        let shape = format!("{b}x{lq}x{lk}x{d}/{h}");
        assert!(max_diff(&y1, &y2) < 1e-5, "{shape}: output {}", max_diff(&y1, &y2));
        assert!(max_diff(&p1, &p2) < 1e-5, "{shape}: probabilities {}", max_diff(&p1, &p2));
        let g1 = (y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let d = max_diff(g1.get(t.as_tensor()).unwrap(), g2.get(t.as_tensor()).unwrap());
            assert!(d < 1e-4, "{shape}: d{name} differs by {d}");
        }
    }
}

/// Forward (untracked) and forward + backward of the attention op on the reference model's
/// shapes, best of 5. `cargo test --release -p medvlp-model --test fused attention_speed --
/// --ignored --nocapture`; `MEDVLP_F32_GEMM=gemm-crate` gives the `gemm` crate's products.
#[test]
#[ignore]
fn attention_speed() {
    let best = |f: &mut dyn FnMut()| {
        f();
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..10 {
                    f();
                }
                t.elapsed().as_secs_f64() / 10.0
            })
            .fold(f64::INFINITY, f64::min)
    };
    let path = medvlp_model::nn::fused::f32_path().name();
    for (what, b, lq, lk, d, h) in [
        ("ViT, all patches", 32, 65, 65, 256, 4),
        ("ViT, 25% of patches", 32, 17, 17, 256, 4),
        ("text", 32, 64, 64, 256, 4),
        ("MAE decoder", 32, 65, 65, 128, 4),
    ] {
        let q = Var::from_tensor(&randn(&[b, lq, d], 1, DType::F32)).unwrap();
        let k = Var::from_tensor(&randn(&[b, lk, d], 2, DType::F32)).unwrap();
        let v = Var::from_tensor(&randn(&[b, lk, d], 3, DType::F32)).unwrap();
        let (qd, kd, vd) = (q.as_tensor().detach(), k.as_tensor().detach(), v.as_tensor().detach());
        let fwd = best(&mut || {
            attention(&qd, &kd, &vd, h, None).unwrap();
        });
        let both = best(&mut || {
            let (y, _) = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), h, None).unwrap();
            y.sum_all().unwrap().backward().unwrap();
        });
        let flops = 4.0 * (b * h * lq * lk * (d / h)) as f64;
        println!(
            "{path}: {what} {b}x{lq}x{lk}x{d}/{h}: forward {:.3} ms ({:.0} GFLOP/s), forward + backward {:.3} ms",
            fwd * 1e3,
            flops / fwd / 1e9,
            both * 1e3
        );
    }
}

#[test]
fn embedding_gradient_and_equality() {
    // repeated ids (their gradient rows add up) and rows no id selects (zero gradient)
    let ids = Tensor::new(&[[3u32, 0, 3], [5, 3, 1]], &Device::Cpu).unwrap();
    let w = var(&[7, 5], 31);
    let probe = randn(&[2, 3, 5], 32, DType::F64);
    let vars = vec![("w".into(), w.clone())];
    let r = check(&vars, || (embedding(w.as_tensor(), &ids)? * &probe)?.sum_all(), 100, EPS, TOL)
        .unwrap();
    r.assert_passed("embedding");
    for dtype in [DType::F64, DType::F32] {
        // wider than one column task, ids in every integer dtype the models pass
        let w = Var::from_tensor(&randn(&[300, 150], 33, dtype)).unwrap();
        let ids: Vec<u32> = (0..97u32).map(|i| i * 37 % 300).chain([7, 7, 7]).collect();
        let probe = randn(&[4, 25, 150], 34, dtype);
        for ids in [
            Tensor::from_vec(ids.clone(), (4, 25), &Device::Cpu).unwrap(),
            Tensor::from_vec(
                ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                (4, 25),
                &Device::Cpu,
            )
            .unwrap(),
        ] {
            let (y1, y2) = (
                embedding(w.as_tensor(), &ids).unwrap(),
                embedding_composed(w.as_tensor(), &ids).unwrap(),
            );
            assert_eq!(y1.dims(), &[4, 25, 150]);
            assert_eq!(max_diff(&y1, &y2), 0.0, "{dtype:?} values");
            let g1 = (y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let d = max_diff(g1.get(w.as_tensor()).unwrap(), g2.get(w.as_tensor()).unwrap());
            assert!(d < 1e-5, "{dtype:?} gradient differs by {d}");
        }
    }
    // bad ids are errors, not panics; untracked weights record nothing
    let w = randn(&[4, 3], 35, DType::F32);
    assert!(embedding(&w, &Tensor::new(&[4u32], &Device::Cpu).unwrap()).is_err());
    assert!(embedding(&w, &Tensor::new(&[-1i64], &Device::Cpu).unwrap()).is_err());
    assert!(!embedding(&w, &Tensor::new(&[1u32, 2], &Device::Cpu).unwrap()).unwrap().track_op());
}

#[test]
fn cross_entropy_gradient_and_equality() {
    let x = var(&[6, 11], 21);
    let t = Tensor::new(&[0u32, 3, 10, 5, 5, 1], &Device::Cpu).unwrap();
    let vars = vec![("x".into(), x.clone())];
    let r = check(&vars, || cross_entropy(x.as_tensor(), &t), 100, EPS, TOL).unwrap();
    r.assert_passed("cross_entropy");
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        // wide rows as in MLM over a vocabulary, plus a transposed (non-contiguous) input as in ITC
        let x = Var::from_tensor(&(randn(&[40, 3000], 22, dtype) * 8.0).unwrap()).unwrap();
        let t = Tensor::from_vec(
            (0..40u32).map(|i| i * 71 % 3000).collect::<Vec<_>>(),
            40,
            &Device::Cpu,
        )
        .unwrap();
        let (l1, l2) = (
            cross_entropy(x.as_tensor(), &t).unwrap(),
            cross_entropy_composed(x.as_tensor(), &t).unwrap(),
        );
        assert!(max_diff(&l1, &l2) < tol, "{dtype:?} loss {}", max_diff(&l1, &l2));
        let (g1, g2) = (l1.backward().unwrap(), l2.backward().unwrap());
        let d = max_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
        assert!(d < tol, "{dtype:?} grad {d}");
        let sq = Var::from_tensor(&randn(&[8, 8], 23, dtype)).unwrap();
        let t8 = Tensor::arange(0u32, 8, &Device::Cpu).unwrap();
        let xt = sq.as_tensor().t().unwrap();
        assert!(
            max_diff(&cross_entropy(&xt, &t8).unwrap(), &cross_entropy_composed(&xt, &t8).unwrap())
                < tol
        );
    }
    assert!(cross_entropy(
        &randn(&[2, 3], 1, DType::F32),
        &Tensor::new(&[0u32, 3], &Device::Cpu).unwrap()
    )
    .is_err());
}

#[test]
fn linear_cross_entropy_gradient_and_equality() {
    use medvlp_model::nn::fused::cross_entropy::linear_cross_entropy;
    let (x, w, b) = (var(&[5, 6], 24), var(&[9, 6], 25), var(&[9], 26));
    let t = Tensor::new(&[0u32, 8, 3, 3, 1], &Device::Cpu).unwrap();
    let vars = vec![("x".into(), x.clone()), ("w".into(), w.clone()), ("b".into(), b.clone())];
    let r = check(
        &vars,
        || linear_cross_entropy(x.as_tensor(), w.as_tensor(), b.as_tensor(), &t),
        100,
        EPS,
        TOL,
    )
    .unwrap();
    r.assert_passed("linear_cross_entropy");
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
        let x = Var::from_tensor(&randn(&[30, 64], 27, dtype)).unwrap();
        let w = Var::from_tensor(&randn(&[2000, 64], 28, dtype)).unwrap();
        let b = Var::from_tensor(&randn(&[2000], 29, dtype)).unwrap();
        let t = Tensor::from_vec(
            (0..30u32).map(|i| i * 67 % 2000).collect::<Vec<_>>(),
            30,
            &Device::Cpu,
        )
        .unwrap();
        let l1 = linear_cross_entropy(x.as_tensor(), w.as_tensor(), b.as_tensor(), &t).unwrap();
        let l2 = cross_entropy_composed(
            &linear_composed(
                x.as_tensor(),
                w.as_tensor(),
                Some(b.as_tensor()),
                Activation::Identity,
            )
            .unwrap(),
            &t,
        )
        .unwrap();
        assert!(max_diff(&l1, &l2) < tol, "{dtype:?} loss {}", max_diff(&l1, &l2));
        let (g1, g2) = (l1.backward().unwrap(), l2.backward().unwrap());
        for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
            let d = max_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(d < tol, "{dtype:?} d{name} differs by {d}");
        }
    }
}

/// bf16 dense layers (AVX-512 BF16 CPUs only) keep a model's image embeddings within cosine 0.999
/// of fp32.
#[test]
fn bf16_inference_embeddings_match_fp32() {
    use medvlp_model::nn::{with_precision, Precision};
    let cfg = medvlp_model::ModelConfig::preset("tiny").unwrap();
    let store = medvlp_model::ParamStore::new(3, DType::F32, &Device::Cpu).frozen();
    let model = medvlp_model::MedVlp::new(&cfg, &store).unwrap();
    let s = cfg.vision_config.image_size;
    let px = randn(&[4, cfg.vision_config.num_channels, s, s], 30, DType::F32);
    let e32 = model.image_embeds(&px).unwrap();
    let e16 = with_precision(Precision::Bf16, || model.image_embeds(&px)).unwrap();
    assert!(max_diff(&e32, &e16) > 0.0, "the bf16 path was not taken");
    let cos = (e32 * e16).unwrap().sum(1).unwrap().min(0).unwrap().to_scalar::<f32>().unwrap();
    println!(
        "bf16 ({}) vs fp32 image embeddings: min cosine {cos}",
        medvlp_model::nn::fused::bf16_gemm::path().name()
    );
    assert!(cos >= 0.999, "cosine {cos}");
}

/// `encode::image_embeds` / `text_embeds` (the batch split across the cores) give the model's
/// own embeddings, in order.
#[test]
fn batch_ranges_give_the_models_embeddings() {
    let cfg = medvlp_model::ModelConfig::preset("tiny").unwrap();
    let store = medvlp_model::ParamStore::new(4, DType::F32, &Device::Cpu).frozen();
    let model = medvlp_model::MedVlp::new(&cfg, &store).unwrap();
    let s = cfg.vision_config.image_size;
    let px = randn(&[5, cfg.vision_config.num_channels, s, s], 31, DType::F32);
    let whole = model.image_embeds(&px).unwrap();
    let ranged = medvlp_model::encode::image_embeds(&model, &px).unwrap();
    assert!(max_diff(&whole, &ranged) < 1e-6, "{}", max_diff(&whole, &ranged));
    let (b, l) = (5, 9);
    let ids: Vec<u32> = (0..b * l).map(|i| (i * 37 % 500) as u32 + 5).collect();
    let ids = Tensor::from_vec(ids, (b, l), &Device::Cpu).unwrap();
    let m: Vec<f32> = (0..b * l).map(|i| (i % l < 3 + i / l) as u8 as f32).collect();
    let mask = Tensor::from_vec(m, (b, l), &Device::Cpu).unwrap();
    let whole = model.text_embeds(&ids, &mask).unwrap();
    let ranged = medvlp_model::encode::text_embeds(&model, &ids, &mask).unwrap();
    assert!(max_diff(&whole, &ranged) < 1e-6, "{}", max_diff(&whole, &ranged));
}

/// The finite-difference checks again with the composed ops a CUDA device runs.
#[test]
fn gradient_checks_pass_on_the_composed_path() {
    use medvlp_model::nn::fused::{with_kernels, Kernels};
    with_kernels(Kernels::Composed, || {
        linear_gradients_match_finite_differences();
        attention_gradients_match_finite_differences();
        cross_entropy_gradient_and_equality();
        linear_cross_entropy_gradient_and_equality();
    });
}
