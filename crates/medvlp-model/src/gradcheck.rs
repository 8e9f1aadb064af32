//! Finite-difference gradient checking (for tests): compares candle's backward pass with central
//! differences on sampled coordinates of every variable. Use f64 and tiny shapes.

use candle_core::{DType, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct Mismatch {
    pub var: String,
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
}

#[derive(Debug, Default)]
pub struct GradCheck {
    pub checked: usize,
    pub max_rel_err: f64,
    pub mismatches: Vec<Mismatch>,
}

impl GradCheck {
    /// Print the result and panic unless coordinates were checked and all of them matched.
    pub fn assert_passed(&self, name: &str) {
        println!(
            "{name}: {} coordinates, max relative error {:.2e}",
            self.checked, self.max_rel_err
        );
        assert!(self.checked > 0, "{name}: nothing checked");
        assert!(
            self.mismatches.is_empty(),
            "{name}: gradient mismatches {:?}",
            &self.mismatches[..self.mismatches.len().min(5)]
        );
    }
}

/// A fixed random tensor shaped like `t` (a probe to turn an output into a scalar loss).
pub fn probe_like(t: &Tensor, seed: u64) -> Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f64> = (0..t.elem_count()).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(t.dtype())
}

/// `loss` must compute a scalar from the current values of `vars`. Checks up to `per_var` random
/// coordinates of each variable (all of them when it is smaller).
pub fn check(
    vars: &[(String, Var)],
    loss: impl Fn() -> Result<Tensor>,
    per_var: usize,
    eps: f64,
    tol: f64,
) -> Result<GradCheck> {
    let l = loss()?;
    let grads = l.backward()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut out = GradCheck::default();
    for (name, var) in vars {
        if var.dtype() != DType::F64 {
            candle_core::bail!("gradcheck needs f64 variables ({name} is {:?})", var.dtype());
        }
        let n = var.elem_count();
        let analytic: Vec<f64> = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => vec![0.0; n],
        };
        let orig: Vec<f64> = var.as_tensor().flatten_all()?.to_vec1()?;
        let idx: Vec<usize> = if n <= per_var {
            (0..n).collect()
        } else {
            (0..per_var).map(|_| rng.random_range(0..n)).collect()
        };
        for i in idx {
            let mut v = orig.clone();
            v[i] = orig[i] + eps;
            var.set(&Tensor::from_vec(v.clone(), var.shape(), var.device())?)?;
            let lp = loss()?.to_scalar::<f64>()?;
            v[i] = orig[i] - eps;
            var.set(&Tensor::from_vec(v, var.shape(), var.device())?)?;
            let lm = loss()?.to_scalar::<f64>()?;
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), var.device())?)?;
            let numeric = (lp - lm) / (2.0 * eps);
            let a = analytic[i];
            let rel = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1e-3);
            out.checked += 1;
            out.max_rel_err = out.max_rel_err.max(rel);
            if rel > tol {
                out.mismatches.push(Mismatch { var: name.clone(), index: i, analytic: a, numeric });
            }
        }
    }
    Ok(out)
}
