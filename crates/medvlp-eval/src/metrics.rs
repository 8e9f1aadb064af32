//! Metrics with the field's definitions: rank-based AUROC with tie handling (scikit-learn's
//! `roc_auc_score`), Recall@K for paired retrieval.

/// Area under the ROC curve from scores and 0/1 labels: the Mann-Whitney U statistic with
/// average ranks for ties. `None` when only one class is present (undefined, as in scikit-learn).
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "auroc: scores and labels differ in length");
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap_or(std::cmp::Ordering::Equal));
    // Average 1-based ranks over tie groups.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum_pos += avg;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Rank (0-based) of the correct item for each query in a similarity matrix where query `i`'s
/// correct candidate is candidate `i`. Ties count against the query (pessimistic).
pub fn paired_ranks(sim: &[Vec<f32>]) -> Vec<usize> {
    sim.iter()
        .enumerate()
        .map(|(i, row)| {
            let s = row[i];
            row.iter().enumerate().filter(|&(j, &x)| j != i && x >= s).count()
        })
        .collect()
}

/// Share of queries whose correct item ranks in the top `k`.
pub fn recall_at_k(ranks: &[usize], k: usize) -> f64 {
    if ranks.is_empty() {
        return f64::NAN;
    }
    ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_matches_scikit_learn_with_ties() {
        // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        // ties: roc_auc_score([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875
        assert_eq!(auroc(&[0.5, 0.5, 0.2, 0.9], &[false, true, false, true]), Some(0.875));
        // all tied: 0.5
        assert_eq!(auroc(&[1.0; 4], &[false, true, false, true]), Some(0.5));
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn recall_from_paired_similarities() {
        let sim = vec![vec![0.9, 0.1, 0.2], vec![0.8, 0.5, 0.1], vec![0.1, 0.2, 0.3]];
        let r = paired_ranks(&sim);
        assert_eq!(r, vec![0, 1, 0]);
        assert!((recall_at_k(&r, 1) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(recall_at_k(&r, 2), 1.0);
    }
}
