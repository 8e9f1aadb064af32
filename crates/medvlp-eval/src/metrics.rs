//! Metrics with the field's definitions, checked against scikit-learn (`tests/sklearn_fixtures.rs`
//! compares with values that `tests/fixtures/make_fixtures.py` computed with scikit-learn).
//!
//! Conventions used throughout the crate:
//! - scores and labels of one binary problem are `&[f64]` / `&[bool]` of equal length;
//! - multi-label data is sample-major: `scores[i][c]`, `labels[i][c]` (sample `i`, class `c`);
//! - single-label (multi-class) data is a class index per sample;
//! - a metric that is undefined on its input (one class only, empty input) is `None`, never NaN.
//!
//! Ranking metrics (ranks, Recall@K, Precision@K) live in [`crate::retrieval`]; the bootstrap
//! that the `*_with_ci` functions here use lives in [`crate::stats`].

use crate::stats::{bootstrap_ci_multi, estimate, gather, BootstrapConfig, Estimate};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

fn check_len(a: usize, b: usize, what: &str) {
    assert_eq!(a, b, "{what}: scores and labels differ in length ({a} vs {b})");
}

/// Indices sorted by score, descending; NaN scores sort last. Stable, so equal scores keep their
/// input order (it never matters for the tie-aware metrics below).
fn order_desc(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| desc_cmp(scores[a], scores[b]));
    idx
}

fn desc_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => b.partial_cmp(&a).unwrap(),
    }
}

/// Cumulative (tp, fp) at every distinct score, descending: point `k` counts all samples whose
/// score is >= the k-th largest distinct score. This is scikit-learn's `_binary_clf_curve`.
fn binary_clf_curve(scores: &[f64], labels: &[bool]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let idx = order_desc(scores);
    let (mut tps, mut fps, mut thr) = (vec![], vec![], vec![]);
    let (mut tp, mut fp) = (0.0, 0.0);
    for (pos, &i) in idx.iter().enumerate() {
        if labels[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_group = pos + 1 == idx.len() || scores[idx[pos + 1]] != scores[i];
        if last_of_group {
            tps.push(tp);
            fps.push(fp);
            thr.push(scores[i]);
        }
    }
    (tps, fps, thr)
}

/// Area under the ROC curve from scores and 0/1 labels: the Mann-Whitney U statistic with
/// average ranks for ties (equal to scikit-learn's `roc_auc_score`). `None` when only one class
/// is present (undefined, as in scikit-learn).
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    check_len(scores.len(), labels.len(), "auroc");
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| desc_cmp(scores[b], scores[a]));
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

/// ROC curve points, as scikit-learn's `roc_curve(..., drop_intermediate=False)`: one point per
/// distinct score (descending thresholds), preceded by (0, 0) at threshold +infinity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    /// `thresholds[0]` is `f64::INFINITY`; a sample is predicted positive when score >= threshold.
    pub thresholds: Vec<f64>,
}

/// ROC curve; `None` when only one class is present.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Option<RocCurve> {
    check_len(scores.len(), labels.len(), "roc_curve");
    let (tps, fps, thr) = binary_clf_curve(scores, labels);
    let (p, n) = (*tps.last()?, *fps.last()?);
    if p == 0.0 || n == 0.0 {
        return None;
    }
    let mut c = RocCurve { fpr: vec![0.0], tpr: vec![0.0], thresholds: vec![f64::INFINITY] };
    for k in 0..tps.len() {
        c.fpr.push(fps[k] / n);
        c.tpr.push(tps[k] / p);
        c.thresholds.push(thr[k]);
    }
    Some(c)
}

/// Average precision (area under the precision-recall curve as a step function), identical to
/// scikit-learn's `average_precision_score`: sum over distinct thresholds of
/// (R_k - R_{k-1}) * P_k. `None` when there is no positive (recall undefined); 1.0 when every
/// sample is positive.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Option<f64> {
    check_len(scores.len(), labels.len(), "average_precision");
    let (tps, fps, _) = binary_clf_curve(scores, labels);
    let p = *tps.last()?;
    if p == 0.0 {
        return None;
    }
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    for k in 0..tps.len() {
        let recall = tps[k] / p;
        let precision = tps[k] / (tps[k] + fps[k]);
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Some(ap)
}

/// Alias: AUPRC as the field reports it is average precision.
pub fn auprc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    average_precision(scores, labels)
}

/// Share of equal entries; `None` for empty input.
pub fn accuracy<T: PartialEq>(pred: &[T], truth: &[T]) -> Option<f64> {
    check_len(pred.len(), truth.len(), "accuracy");
    if pred.is_empty() {
        return None;
    }
    Some(pred.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / pred.len() as f64)
}

/// Confusion counts of one binary problem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
}

impl Confusion {
    pub fn from_binary(pred: &[bool], truth: &[bool]) -> Self {
        check_len(pred.len(), truth.len(), "confusion");
        let mut c = Confusion::default();
        for (&p, &t) in pred.iter().zip(truth) {
            match (p, t) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    fn add(self, o: Self) -> Self {
        Confusion {
            tp: self.tp + o.tp,
            fp: self.fp + o.fp,
            fn_: self.fn_ + o.fn_,
            tn: self.tn + o.tn,
        }
    }

    /// F1 = 2TP / (2TP + FP + FN); `None` when the class is absent from both truth and
    /// prediction (0/0). scikit-learn returns its `zero_division` value there.
    pub fn f1(&self) -> Option<f64> {
        let d = 2 * self.tp + self.fp + self.fn_;
        (d > 0).then(|| 2.0 * self.tp as f64 / d as f64)
    }

    pub fn precision(&self) -> Option<f64> {
        let d = self.tp + self.fp;
        (d > 0).then(|| self.tp as f64 / d as f64)
    }

    pub fn recall(&self) -> Option<f64> {
        let d = self.tp + self.fn_;
        (d > 0).then(|| self.tp as f64 / d as f64)
    }
}

/// F1 of a binary problem (`f1_score(y, pred)`); `None` when truth and prediction have no positive.
pub fn f1_binary(pred: &[bool], truth: &[bool]) -> Option<f64> {
    Confusion::from_binary(pred, truth).f1()
}

/// F1 per class, macro and micro.
///
/// `macro_` is the mean over classes whose F1 is defined (scikit-learn's
/// `f1_score(average="macro", zero_division=np.nan)`, which leaves undefined classes out);
/// `micro` pools the counts of all classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct F1Scores {
    pub per_class: Vec<Option<f64>>,
    pub macro_: Option<f64>,
    pub micro: Option<f64>,
}

fn f1_from_confusions(cs: &[Confusion]) -> F1Scores {
    let per_class: Vec<Option<f64>> = cs.iter().map(Confusion::f1).collect();
    let micro = cs.iter().fold(Confusion::default(), |a, &c| a.add(c)).f1();
    F1Scores { macro_: mean_defined(&per_class), per_class, micro }
}

/// Mean of the defined entries; `None` when none is defined.
pub fn mean_defined(xs: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = xs.iter().flatten().copied().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// F1 of a single-label problem with classes `0..n_classes` (one-vs-rest counts per class).
/// Micro F1 equals accuracy here.
pub fn f1_multiclass(pred: &[usize], truth: &[usize], n_classes: usize) -> F1Scores {
    check_len(pred.len(), truth.len(), "f1_multiclass");
    let mut cs = vec![Confusion::default(); n_classes];
    for (&p, &t) in pred.iter().zip(truth) {
        assert!(
            p < n_classes && t < n_classes,
            "f1_multiclass: class index out of range (pred {p}, truth {t}, {n_classes} classes)"
        );
        if p == t {
            cs[p].tp += 1;
        } else {
            cs[p].fp += 1;
            cs[t].fn_ += 1;
        }
    }
    let n = pred.len();
    for c in &mut cs {
        c.tn = n - c.tp - c.fp - c.fn_;
    }
    f1_from_confusions(&cs)
}

/// F1 of a multi-label problem (sample-major indicator rows).
pub fn f1_multilabel(pred: &[Vec<bool>], truth: &[Vec<bool>]) -> F1Scores {
    check_len(pred.len(), truth.len(), "f1_multilabel");
    let n_classes = truth.first().map_or(0, Vec::len);
    let cs: Vec<Confusion> = (0..n_classes)
        .map(|c| {
            let p: Vec<bool> = pred.iter().map(|r| r[c]).collect();
            let t: Vec<bool> = truth.iter().map(|r| r[c]).collect();
            Confusion::from_binary(&p, &t)
        })
        .collect();
    f1_from_confusions(&cs)
}

/// Column `c` of a sample-major matrix.
pub fn column<T: Copy>(m: &[Vec<T>], c: usize) -> Vec<T> {
    m.iter().map(|r| r[c]).collect()
}

/// AUROC per class and macro (mean over classes where AUROC is defined).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerClass {
    pub per_class: Vec<Option<f64>>,
    pub macro_: Option<f64>,
}

/// Per-class AUROC of sample-major scores and labels; macro over defined classes.
pub fn auroc_per_class(scores: &[Vec<f64>], labels: &[Vec<bool>]) -> PerClass {
    per_class_metric(scores, labels, auroc)
}

/// Per-class average precision; macro over defined classes.
pub fn auprc_per_class(scores: &[Vec<f64>], labels: &[Vec<bool>]) -> PerClass {
    per_class_metric(scores, labels, average_precision)
}

fn per_class_metric(
    scores: &[Vec<f64>],
    labels: &[Vec<bool>],
    f: fn(&[f64], &[bool]) -> Option<f64>,
) -> PerClass {
    check_len(scores.len(), labels.len(), "per-class metric");
    let n_classes = labels.first().map_or(0, Vec::len);
    let per_class: Vec<Option<f64>> =
        (0..n_classes).map(|c| f(&column(scores, c), &column(labels, c))).collect();
    PerClass { macro_: mean_defined(&per_class), per_class }
}

/// The threshold that maximises F1 on validation scores: a sample is positive when
/// score >= threshold. Among cut points with equal best F1 the highest threshold wins; the
/// threshold is placed midway between the last included score and the next lower distinct score
/// (so it generalises to unseen scores in between). `None` when the labels have no positive.
pub fn best_f1_threshold(scores: &[f64], labels: &[bool]) -> Option<f64> {
    check_len(scores.len(), labels.len(), "best_f1_threshold");
    let (tps, fps, thr) = binary_clf_curve(scores, labels);
    let p = *tps.last()?;
    if p == 0.0 {
        return None;
    }
    let mut best = (f64::NEG_INFINITY, 0usize);
    for k in 0..tps.len() {
        if thr[k].is_nan() {
            break;
        }
        let f1 = 2.0 * tps[k] / (tps[k] + fps[k] + p);
        if f1 > best.0 {
            best = (f1, k);
        }
    }
    let k = best.1;
    Some(match thr.get(k + 1) {
        Some(&next) if next.is_finite() => thr[k] / 2.0 + next / 2.0,
        _ => thr[k],
    })
}

/// Per-class F1-maximising thresholds from validation data (sample-major); `None` for classes
/// without a validation positive.
pub fn select_f1_thresholds(val_scores: &[Vec<f64>], val_labels: &[Vec<bool>]) -> Vec<Option<f64>> {
    check_len(val_scores.len(), val_labels.len(), "select_f1_thresholds");
    let n_classes = val_labels.first().map_or(0, Vec::len);
    (0..n_classes)
        .map(|c| best_f1_threshold(&column(val_scores, c), &column(val_labels, c)))
        .collect()
}

/// Binarise sample-major scores with per-class thresholds (`fallback` where a class has none).
pub fn apply_thresholds(
    scores: &[Vec<f64>],
    thresholds: &[Option<f64>],
    fallback: f64,
) -> Vec<Vec<bool>> {
    scores
        .iter()
        .map(|r| {
            assert_eq!(
                r.len(),
                thresholds.len(),
                "apply_thresholds: {} scores vs {} thresholds",
                r.len(),
                thresholds.len()
            );
            r.iter().zip(thresholds).map(|(&s, t)| s >= t.unwrap_or(fallback)).collect()
        })
        .collect()
}

/// Index of the largest entry per row (lowest index on ties; NaN never wins).
pub fn argmax_rows(scores: &[Vec<f64>]) -> Vec<usize> {
    scores
        .iter()
        .map(|r| {
            let mut best = 0;
            for (j, &s) in r.iter().enumerate() {
                if s > r[best] || r[best].is_nan() && !s.is_nan() {
                    best = j;
                }
            }
            best
        })
        .collect()
}

/// Per-class estimates and their macro mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassEstimates {
    pub per_class: Vec<Option<Estimate>>,
    pub macro_: Option<Estimate>,
}

/// Per-class AUROC and macro AUROC (mean over the classes defined on each (re)sample) of
/// sample-major scores/labels, with bootstrap CIs over samples when `boot` is given.
pub fn auroc_with_ci(
    scores: &[Vec<f64>],
    labels: &[Vec<bool>],
    boot: Option<&BootstrapConfig>,
) -> ClassEstimates {
    per_class_with_ci(scores, labels, boot, auroc)
}

/// As [`auroc_with_ci`] for average precision (AUPRC).
pub fn auprc_with_ci(
    scores: &[Vec<f64>],
    labels: &[Vec<bool>],
    boot: Option<&BootstrapConfig>,
) -> ClassEstimates {
    per_class_with_ci(scores, labels, boot, average_precision)
}

fn per_class_with_ci(
    scores: &[Vec<f64>],
    labels: &[Vec<bool>],
    boot: Option<&BootstrapConfig>,
    f: fn(&[f64], &[bool]) -> Option<f64>,
) -> ClassEstimates {
    check_len(scores.len(), labels.len(), "per-class metric");
    let n_classes = labels.first().map_or(0, Vec::len);
    let cols: Vec<(Vec<f64>, Vec<bool>)> =
        (0..n_classes).map(|c| (column(scores, c), column(labels, c))).collect();
    let eval = |idx: &[usize]| -> Vec<Option<f64>> {
        let mut v: Vec<Option<f64>> =
            cols.iter().map(|(s, y)| f(&gather(s, idx), &gather(y, idx))).collect();
        v.push(mean_defined(&v));
        v
    };
    let all: Vec<usize> = (0..scores.len()).collect();
    let full = eval(&all);
    let cis = match boot {
        Some(cfg) => bootstrap_ci_multi(scores.len(), cfg, n_classes + 1, eval),
        None => vec![None; n_classes + 1],
    };
    let mut est: Vec<Option<Estimate>> =
        full.iter().zip(&cis).map(|(v, ci)| v.map(|value| Estimate { value, ci: *ci })).collect();
    let macro_ = est.pop().flatten();
    ClassEstimates { per_class: est, macro_ }
}

/// Accuracy of class predictions with a bootstrap CI over samples.
pub fn accuracy_with_ci(
    pred: &[usize],
    truth: &[usize],
    boot: Option<&BootstrapConfig>,
) -> Option<Estimate> {
    check_len(pred.len(), truth.len(), "accuracy");
    let correct: Vec<bool> = pred.iter().zip(truth).map(|(a, b)| a == b).collect();
    estimate(pred.len(), boot, |idx| {
        (!idx.is_empty())
            .then(|| idx.iter().filter(|&&i| correct[i]).count() as f64 / idx.len() as f64)
    })
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
    fn average_precision_by_hand() {
        // sklearn: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8333...
        let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((ap - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-12);
        // all tied: precision = prevalence
        assert_eq!(average_precision(&[0.3; 4], &[true, false, false, false]), Some(0.25));
        assert_eq!(average_precision(&[0.3; 2], &[false, false]), None);
        assert_eq!(average_precision(&[0.3, 0.1], &[true, true]), Some(1.0));
    }

    #[test]
    fn roc_curve_points() {
        let c = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert_eq!(c.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(c.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(c.thresholds[1..], [0.8, 0.4, 0.35, 0.1]);
        assert!(roc_curve(&[0.1], &[true]).is_none());
    }

    #[test]
    fn f1_by_hand() {
        // tp=2 fp=1 fn=1 -> 4/6
        let f = f1_binary(&[true, true, true, false, false], &[true, true, false, true, false])
            .unwrap();
        assert!((f - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(f1_binary(&[false, false], &[false, false]), None);
        let m = f1_multiclass(&[0, 1, 1, 2], &[0, 1, 2, 2], 4);
        assert_eq!(m.per_class[0], Some(1.0));
        assert!((m.per_class[1].unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.per_class[3], None);
        assert!((m.micro.unwrap() - 0.75).abs() < 1e-12); // = accuracy
        assert!((m.macro_.unwrap() - (1.0 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn threshold_maximises_f1_on_validation() {
        let s = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1];
        let y = [true, true, false, true, false, false];
        // cuts: >=0.9: 2/(1+3)=.5, >=0.8: 4/5=.8, >=0.7: 4/6, >=0.3: 6/7=.857, >=0.2: 6/8, ...
        let t = best_f1_threshold(&s, &y).unwrap();
        assert!((t - 0.25).abs() < 1e-12);
        let th = select_f1_thresholds(
            &[vec![0.9, 0.1], vec![0.2, 0.1]],
            &[vec![true, false], vec![false, false]],
        );
        assert_eq!(th, vec![Some(0.55), None]);
        let p = apply_thresholds(&[vec![0.6, 0.6], vec![0.5, 0.4]], &th, 0.5);
        assert_eq!(p, vec![vec![true, true], vec![false, false]]);
    }
}
