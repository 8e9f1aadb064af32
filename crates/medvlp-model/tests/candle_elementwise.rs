//! candle's element-wise ops on rayon's pool (the vendored candle-core's `candle-core-rayon.patch`):
//! with `CANDLE_NUM_THREADS=1`, as `medvlp` sets it, large binary and unary maps are split over
//! rayon's threads. One test per process, because the setting is read once.

use candle_core::{Device, Tensor};

#[test]
fn large_elementwise_ops_on_rayons_pool_equal_a_plain_loop() {
    // SAFETY: set before any thread of this test binary reads it (the only test here).
    unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    rayon::ThreadPoolBuilder::new().num_threads(3).build_global().ok();
    let (b, l, d) = (7, 301, 129); // 272k elements: past candle's parallel minimum, odd chunks
    let xs: Vec<f32> = (0..b * l * d).map(|i| ((i * 7919) % 1013) as f32 * 0.01 - 5.0).collect();
    let ps: Vec<f32> = (0..l * d).map(|i| ((i * 104729) % 997) as f32 * 0.003).collect();
    let x = Tensor::from_vec(xs.clone(), (b, l, d), &Device::Cpu).unwrap();
    let p = Tensor::from_vec(ps.clone(), (1, l, d), &Device::Cpu).unwrap();
    // contiguous + broadcast operand, and a transposed (strided) operand
    let y: Vec<f32> = x.broadcast_add(&p).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = (0..b * l * d).map(|i| xs[i] + ps[i % (l * d)]).collect();
    assert_eq!(y, want);
    let xt = x.transpose(1, 2).unwrap();
    let z: Vec<f32> = (&xt * &xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let mut k = 0;
    for bi in 0..b {
        for di in 0..d {
            for li in 0..l {
                let v = xs[(bi * l + li) * d + di];
                assert_eq!(z[k], v * v, "element {k}");
                k += 1;
            }
        }
    }
    let e: Vec<f32> = x.exp().unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(e.iter().zip(&xs).all(|(a, &v)| (a - v.exp()).abs() <= 1e-6 * v.exp().max(1.0)));
}
