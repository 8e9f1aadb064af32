//! candle's sums over dims that are not the last ones (the vendored candle-core's
//! `candle-core-reduce.patch`: a bias or position-embedding gradient is the sum of `[b, n, d]`
//! over the batch). The sums must equal a plain loop that adds the reduced elements in order,
//! bit for bit, for every run of dims, and the generic path must still serve the rest.

use candle_core::{Device, Tensor, Var};

/// `x` `[dims]` summed over `red` (sorted) by adding the elements in row-major order.
fn reference(x: &[f32], dims: &[usize], red: &[usize]) -> Vec<f32> {
    let out_dims: Vec<usize> =
        dims.iter().enumerate().map(|(i, &d)| if red.contains(&i) { 1 } else { d }).collect();
    let mut out = vec![0f32; out_dims.iter().product()];
    let mut idx = vec![0usize; dims.len()];
    for &v in x {
        let mut o = 0;
        for (i, &d) in out_dims.iter().enumerate() {
            o = o * d + if red.contains(&i) { 0 } else { idx[i] };
        }
        out[o] += v;
        for i in (0..dims.len()).rev() {
            idx[i] += 1;
            if idx[i] < dims[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    out
}

#[test]
fn sums_over_any_dims_equal_an_in_order_loop() {
    let dims = [5usize, 7, 9, 3];
    let n: usize = dims.iter().product();
    let xs: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 * 0.0137 - 6.0).collect();
    let x = Tensor::from_vec(xs.clone(), &dims[..], &Device::Cpu).unwrap();
    let runs: [&[usize]; 12] = [
        &[0],
        &[1],
        &[2],
        &[3],
        &[0, 1],
        &[1, 2],
        &[2, 3],
        &[0, 1, 2],
        &[1, 2, 3],
        &[0, 1, 2, 3],
        &[0, 2],
        &[1, 3],
    ];
    for red in runs {
        let got: Vec<f32> =
            x.sum_keepdim(red.to_vec()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want = reference(&xs, &dims, red);
        if red.last() == Some(&3) {
            // reductions over the last dims keep candle's own (reordered) summation
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "dims {red:?}: {g} vs {w}");
            }
        } else {
            assert_eq!(got, want, "dims {red:?}");
        }
    }
    // a strided input takes the generic path
    let xt = x.transpose(0, 1).unwrap();
    let got: Vec<f32> = xt.sum_keepdim(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let want = reference(&xs, &dims, &[0]);
    assert_eq!(got, want);
    // empty reduced and kept dims
    let e = Tensor::zeros((0, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(e.sum_keepdim(0).unwrap().to_vec2::<f32>().unwrap(), vec![vec![0f32; 4]]);
    let e = Tensor::zeros((3, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(e.sum_keepdim(0).unwrap().dims(), &[1, 0]);
}

/// The gradient of a position embedding added to every sample is the sum over the batch.
#[test]
fn broadcast_add_gradient_is_the_batch_sum() {
    let (b, l, d) = (6, 11, 13);
    let xs: Vec<f32> = (0..b * l * d).map(|i| ((i * 104729) % 997) as f32 * 0.01).collect();
    let x = Tensor::from_vec(xs.clone(), (b, l, d), &Device::Cpu).unwrap();
    let pos =
        Var::from_tensor(&Tensor::zeros((l, d), candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
    let w = Tensor::from_vec(xs.clone(), (b, l, d), &Device::Cpu).unwrap();
    let loss = (x.broadcast_add(pos.as_tensor()).unwrap() * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g: Vec<f32> = grads.get(pos.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g, reference(&xs, &[b, l, d], &[0]));
}
