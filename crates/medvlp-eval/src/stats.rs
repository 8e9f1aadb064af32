//! Statistics for reported numbers: the seeded percentile bootstrap (confidence intervals of a
//! metric over resampled studies, as CheXzero and BenchX report them) and the Student t interval
//! of a few repeated runs (one value per seed, as `medvlp compare` tabulates them).
//!
//! The metrics themselves are in [`crate::metrics`] and [`crate::retrieval`]; `*_with_ci` there
//! combine them with [`bootstrap_ci_multi`] / [`estimate`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------- bootstrap

/// Seeded percentile bootstrap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootstrapConfig {
    /// Number of resamples (1,000 as CheXzero reports).
    pub resamples: usize,
    pub seed: u64,
    /// Coverage of the interval (0.95).
    pub level: f64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig { resamples: 1000, seed: 0, level: 0.95 }
    }
}

/// A confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ci {
    pub low: f64,
    pub high: f64,
    /// Resamples on which the metric was defined (the others, e.g. a resample without a positive,
    /// are left out).
    pub resamples_used: usize,
}

/// A metric value with an optional confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub ci: Option<Ci>,
}

/// numpy's default (linear) percentile of sorted data, `q` in [0, 100].
pub fn percentile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

/// Percentile bootstrap CI of `metric` over `n_units` resampling units (studies). Each resample
/// draws `n_units` unit indices with replacement and calls `metric` with them; `metric` maps the
/// indices to its data (`None` when undefined on that resample). Resample `b` uses its own
/// ChaCha8 stream derived from (`seed`, `b`), so the result is identical for any thread count.
/// `None` when `n_units` is 0, `resamples` is 0 or the metric is undefined on every resample.
pub fn bootstrap_ci<F>(n_units: usize, cfg: &BootstrapConfig, metric: F) -> Option<Ci>
where
    F: Fn(&[usize]) -> Option<f64> + Sync,
{
    bootstrap_ci_multi(n_units, cfg, 1, |idx| vec![metric(idx)]).pop().flatten()
}

/// [`bootstrap_ci`] for `n_outputs` metrics computed together on the same resamples (e.g. the
/// AUROC of every class and their macro mean): one CI per output.
pub fn bootstrap_ci_multi<F>(
    n_units: usize,
    cfg: &BootstrapConfig,
    n_outputs: usize,
    metric: F,
) -> Vec<Option<Ci>>
where
    F: Fn(&[usize]) -> Vec<Option<f64>> + Sync,
{
    if n_units == 0 || cfg.resamples == 0 {
        return vec![None; n_outputs];
    }
    let per_resample: Vec<Vec<Option<f64>>> = (0..cfg.resamples)
        .into_par_iter()
        .map(|b| {
            let mut rng = resample_rng(cfg.seed, b);
            let idx: Vec<usize> = (0..n_units).map(|_| rng.random_range(0..n_units)).collect();
            let v = metric(&idx);
            assert_eq!(
                v.len(),
                n_outputs,
                "bootstrap_ci_multi: metric returned {} values, expected {n_outputs}",
                v.len()
            );
            v
        })
        .collect();
    let tail = (1.0 - cfg.level) / 2.0 * 100.0;
    (0..n_outputs)
        .map(|o| {
            let mut vals: Vec<f64> =
                per_resample.iter().filter_map(|r| r[o]).filter(|v| !v.is_nan()).collect();
            vals.sort_by(|a, b| a.total_cmp(b));
            Some(Ci {
                low: percentile_sorted(&vals, tail)?,
                high: percentile_sorted(&vals, 100.0 - tail)?,
                resamples_used: vals.len(),
            })
        })
        .collect()
}

fn resample_rng(seed: u64, b: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(b as u64);
    rng
}

/// Bootstrap over groups (e.g. several images per study): resamples groups and passes the
/// concatenated item indices of the drawn groups to `metric`.
pub fn bootstrap_ci_grouped<F>(
    groups: &[Vec<usize>],
    cfg: &BootstrapConfig,
    metric: F,
) -> Option<Ci>
where
    F: Fn(&[usize]) -> Option<f64> + Sync,
{
    bootstrap_ci(groups.len(), cfg, |g| {
        let items: Vec<usize> = g.iter().flat_map(|&k| groups[k].iter().copied()).collect();
        metric(&items)
    })
}

/// The metric on all units plus its bootstrap CI (`cfg = None`: no CI). `None` when the metric is
/// undefined on the full data.
pub fn estimate<F>(n_units: usize, cfg: Option<&BootstrapConfig>, metric: F) -> Option<Estimate>
where
    F: Fn(&[usize]) -> Option<f64> + Sync,
{
    let all: Vec<usize> = (0..n_units).collect();
    let value = metric(&all).filter(|v| !v.is_nan())?;
    Some(Estimate { value, ci: cfg.and_then(|c| bootstrap_ci(n_units, c, &metric)) })
}

/// Items of `xs` at `idx` (for metric closures).
pub fn gather<T: Clone>(xs: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| xs[i].clone()).collect()
}

/// numpy-style median; `None` for empty input.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { v[m - 1] / 2.0 + v[m] / 2.0 })
}

// ---------------------------------------------------------------- t interval over runs

/// Two-sided 95% Student t quantiles for 1..=9 degrees of freedom.
pub const T95: [f64; 9] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262];

/// The mean of a few repeated runs and its two-sided 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanInterval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// Student t interval of the mean of `values` (e.g. one metric value per seed):
/// mean +- t(0.975, n - 1) * sd / sqrt(n), with the sample standard deviation (n - 1 in the
/// denominator). Quantiles come from [`T95`]; past 9 degrees of freedom (more than 10 values) the
/// 9-degrees-of-freedom quantile is used, which makes the interval slightly wider than the exact
/// one. `None` for fewer than two values.
pub fn t_interval_95(values: &[f64]) -> Option<MeanInterval> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let half = T95[(n - 2).min(T95.len() - 1)] * sd / (n as f64).sqrt();
    Some(MeanInterval { mean, low: mean - half, high: mean + half })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{accuracy_with_ci, auroc, auroc_with_ci};

    #[test]
    fn bootstrap_is_seeded_and_covers_the_value() {
        let n = 400;
        let scores: Vec<f64> = (0..n)
            .map(|i| ((i * 37) % 101) as f64 / 101.0 + if i % 3 == 0 { 0.3 } else { 0.0 })
            .collect();
        let labels: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
        let f = |idx: &[usize]| auroc(&gather(&scores, idx), &gather(&labels, idx));
        let cfg = BootstrapConfig::default();
        let a = estimate(n, Some(&cfg), f).unwrap();
        let b = estimate(n, Some(&cfg), f).unwrap();
        assert_eq!(a, b);
        let ci = a.ci.unwrap();
        assert!(ci.low < a.value && a.value < ci.high, "{a:?}");
        assert!(ci.high - ci.low < 0.15 && ci.high - ci.low > 0.01, "{a:?}");
        assert_eq!(ci.resamples_used, 1000);
        let c = estimate(n, Some(&BootstrapConfig { seed: 1, ..cfg.clone() }), f).unwrap();
        assert_ne!(a.ci, c.ci);
        // undefined on every resample -> None, no panic
        assert!(bootstrap_ci(3, &cfg, |_| None).is_none());
        // a metric that is undefined on some resamples leaves them out
        let ci = bootstrap_ci(2, &cfg, |idx| {
            auroc(&gather(&[0.1, 0.9], idx), &gather(&[false, true], idx))
        })
        .unwrap();
        assert!(ci.resamples_used < 1000 && ci.resamples_used > 300);
        // grouped: 2 groups, metric = number of items
        // per-class + macro on shared resamples
        let sc: Vec<Vec<f64>> = (0..n).map(|i| vec![scores[i], -scores[i]]).collect();
        let lb: Vec<Vec<bool>> = labels.iter().map(|&l| vec![l, l]).collect();
        let e = auroc_with_ci(&sc, &lb, Some(&cfg));
        assert_eq!(e.per_class[0].unwrap().value, a.value);
        assert_eq!(e.per_class[0].unwrap().ci, a.ci); // same seed, same resamples
        assert!((e.per_class[1].unwrap().value - (1.0 - a.value)).abs() < 1e-12);
        assert!((e.macro_.unwrap().value - 0.5).abs() < 1e-12);
        let acc = accuracy_with_ci(&[0, 1, 1, 0], &[0, 1, 0, 0], Some(&cfg)).unwrap();
        assert_eq!(acc.value, 0.75);
        assert!(acc.ci.unwrap().low < 0.75 && acc.ci.unwrap().high == 1.0);
        let g = vec![vec![0], vec![1, 2, 3]];
        let ci = bootstrap_ci_grouped(&g, &cfg, |idx| Some(idx.len() as f64)).unwrap();
        assert_eq!((ci.low, ci.high), (2.0, 6.0));
    }

    #[test]
    fn percentile_like_numpy() {
        // np.percentile([1, 2, 3, 4], [2.5, 97.5]) == [1.075, 3.925]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile_sorted(&v, 2.5).unwrap() - 1.075).abs() < 1e-12);
        assert!((percentile_sorted(&v, 97.5).unwrap() - 3.925).abs() < 1e-12);
    }

    #[test]
    fn median_like_numpy() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn t_interval_by_hand() {
        // Two values: sd = sqrt(2), half width = t(0.975, 1) * sqrt(2) / sqrt(2) = 12.706.
        let i = t_interval_95(&[1.0, 3.0]).unwrap();
        assert_eq!(i.mean, 2.0);
        assert!((i.low - (2.0 - 12.706)).abs() < 1e-12 && (i.high - (2.0 + 12.706)).abs() < 1e-12);
        // Three values 1, 2, 3: sd = 1, half width = 4.303 / sqrt(3).
        let i = t_interval_95(&[3.0, 1.0, 2.0]).unwrap();
        let half = 4.303 / 3f64.sqrt();
        assert!((i.low - (2.0 - half)).abs() < 1e-12 && (i.high - (2.0 + half)).abs() < 1e-12);
        // scipy.stats.t.interval(0.95, 4, loc=mean, scale=sem) of [0.70, 0.72, 0.74, 0.71, 0.73]
        // is (0.70037, 0.73963); the 3-decimal table quantile (2.776 for 2.77645) agrees to 1e-5.
        let i = t_interval_95(&[0.70, 0.72, 0.74, 0.71, 0.73]).unwrap();
        assert!((i.mean - 0.72).abs() < 1e-12);
        assert!((i.low - 0.70037).abs() < 1e-5 && (i.high - 0.73963).abs() < 1e-5, "{i:?}");
        // Symmetric around the mean; no spread, no width.
        assert!(((i.high - i.mean) - (i.mean - i.low)).abs() < 1e-12);
        let i = t_interval_95(&[0.5; 4]).unwrap();
        assert_eq!((i.low, i.mean, i.high), (0.5, 0.5, 0.5));
    }

    #[test]
    fn t_interval_needs_two_values_and_caps_the_degrees_of_freedom() {
        assert_eq!(t_interval_95(&[]), None);
        assert_eq!(t_interval_95(&[0.7]), None);
        // 10 values: 9 degrees of freedom, the last table entry.
        let ten: Vec<f64> = (0..10).map(|i| i as f64).collect();
        let sd = (ten.iter().map(|v| (v - 4.5f64).powi(2)).sum::<f64>() / 9.0).sqrt();
        let i = t_interval_95(&ten).unwrap();
        assert!((i.high - 4.5 - 2.262 * sd / 10f64.sqrt()).abs() < 1e-12);
        // 12 values: still the 9-degrees-of-freedom quantile (conservative).
        let twelve: Vec<f64> = (0..12).map(|i| i as f64).collect();
        let sd = (twelve.iter().map(|v| (v - 5.5f64).powi(2)).sum::<f64>() / 11.0).sqrt();
        let i = t_interval_95(&twelve).unwrap();
        assert!((i.high - 5.5 - 2.262 * sd / 12f64.sqrt()).abs() < 1e-12);
        // The quantiles shrink with the degrees of freedom.
        assert!(T95.windows(2).all(|w| w[0] > w[1]));
    }
}
