//! Small dense helpers on `f32` rows (vectorisable loops; no tensor engine).

/// Dot product with 8 independent accumulators so the compiler can vectorise it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// L2 norm (f64 accumulation).
pub fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
}

/// A copy of `v` scaled to unit L2 norm; a zero vector stays zero.
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let n = norm(v);
    if n == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|&x| (x as f64 / n) as f32).collect()
}

/// Rows scaled to unit L2 norm, checking that all have dimension `d` (the first row's when None).
pub fn normalized_rows(
    rows: &[Vec<f32>],
    what: &str,
    d: Option<usize>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let d = d.or_else(|| rows.first().map(Vec::len)).unwrap_or(0);
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            anyhow::ensure!(
                r.len() == d,
                "{what}: row {i} has dimension {}, expected {d}",
                r.len()
            );
            anyhow::ensure!(
                r.iter().all(|x| x.is_finite()),
                "{what}: row {i} has a non-finite value"
            );
            Ok(normalized(r))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_normalise() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..19).map(|i| (i % 3) as f32).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), want);
        let n = normalized(&[3.0, 4.0]);
        assert!((n[0] - 0.6).abs() < 1e-7 && (n[1] - 0.8).abs() < 1e-7);
        assert_eq!(normalized(&[0.0, 0.0]), vec![0.0, 0.0]);
        assert!(normalized_rows(&[vec![1.0], vec![1.0, 2.0]], "x", None).is_err());
    }
}
