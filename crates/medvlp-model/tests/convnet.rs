//! The convolution primitives and the ConvNet image encoder: finite-difference checks (f64),
//! the im2col kernel against its composed reference, and masked encoding.

use candle_core::{DType, Device, Tensor, Var};
use medvlp_model::config::VisionConfig;
use medvlp_model::convnet::ConvNet;
use medvlp_model::gradcheck::{check, probe_like};
use medvlp_model::masking::PatchMask;
use medvlp_model::nn::conv::{col2im, conv2d, conv2d_composed, im2col, im2col_composed};
use medvlp_model::nn::{Conv2d, Window};
use medvlp_model::ParamStore;
use rand::SeedableRng;

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-5;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    probe_like(&Tensor::zeros(shape, DType::F64, &Device::Cpu).unwrap(), seed).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
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
}

const WINDOWS: [Window; 6] = [
    Window { kernel: 3, stride: 1, padding: 1 },
    Window { kernel: 3, stride: 2, padding: 1 },
    Window { kernel: 5, stride: 2, padding: 2 },
    Window { kernel: 2, stride: 2, padding: 0 },
    // windows wholly inside the padding (corners, and columns/rows of them)
    Window { kernel: 2, stride: 1, padding: 2 },
    Window { kernel: 3, stride: 3, padding: 2 },
];

#[test]
fn im2col_kernel_matches_composed_values_and_gradients() {
    for dtype in [DType::F64, DType::F32] {
        for win in WINDOWS {
            for (h, w) in [(7, 7), (8, 6)] {
                let x =
                    Var::from_tensor(&randn(&[2, h, w, 3], 1).to_dtype(dtype).unwrap()).unwrap();
                let a = im2col(x.as_tensor(), win).unwrap();
                let b = im2col_composed(x.as_tensor(), win).unwrap();
                assert_eq!(a.dims(), b.dims(), "{win:?}");
                assert_eq!(
                    a.dims(),
                    &[2, win.out_size(h), win.out_size(w), win.kernel * win.kernel * 3]
                );
                assert_eq!(max_diff(&a, &b), 0.0, "{win:?} values");
                let probe = randn(a.dims(), 2).to_dtype(dtype).unwrap();
                let ga = (a * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (b * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let d = max_diff(ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
                assert!(d < 1e-5, "{win:?} {dtype:?} gradient differs by {d}");
            }
        }
    }
}

#[test]
fn im2col_and_col2im_are_adjoint_and_differentiable() {
    for win in WINDOWS {
        let x = Var::from_tensor(&randn(&[2, 7, 6, 2], 3)).unwrap();
        let probe = randn(&[2, win.out_size(7), win.out_size(6), win.kernel * win.kernel * 2], 4);
        let vars = vec![("x".into(), x.clone())];
        check(&vars, || (im2col(x.as_tensor(), win)? * &probe)?.sum_all(), 60, EPS, TOL)
            .unwrap()
            .assert_passed("im2col");
        // <im2col(x), g> = <x, col2im(g)>
        let lhs = (im2col(x.as_tensor(), win).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let rhs = (x.as_tensor() * col2im(&probe, win, 7, 6, 2).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((lhs - rhs).abs() < 1e-9, "{win:?}: {lhs} vs {rhs}");
        let g = Var::from_tensor(&probe).unwrap();
        let probe2 = randn(&[2, 7, 6, 2], 5);
        let vars = vec![("g".into(), g.clone())];
        check(&vars, || (col2im(g.as_tensor(), win, 7, 6, 2)? * &probe2)?.sum_all(), 60, EPS, TOL)
            .unwrap()
            .assert_passed("col2im");
    }
}

/// The fused convolution (images grouped per task, columns recomputed in the backward pass)
/// equals im2col + dense layer, values and gradients, including batches that split unevenly into
/// groups and an input that needs no gradient.
/// A frozen `Conv2d` (inference) keeps its kernel matrix across calls: every call, the first and
/// those after, equals the composed convolution; so does a frozen layer whose weight tensor is
/// replaced.
#[test]
fn frozen_conv2d_with_kept_kernels_matches_composed() {
    for win in WINDOWS {
        for (b, h, w, c, o) in [(3, 7, 7, 3, 5), (5, 9, 8, 32, 48), (2, 6, 6, 17, 33)] {
            let store = ParamStore::new(9, DType::F32, &Device::Cpu).frozen();
            let mut conv = Conv2d::new(c, o, win, store.var_builder()).unwrap();
            let x = randn(&[b, h, w, c], 15).to_dtype(DType::F32).unwrap();
            for round in 0..3 {
                if round == 2 {
                    conv.weight = (&conv.weight * 0.5).unwrap();
                }
                let a = conv.forward(&x).unwrap();
                let wm = conv.weight_matrix().unwrap();
                let want = conv2d_composed(&x, &wm, &conv.bias, win).unwrap();
                let d = max_diff(&a, &want);
                assert!(d < 1e-4, "{win:?} {b}x{h}x{w}x{c} -> {o}, call {round}: {d}");
            }
        }
    }
}

#[test]
fn conv2d_kernel_matches_composed_values_and_gradients() {
    for dtype in [DType::F64, DType::F32] {
        for win in WINDOWS {
            for (b, h, w) in [(2, 7, 7), (7, 8, 6), (9, 3, 4)] {
                if h + 2 * win.padding < win.kernel || w + 2 * win.padding < win.kernel {
                    continue;
                }
                let x =
                    Var::from_tensor(&randn(&[b, h, w, 3], 11).to_dtype(dtype).unwrap()).unwrap();
                let wm = Var::from_tensor(
                    &randn(&[5, win.kernel * win.kernel * 3], 12).to_dtype(dtype).unwrap(),
                )
                .unwrap();
                let bias = Var::from_tensor(&randn(&[5], 13).to_dtype(dtype).unwrap()).unwrap();
                for x_needs_grad in [true, false] {
                    let xin =
                        if x_needs_grad { x.as_tensor().clone() } else { x.as_tensor().detach() };
                    let a = conv2d(&xin, wm.as_tensor(), bias.as_tensor(), win).unwrap();
                    let c = conv2d_composed(&xin, wm.as_tensor(), bias.as_tensor(), win).unwrap();
                    assert_eq!(a.dims(), &[b, win.out_size(h), win.out_size(w), 5]);
                    assert!(max_diff(&a, &c) < 1e-5, "{win:?} {b}x{h}x{w} values");
                    let probe = randn(a.dims(), 14).to_dtype(dtype).unwrap();
                    let ga = (a * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    let gc = (c * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    for (name, t) in
                        [("x", x.as_tensor()), ("w", wm.as_tensor()), ("bias", bias.as_tensor())]
                    {
                        match (ga.get(t), gc.get(t)) {
                            (Some(u), Some(v)) => assert!(
                                max_diff(u, v) < 1e-4,
                                "{win:?} {b}x{h}x{w} {dtype:?} grad {name}"
                            ),
                            (None, None) => assert!(name == "x" && !x_needs_grad),
                            _ => panic!("{win:?}: grad {name} present in one only"),
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn conv2d_gradient_and_pytorch_layout() {
    let store = ParamStore::new(2, DType::F64, &Device::Cpu);
    let win = Window { kernel: 3, stride: 2, padding: 1 };
    let conv = Conv2d::new(3, 4, win, store.var_builder().pp("conv")).unwrap();
    let x = Var::from_tensor(&randn(&[2, 6, 5, 3], 6)).unwrap();
    let y = conv.forward(x.as_tensor()).unwrap();
    assert_eq!(y.dims(), &[2, 3, 3, 4]);
    // Direct definition with the [out, in, ky, kx] kernel: output (b=1, oy=1, ox=2, o=3).
    let (xv, bias) = (x.as_tensor().clone(), conv.bias.to_vec1::<f64>().unwrap());
    let w4: Vec<f64> = conv.weight.flatten_all().unwrap().to_vec1().unwrap();
    let xs: Vec<f64> = xv.flatten_all().unwrap().to_vec1().unwrap();
    let (b, oy, ox, o) = (1, 1, 2, 3);
    let mut want = bias[o];
    for c in 0..3 {
        for ky in 0..3 {
            for kx in 0..3 {
                let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                if (0..6).contains(&iy) && (0..5).contains(&ix) {
                    want += w4[((o * 3 + c) * 3 + ky) * 3 + kx]
                        * xs[((b * 6 + iy as usize) * 5 + ix as usize) * 3 + c];
                }
            }
        }
    }
    let got = y
        .get(b)
        .unwrap()
        .get(oy)
        .unwrap()
        .get(ox)
        .unwrap()
        .get(o)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    let probe = randn(y.dims(), 7);
    let mut vars = store.vars();
    vars.push(("x".into(), x.clone()));
    check(&vars, || (conv.forward(x.as_tensor())? * &probe)?.sum_all(), 40, EPS, TOL)
        .unwrap()
        .assert_passed("conv2d");
}

fn tiny() -> VisionConfig {
    let mut c = VisionConfig::convnet(16, 4, &[3, 4]).unwrap();
    c.layer_norm_eps = 1e-6;
    c
}

#[test]
fn convnet_masked_encoding_gradient_and_no_leak() {
    let store = ParamStore::new(3, DType::F64, &Device::Cpu);
    let net = ConvNet::new(&tiny(), store.var_builder().pp("vision_model")).unwrap();
    let px = Var::from_tensor(&randn(&[2, 1, 16, 16], 8)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mask = PatchMask::random(2, 16, 0.75, &mut rng, &Device::Cpu).unwrap();
    let out = net.forward_masked(px.as_tensor(), &mask).unwrap();
    assert_eq!(out.dims(), &[2, 5, 4]);
    let probe = randn(out.dims(), 9);
    let mut vars = store.vars();
    vars.push(("pixels".into(), px.clone()));
    check(&vars, || (net.forward_masked(px.as_tensor(), &mask)? * &probe)?.sum_all(), 8, EPS, TOL)
        .unwrap()
        .assert_passed("convnet (patch subset)");
    // Every parameter is reached; hidden patches' pixels get no gradient (no leak), visible do.
    let g = (net.forward_masked(px.as_tensor(), &mask).unwrap() * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, v) in store.vars() {
        let s = g
            .get(v.as_tensor())
            .map(|t| t.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap())
            .unwrap_or(0.0);
        assert!(s > 0.0, "{name} receives no gradient");
    }
    let gp = medvlp_model::vit::patchify(g.get(px.as_tensor()).unwrap(), 4).unwrap();
    let per_patch: Vec<Vec<f64>> = gp.abs().unwrap().sum(2).unwrap().to_vec2().unwrap();
    for (b, row) in per_patch.iter().enumerate() {
        for (p, g) in row.iter().enumerate() {
            assert_eq!(*g > 0.0, mask.keep[b].contains(&p), "sample {b} patch {p}");
        }
    }
    // Nothing masked: the same as the full encoding.
    let all =
        PatchMask::from_keep(vec![(0..16).collect(), (0..16).collect()], 16, &Device::Cpu).unwrap();
    let d = max_diff(
        &net.forward(px.as_tensor()).unwrap(),
        &net.forward_masked(px.as_tensor(), &all).unwrap(),
    );
    assert!(d < 1e-12, "{d}");
}

#[test]
fn convnet_tells_left_from_right() {
    // A mirrored image must not give the same pooled features (coordinate channels; reports
    // say left and right).
    let store = ParamStore::new(4, DType::F64, &Device::Cpu);
    let net = ConvNet::new(&tiny(), store.var_builder()).unwrap();
    let px = randn(&[1, 1, 16, 16], 10);
    let idx = Tensor::from_vec((0..16u32).rev().collect::<Vec<_>>(), 16, &Device::Cpu).unwrap();
    let mirrored = px.index_select(&idx, 3).unwrap();
    let a = net.forward(&px).unwrap().narrow(1, 0, 1).unwrap();
    let b = net.forward(&mirrored).unwrap().narrow(1, 0, 1).unwrap();
    assert!(max_diff(&a, &b) > 1e-3);
}

#[test]
fn convnet_config_is_validated() {
    assert!(VisionConfig::convnet(128, 16, &[32, 64, 128, 256]).is_ok());
    assert!(VisionConfig::convnet(128, 16, &[32, 64, 128]).is_err());
    assert!(VisionConfig::convnet(128, 8, &[32, 0, 64]).is_err());
    let json = serde_json::to_string(&VisionConfig::preset("small").unwrap()).unwrap();
    assert!(json.contains("\"model_type\":\"convnet\""), "{json}");
    let vit = serde_json::to_string(&VisionConfig::preset("small-vit").unwrap()).unwrap();
    assert!(!vit.contains("conv_channels"), "{vit}");
}

/// The convolution's finite-difference checks with the composed ops a CUDA device runs
/// (im2col + dense layer, candle's backward).
#[test]
fn gradient_checks_pass_on_the_composed_path() {
    use medvlp_model::nn::fused::{with_kernels, Kernels};
    with_kernels(Kernels::Composed, || {
        conv2d_gradient_and_pytorch_layout();
        convnet_masked_encoding_gradient_and_no_leak();
    });
}
