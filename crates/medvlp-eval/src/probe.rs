//! Linear probe on frozen features: L2-regularised logistic regression, one-vs-rest for
//! multi-label targets and softmax for multi-class targets.
//!
//! Hand-written: features are standardised with the training mean/std, the objective
//! `mean_i loss_i + lambda/2 ||W||^2` (bias unpenalised but for a 1e-6 guard that keeps a class
//! without positives finite) is minimised by full-batch L-BFGS (two-loop recursion, 10 pairs,
//! backtracking Armijo line search) with the gradient computed in parallel over row chunks. The
//! regularisation strength is chosen on a validation split from a small grid (largest first, each
//! fit warm-started from the previous one). Everything is deterministic: chunking is fixed and
//! partial sums are reduced in order.
//!
//! Label-fraction subsets (1%, 10%, 100%) are the caller's fixed ID lists; [`subsample_indices`] /
//! [`subsample_ids`] make such lists deterministically.

use crate::linalg::{axpy, dot};
use crate::metrics;
use anyhow::{bail, ensure, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Training targets.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Sample-major indicators `labels[i][c]`; one sigmoid output per class (a binary task is
    /// one class).
    MultiLabel(Vec<Vec<bool>>),
    /// One class index per sample in `0..n_classes`; softmax over the classes.
    MultiClass { labels: Vec<usize>, n_classes: usize },
}

impl Targets {
    fn len(&self) -> usize {
        match self {
            Targets::MultiLabel(l) => l.len(),
            Targets::MultiClass { labels, .. } => labels.len(),
        }
    }
    fn n_outputs(&self) -> usize {
        match self {
            Targets::MultiLabel(l) => l.first().map_or(0, Vec::len),
            Targets::MultiClass { n_classes, .. } => *n_classes,
        }
    }
    fn is_multiclass(&self) -> bool {
        matches!(self, Targets::MultiClass { .. })
    }
}

/// Optimiser and grid settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    /// Candidate L2 strengths (on the mean loss; sklearn's `C` = 1 / (lambda * n)).
    pub lambdas: Vec<f64>,
    pub max_iter: usize,
    /// Stop when the largest gradient entry falls below this.
    pub tol: f64,
    /// L-BFGS memory.
    pub history: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            lambdas: vec![1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
            max_iter: 300,
            tol: 1e-5,
            history: 10,
        }
    }
}

/// Per-feature standardisation fitted on training features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    /// 1 / std (1 for constant features).
    pub inv_std: Vec<f32>,
}

impl Standardizer {
    pub fn fit(x: &[Vec<f32>]) -> Result<Self> {
        ensure!(!x.is_empty(), "standardizer: no rows");
        let d = x[0].len();
        let n = x.len() as f64;
        let mut mean = vec![0f64; d];
        for (i, r) in x.iter().enumerate() {
            ensure!(r.len() == d, "features: row {i} has dimension {}, expected {d}", r.len());
            ensure!(r.iter().all(|v| v.is_finite()), "features: row {i} has a non-finite value");
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f64; d];
        for r in x {
            for ((s, &v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (v as f64 - m).powi(2);
            }
        }
        let inv_std = var
            .iter()
            .map(|s| (s / n).sqrt())
            .map(|sd| if sd > 1e-8 { (1.0 / sd) as f32 } else { 1.0 })
            .collect();
        Ok(Standardizer { mean: mean.iter().map(|&m| m as f32).collect(), inv_std })
    }

    /// Standardised rows, flattened row-major.
    pub fn transform(&self, x: &[Vec<f32>]) -> Result<Vec<f32>> {
        let d = self.mean.len();
        let mut out = Vec::with_capacity(x.len() * d);
        for (i, r) in x.iter().enumerate() {
            ensure!(
                r.len() == d,
                "features: row {i} has dimension {}, the probe was fitted on {d}",
                r.len()
            );
            out.extend(r.iter().zip(&self.mean).zip(&self.inv_std).map(|((&v, m), s)| (v - m) * s));
        }
        Ok(out)
    }
}

/// A fitted linear probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearProbe {
    pub multiclass: bool,
    pub n_outputs: usize,
    pub lambda: f64,
    pub standardizer: Standardizer,
    /// Row-major `n_outputs x d` weights on standardised features.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub iterations: usize,
    pub converged: bool,
}

const ROWS_PER_CHUNK: usize = 256;
const BIAS_GUARD: f64 = 1e-6;

struct Problem<'a> {
    x: &'a [f32],
    d: usize,
    n: usize,
    k: usize,
    y: &'a Targets,
    lambda: f64,
}

impl Problem<'_> {
    /// Objective and gradient at `theta = [W (k x d), b (k)]`.
    fn eval(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (d, k) = (self.d, self.k);
        let w: Vec<f32> = theta[..k * d].iter().map(|&v| v as f32).collect();
        let b: Vec<f32> = theta[k * d..].iter().map(|&v| v as f32).collect();
        let parts: Vec<(f64, Vec<f32>)> = (0..self.n.div_ceil(ROWS_PER_CHUNK))
            .into_par_iter()
            .map(|ch| {
                let mut g = vec![0f32; k * d + k];
                let mut loss = 0f64;
                let mut z = vec![0f32; k];
                for i in ch * ROWS_PER_CHUNK..((ch + 1) * ROWS_PER_CHUNK).min(self.n) {
                    let xi = &self.x[i * d..(i + 1) * d];
                    for c in 0..k {
                        z[c] = dot(xi, &w[c * d..(c + 1) * d]) + b[c];
                    }
                    match self.y {
                        Targets::MultiLabel(l) => {
                            for c in 0..k {
                                let (zc, yc) = (z[c] as f64, l[i][c]);
                                // log(1 + e^z) - y z, stably
                                loss += zc.max(0.0) + (-zc.abs()).exp().ln_1p()
                                    - if yc { zc } else { 0.0 };
                                z[c] = (1.0 / (1.0 + (-zc).exp()) - yc as u8 as f64) as f32;
                            }
                        }
                        Targets::MultiClass { labels, .. } => {
                            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                            let s: f64 = z.iter().map(|&v| (v as f64 - m).exp()).sum();
                            let lse = m + s.ln();
                            loss += lse - z[labels[i]] as f64;
                            for (c, zc) in z.iter_mut().enumerate() {
                                *zc = ((*zc as f64 - lse).exp() - (c == labels[i]) as u8 as f64)
                                    as f32;
                            }
                        }
                    }
                    for c in 0..k {
                        axpy(z[c], xi, &mut g[c * d..(c + 1) * d]);
                        g[k * d + c] += z[c];
                    }
                }
                (loss, g)
            })
            .collect();
        let inv_n = 1.0 / self.n as f64;
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        for (l, g) in &parts {
            loss += l;
            for (a, &b) in grad.iter_mut().zip(g) {
                *a += b as f64;
            }
        }
        loss *= inv_n;
        for (j, (gj, &t)) in grad.iter_mut().zip(theta).enumerate() {
            let reg = if j < k * d { self.lambda } else { BIAS_GUARD };
            *gj = *gj * inv_n + reg * t;
            loss += 0.5 * reg * t * t;
        }
        loss
    }
}

/// Full-batch L-BFGS; returns (iterations, converged).
fn lbfgs(p: &Problem, theta: &mut [f64], cfg: &ProbeConfig) -> (usize, bool) {
    let m = theta.len();
    let mut g = vec![0.0; m];
    let mut f = p.eval(theta, &mut g);
    let (mut s_hist, mut y_hist, mut rho): (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<f64>) =
        (vec![], vec![], vec![]);
    let inf = |v: &[f64]| v.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    let mut g_new = vec![0.0; m];
    let mut theta_new = vec![0.0; m];
    for it in 0..cfg.max_iter {
        if inf(&g) < cfg.tol {
            return (it, true);
        }
        // Two-loop recursion: dir = -H g.
        let mut q = g.clone();
        let mut alpha = vec![0.0; s_hist.len()];
        for j in (0..s_hist.len()).rev() {
            alpha[j] = rho[j] * dotf64(&s_hist[j], &q);
            q.iter_mut().zip(&y_hist[j]).for_each(|(qi, yi)| *qi -= alpha[j] * yi);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dotf64(s, y) / dotf64(y, y),
            _ => 1.0 / dotf64(&g, &g).sqrt().max(1e-12),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for j in 0..s_hist.len() {
            let beta = rho[j] * dotf64(&y_hist[j], &q);
            q.iter_mut().zip(&s_hist[j]).for_each(|(qi, si)| *qi += (alpha[j] - beta) * si);
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dotf64(&g, &dir);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            let scale = 1.0 / dotf64(&g, &g).sqrt().max(1e-12);
            dir = g.iter().map(|v| -v * scale).collect();
            slope = dotf64(&g, &dir);
        }
        // Backtracking Armijo line search.
        let mut step = 1.0;
        let mut f_new;
        let mut tries = 0;
        loop {
            theta_new
                .iter_mut()
                .zip(theta.iter().zip(&dir))
                .for_each(|(t, (a, d))| *t = a + step * d);
            f_new = p.eval(&theta_new, &mut g_new);
            if f_new <= f + 1e-4 * step * slope || tries >= 30 {
                break;
            }
            step *= 0.5;
            tries += 1;
        }
        if f_new > f {
            return (it, false); // no progress possible at this precision
        }
        let s: Vec<f64> = theta_new.iter().zip(theta.iter()).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dotf64(&s, &y);
        if sy > 1e-12 * dotf64(&y, &y).max(1e-300) {
            if s_hist.len() == cfg.history {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        let rel = (f - f_new).abs() / f.abs().max(1e-12);
        theta.copy_from_slice(&theta_new);
        g.copy_from_slice(&g_new);
        f = f_new;
        if rel < 1e-12 {
            return (it + 1, inf(&g) < cfg.tol * 100.0);
        }
    }
    (cfg.max_iter, inf(&g) < cfg.tol)
}

fn dotf64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn check_targets(y: &Targets, n: usize, what: &str) -> Result<()> {
    ensure!(y.len() == n, "{what}: {n} feature rows but {} targets", y.len());
    ensure!(y.n_outputs() > 0, "{what}: no classes");
    match y {
        Targets::MultiLabel(l) => {
            let k = y.n_outputs();
            if let Some(i) = l.iter().position(|r| r.len() != k) {
                bail!("{what}: target row {i} has {} classes, expected {k}", l[i].len());
            }
        }
        Targets::MultiClass { labels, n_classes } => {
            ensure!(*n_classes >= 2, "{what}: a multi-class probe needs >= 2 classes");
            if let Some(i) = labels.iter().position(|&c| c >= *n_classes) {
                bail!(
                    "{what}: target {i} is class {} but there are {n_classes} classes",
                    labels[i]
                );
            }
        }
    }
    Ok(())
}

impl LinearProbe {
    /// Fits at one regularisation strength.
    pub fn fit(x: &[Vec<f32>], y: &Targets, lambda: f64, cfg: &ProbeConfig) -> Result<Self> {
        let standardizer = Standardizer::fit(x)?;
        let xs = standardizer.transform(x)?;
        Self::fit_standardized(&xs, standardizer, y, lambda, cfg, None)
    }

    fn fit_standardized(
        xs: &[f32],
        standardizer: Standardizer,
        y: &Targets,
        lambda: f64,
        cfg: &ProbeConfig,
        warm: Option<&LinearProbe>,
    ) -> Result<Self> {
        let d = standardizer.mean.len();
        let n = xs.len() / d.max(1);
        check_targets(y, n, "linear probe")?;
        ensure!(
            lambda >= 0.0 && lambda.is_finite(),
            "linear probe: lambda must be >= 0, got {lambda}"
        );
        let k = y.n_outputs();
        let mut theta = vec![0.0; k * d + k];
        if let Some(w) = warm {
            theta.iter_mut().zip(w.weights.iter().chain(&w.bias)).for_each(|(t, &v)| *t = v as f64);
        }
        let p = Problem { x: xs, d, n, k, y, lambda };
        let (iterations, converged) = lbfgs(&p, &mut theta, cfg);
        Ok(LinearProbe {
            multiclass: y.is_multiclass(),
            n_outputs: k,
            lambda,
            standardizer,
            weights: theta[..k * d].iter().map(|&v| v as f32).collect(),
            bias: theta[k * d..].iter().map(|&v| v as f32).collect(),
            iterations,
            converged,
        })
    }

    /// Probabilities, sample-major: sigmoid per class (multi-label) or softmax (multi-class).
    pub fn predict(&self, x: &[Vec<f32>]) -> Result<Vec<Vec<f64>>> {
        let xs = self.standardizer.transform(x)?;
        let d = self.standardizer.mean.len();
        Ok(xs
            .par_chunks(d.max(1))
            .take(x.len())
            .map(|xi| {
                let z: Vec<f64> = (0..self.n_outputs)
                    .map(|c| (dot(xi, &self.weights[c * d..(c + 1) * d]) + self.bias[c]) as f64)
                    .collect();
                if self.multiclass {
                    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    e.iter().map(|v| v / s).collect()
                } else {
                    z.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect()
                }
            })
            .collect())
    }
}

/// How the regularisation strength was chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub lambda: f64,
    /// `(lambda, validation metric)` per grid point: macro AUROC (multi-label) or accuracy
    /// (multi-class; ties go to the lower validation log-loss, then the larger lambda).
    pub grid: Vec<(f64, Option<f64>)>,
    pub metric: String,
}

/// Fits one probe per grid strength on the training split (largest lambda first, warm-started)
/// and keeps the one with the best validation metric.
pub fn fit_with_validation(
    train_x: &[Vec<f32>],
    train_y: &Targets,
    val_x: &[Vec<f32>],
    val_y: &Targets,
    cfg: &ProbeConfig,
) -> Result<(LinearProbe, Selection)> {
    ensure!(!cfg.lambdas.is_empty(), "linear probe: empty lambda grid");
    check_targets(val_y, val_x.len(), "linear probe validation")?;
    ensure!(
        train_y.is_multiclass() == val_y.is_multiclass()
            && train_y.n_outputs() == val_y.n_outputs(),
        "linear probe: training and validation targets differ in kind or class count"
    );
    let standardizer = Standardizer::fit(train_x)?;
    let xs = standardizer.transform(train_x)?;
    let mut lambdas = cfg.lambdas.clone();
    lambdas.sort_by(|a, b| b.total_cmp(a));
    let mut best: Option<(LinearProbe, (f64, f64))> = None;
    let mut grid = vec![];
    let mut prev: Option<LinearProbe> = None;
    for &lambda in &lambdas {
        let probe = LinearProbe::fit_standardized(
            &xs,
            standardizer.clone(),
            train_y,
            lambda,
            cfg,
            prev.as_ref(),
        )?;
        let p = probe.predict(val_x)?;
        let (metric, key) = match val_y {
            Targets::MultiLabel(l) => {
                let m = metrics::auroc_per_class(&p, l).macro_;
                (m, (m.unwrap_or(f64::NEG_INFINITY), 0.0))
            }
            Targets::MultiClass { labels, .. } => {
                let acc = metrics::accuracy(&metrics::argmax_rows(&p), labels);
                let ll = p.iter().zip(labels).map(|(r, &c)| -r[c].max(1e-300).ln()).sum::<f64>()
                    / labels.len().max(1) as f64;
                (acc, (acc.unwrap_or(f64::NEG_INFINITY), -ll))
            }
        };
        grid.push((lambda, metric));
        if best.as_ref().is_none_or(|(_, k)| key > *k) {
            best = Some((probe.clone(), key));
        }
        prev = Some(probe);
    }
    let (probe, _) = best.expect("non-empty grid");
    let metric = if val_y.is_multiclass() { "accuracy" } else { "auroc_macro" }.to_string();
    Ok((probe.clone(), Selection { lambda: probe.lambda, grid, metric }))
}

/// Deterministic label-fraction subset of `0..n` (sorted indices): `max(1, round(fraction * n))`
/// items drawn by a seeded shuffle, after first taking, for every class with a positive in
/// `labels`, its first positive in shuffled order (so the subset has a positive per class where
/// possible; it can then exceed the nominal size for tiny fractions). `labels` may be empty (no
/// class guarantee). The shuffle uses ChaCha8 words directly, so lists do not change with the
/// `rand` crate version.
pub fn subsample_indices(
    n: usize,
    labels: &[Vec<bool>],
    fraction: f64,
    seed: u64,
) -> Result<Vec<usize>> {
    ensure!(fraction > 0.0 && fraction <= 1.0, "label fraction must be in (0, 1], got {fraction}");
    ensure!(
        labels.is_empty() || labels.len() == n,
        "subsample: {n} ids but {} label rows",
        labels.len()
    );
    if n == 0 {
        return Ok(vec![]);
    }
    let target = ((fraction * n as f64).round() as usize).clamp(1, n);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..n).rev() {
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    let mut chosen = vec![false; n];
    let mut count = 0;
    let n_classes = labels.first().map_or(0, Vec::len);
    #[allow(clippy::needless_range_loop)] // c indexes the inner label vectors
    for c in 0..n_classes {
        if order.iter().any(|&i| chosen[i] && labels[i][c]) {
            continue;
        }
        if let Some(&i) = order.iter().find(|&&i| labels[i][c]) {
            chosen[i] = true;
            count += 1;
        }
    }
    for &i in &order {
        if count >= target {
            break;
        }
        if !chosen[i] {
            chosen[i] = true;
            count += 1;
        }
    }
    Ok((0..n).filter(|&i| chosen[i]).collect())
}

/// [`subsample_indices`] on an ID list (IDs in their original order).
pub fn subsample_ids<T: Clone>(
    ids: &[T],
    labels: &[Vec<bool>],
    fraction: f64,
    seed: u64,
) -> Result<Vec<T>> {
    Ok(subsample_indices(ids.len(), labels, fraction, seed)?
        .into_iter()
        .map(|i| ids[i].clone())
        .collect())
}

/// One-hot rows of class indices (for [`subsample_ids`] on multi-class data).
pub fn one_hot(labels: &[usize], n_classes: usize) -> Vec<Vec<bool>> {
    labels.iter().map(|&c| (0..n_classes).map(|j| j == c).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random features: class structure along the first dims + noise.
    fn synth(
        n: usize,
        d: usize,
        k: usize,
        seed: u64,
        multiclass: bool,
    ) -> (Vec<Vec<f32>>, Vec<usize>, Vec<Vec<bool>>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut u = || (rng.next_u32() as f64 / u32::MAX as f64) as f32;
        let mut x = vec![];
        let mut yc = vec![];
        let mut yl = vec![];
        for i in 0..n {
            let c = i % k;
            let mut r: Vec<f32> = (0..d).map(|_| u() - 0.5).collect();
            let mut lab = vec![false; k];
            if multiclass {
                r[c] += 2.0;
                lab[c] = true;
            } else {
                for (j, l) in lab.iter_mut().enumerate() {
                    *l = u() < 0.3;
                    if *l {
                        r[j] += 1.5;
                    }
                }
            }
            r.iter_mut().for_each(|v| *v = *v * 3.0 + 7.0); // needs standardisation
            x.push(r);
            yc.push(c);
            yl.push(lab);
        }
        (x, yc, yl)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for multiclass in [false, true] {
            let (x, yc, yl) = synth(40, 5, 3, 1, multiclass);
            let y = if multiclass {
                Targets::MultiClass { labels: yc, n_classes: 3 }
            } else {
                Targets::MultiLabel(yl)
            };
            let st = Standardizer::fit(&x).unwrap();
            let xs = st.transform(&x).unwrap();
            let p = Problem { x: &xs, d: 5, n: 40, k: 3, y: &y, lambda: 0.1 };
            let theta: Vec<f64> = (0..18).map(|i| ((i * 7) % 5) as f64 * 0.1 - 0.2).collect();
            let mut g = vec![0.0; 18];
            p.eval(&theta, &mut g);
            for j in 0..18 {
                let (mut a, mut b) = (theta.clone(), theta.clone());
                a[j] += 1e-3;
                b[j] -= 1e-3;
                let mut t = vec![0.0; 18];
                let fd = (p.eval(&a, &mut t) - p.eval(&b, &mut t)) / 2e-3;
                assert!(
                    (fd - g[j]).abs() < 1e-4,
                    "multiclass={multiclass} param {j}: fd {fd} vs {}",
                    g[j]
                );
            }
        }
    }

    #[test]
    fn separable_multiclass_and_multilabel() {
        let cfg = ProbeConfig::default();
        let (x, yc, _) = synth(300, 10, 3, 2, true);
        let (xv, yv, _) = synth(150, 10, 3, 3, true);
        let (probe, sel) = fit_with_validation(
            &x,
            &Targets::MultiClass { labels: yc, n_classes: 3 },
            &xv,
            &Targets::MultiClass { labels: yv.clone(), n_classes: 3 },
            &cfg,
        )
        .unwrap();
        assert_eq!(sel.grid.len(), 6);
        let p = probe.predict(&xv).unwrap();
        assert!(p.iter().all(|r| (r.iter().sum::<f64>() - 1.0).abs() < 1e-9));
        let acc = metrics::accuracy(&metrics::argmax_rows(&p), &yv).unwrap();
        assert!(acc > 0.95, "multi-class accuracy {acc}, {sel:?}");

        let (x, _, yl) = synth(400, 12, 4, 4, false);
        let (xv, _, ylv) = synth(200, 12, 4, 5, false);
        let (probe, sel) = fit_with_validation(
            &x,
            &Targets::MultiLabel(yl),
            &xv,
            &Targets::MultiLabel(ylv.clone()),
            &cfg,
        )
        .unwrap();
        let p = probe.predict(&xv).unwrap();
        let auc = metrics::auroc_per_class(&p, &ylv).macro_.unwrap();
        assert!(auc > 0.95, "multi-label macro AUROC {auc}, {sel:?}");
        assert!(probe.converged, "{} iterations", probe.iterations);
        // deterministic
        let again = LinearProbe::fit(
            &x,
            &Targets::MultiLabel(synth(400, 12, 4, 4, false).2),
            probe.lambda,
            &cfg,
        )
        .unwrap();
        let again2 = LinearProbe::fit(
            &x,
            &Targets::MultiLabel(synth(400, 12, 4, 4, false).2),
            probe.lambda,
            &cfg,
        )
        .unwrap();
        assert_eq!(again, again2);
    }

    #[test]
    fn weak_regularisation_separates_and_strong_shrinks() {
        let (x, yc, _) = synth(60, 4, 2, 6, true);
        let y = Targets::MultiClass { labels: yc.clone(), n_classes: 2 };
        let cfg = ProbeConfig::default();
        let weak = LinearProbe::fit(&x, &y, 1e-4, &cfg).unwrap();
        let strong = LinearProbe::fit(&x, &y, 10.0, &cfg).unwrap();
        let acc =
            metrics::accuracy(&metrics::argmax_rows(&weak.predict(&x).unwrap()), &yc).unwrap();
        assert_eq!(acc, 1.0);
        let norm = |p: &LinearProbe| p.weights.iter().map(|w| w * w).sum::<f32>();
        assert!(norm(&strong) < 0.01 * norm(&weak));
        // a class without positives stays finite
        let yl: Vec<Vec<bool>> = yc.iter().map(|&c| vec![c == 0, false]).collect();
        let p = LinearProbe::fit(&x, &Targets::MultiLabel(yl), 1e-3, &cfg).unwrap();
        assert!(p.bias.iter().all(|b| b.is_finite()) && p.bias[1] < -5.0);
        assert!(LinearProbe::fit(
            &x,
            &Targets::MultiClass { labels: vec![0; 3], n_classes: 2 },
            1.0,
            &cfg
        )
        .is_err());
    }

    #[test]
    fn subsets_are_deterministic_and_cover_classes() {
        let n = 1000;
        // class 2 has a single positive
        let labels: Vec<Vec<bool>> =
            (0..n).map(|i| vec![i % 2 == 0, i % 7 == 0, i == 613]).collect();
        let a = subsample_indices(n, &labels, 0.01, 7).unwrap();
        let b = subsample_indices(n, &labels, 0.01, 7).unwrap();
        let c = subsample_indices(n, &labels, 0.01, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 10);
        assert!(a.contains(&613));
        assert!((0..3).all(|cl| a.iter().any(|&i| labels[i][cl])));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(subsample_indices(n, &[], 1.0, 0).unwrap().len(), n);
        assert_eq!(subsample_indices(n, &[], 0.1, 0).unwrap().len(), 100);
        let ids: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
        assert_eq!(subsample_ids(&ids, &one_hot(&[0, 1, 2, 0, 1], 3), 0.2, 1).unwrap().len(), 3);
        assert!(subsample_indices(n, &[], 0.0, 0).is_err());
        // golden: the list must not change across versions
        assert_eq!(subsample_indices(20, &[], 0.25, 42).unwrap(), golden());
    }

    fn golden() -> Vec<usize> {
        vec![0, 1, 3, 11, 12]
    }
}
