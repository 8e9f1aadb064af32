//! Times the linear probe on synthetic frozen features (not a test: speed targets are measured,
//! never asserted). `cargo run --release -p medvlp-eval --example probe_timing -- [n] [d] [classes]`

use medvlp_eval::probe::{fit_with_validation, LinearProbe, ProbeConfig, Targets};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn data(n: usize, d: usize, k: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<bool>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dirs: Vec<Vec<f32>> = {
        let mut r = ChaCha8Rng::seed_from_u64(99);
        (0..k).map(|_| (0..d).map(|_| r.random::<f32>() - 0.5).collect()).collect()
    };
    let mut x = vec![];
    let mut y = vec![];
    for _ in 0..n {
        let lab: Vec<bool> = (0..k).map(|_| rng.random::<f32>() < 0.2).collect();
        let mut r: Vec<f32> = (0..d).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        for (c, &l) in lab.iter().enumerate() {
            if l {
                r.iter_mut().zip(&dirs[c]).for_each(|(v, dv)| *v += 0.3 * dv);
            }
        }
        x.push(r);
        y.push(lab);
    }
    (x, y)
}

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("numbers")).collect();
    let (n, d, k) = (
        a.first().copied().unwrap_or(10_000),
        a.get(1).copied().unwrap_or(512),
        a.get(2).copied().unwrap_or(14),
    );
    let (x, y) = data(n, d, k, 1);
    let (xv, yv) = data(n / 5, d, k, 2);
    let cfg = ProbeConfig::default();
    let t = Instant::now();
    let p = LinearProbe::fit(&x, &Targets::MultiLabel(y.clone()), 1e-3, &cfg).unwrap();
    println!(
        "single fit n={n} d={d} classes={k}: {:.2}s, {} iterations, converged {}",
        t.elapsed().as_secs_f64(),
        p.iterations,
        p.converged
    );
    let t = Instant::now();
    let (p, sel) =
        fit_with_validation(&x, &Targets::MultiLabel(y), &xv, &Targets::MultiLabel(yv), &cfg)
            .unwrap();
    println!(
        "grid of {} with validation: {:.2}s, chose lambda {} ({} iterations), grid {:?}",
        cfg.lambdas.len(),
        t.elapsed().as_secs_f64(),
        sel.lambda,
        p.iterations,
        sel.grid
    );
}
