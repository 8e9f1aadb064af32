//! bf16 mixed precision (`nn::precision`): the products of dense layers and attention take bf16
//! operands and give fp32 results, gradients reach the fp32 weights as fp32, and the fp32-only
//! ops (LayerNorm, softmax) are unchanged.

use candle_core::{DType, Device, Tensor, Var};
use medvlp_model::gradcheck::probe_like;
use medvlp_model::nn::fused::attention::attention;
use medvlp_model::nn::fused::linear::{linear, Activation};
use medvlp_model::nn::{layer_norm, softmax_last_dim, with_precision, Precision};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let t = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    (probe_like(&t, seed).unwrap() * 2.0).unwrap()
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    (d / n).sqrt() as f64
}

#[test]
fn dense_layers_multiply_in_bf16_and_return_fp32() {
    let x = Var::from_tensor(&randn(&[6, 40], 1)).unwrap();
    let w = Var::from_tensor(&randn(&[24, 40], 2)).unwrap();
    let b = Var::from_tensor(&randn(&[24], 3)).unwrap();
    let run = |p| {
        with_precision(p, || {
            let y = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), Activation::Gelu)
                .unwrap();
            let g = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
            (y, g.get(w.as_tensor()).unwrap().clone(), g.get(b.as_tensor()).unwrap().clone())
        })
    };
    let (y32, gw32, gb32) = run(Precision::Fp32);
    let (y16, gw16, gb16) = run(Precision::Bf16);
    assert_eq!(y16.dtype(), DType::F32);
    assert_eq!((gw16.dtype(), gb16.dtype()), (DType::F32, DType::F32));
    // The bf16 result is what bf16-rounded operands multiplied and summed in f32 give (the
    // products of two bf16 values are exact in f32), with an fp32 epilogue.
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    let expect = medvlp_model::nn::ops::gelu_erf_composed(
        &round(x.as_tensor())
            .matmul(&round(w.as_tensor()).t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap(),
    )
    .unwrap();
    assert!(rel_diff(&y16, &expect) < 1e-6);
    let (ry, rw, rb) = (rel_diff(&y16, &y32), rel_diff(&gw16, &gw32), rel_diff(&gb16, &gb32));
    assert!(ry > 1e-5, "bf16 rounding is visible: {ry}");
    assert!(ry < 1e-2 && rw < 2e-2 && rb < 2e-2, "y {ry}, dW {rw}, db {rb}");
    // Outside the closure the fp32 path is back.
    let again =
        linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), Activation::Gelu).unwrap();
    assert_eq!(rel_diff(&again, &y32), 0.0);
}

#[test]
fn attention_products_run_in_bf16_and_norms_stay_fp32() {
    let q = randn(&[2, 5, 16], 4);
    let k = randn(&[2, 7, 16], 5);
    let v = randn(&[2, 7, 16], 6);
    let (y32, p32) = attention(&q, &k, &v, 2, None).unwrap();
    let (y16, p16) = with_precision(Precision::Bf16, || attention(&q, &k, &v, 2, None)).unwrap();
    assert_eq!((y16.dtype(), p16.dtype()), (DType::F32, DType::F32));
    let (ry, rp) = (rel_diff(&y16, &y32), rel_diff(&p16, &p32));
    assert!(ry > 1e-5 && ry < 2e-2 && rp < 2e-2, "y {ry}, probs {rp}");

    let (w, b) = (randn(&[16], 7), randn(&[16], 8));
    let ln32 = layer_norm(&q, &w, &b, 1e-5).unwrap();
    let ln16 = with_precision(Precision::Bf16, || layer_norm(&q, &w, &b, 1e-5)).unwrap();
    assert_eq!(rel_diff(&ln16, &ln32), 0.0, "LayerNorm stays fp32");
    let s32 = softmax_last_dim(&q).unwrap();
    let s16 = with_precision(Precision::Bf16, || softmax_last_dim(&q)).unwrap();
    assert_eq!(rel_diff(&s16, &s32), 0.0, "softmax stays fp32");
}

#[test]
fn precision_parses_from_its_config_names() {
    assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
    assert_eq!("fp32".parse::<Precision>(), Ok(Precision::Fp32));
    assert!("fp16".parse::<Precision>().unwrap_err().contains("fp16"));
    #[derive(serde::Deserialize)]
    struct T {
        precision: Precision,
    }
    let t: T = serde_json::from_str(r#"{"precision": "bf16"}"#).unwrap();
    assert_eq!(t.precision, Precision::Bf16);
}
