//! Zero-shot classification from embeddings: image embeddings against per-class prompt
//! embeddings (computed by the model from the versioned prompt files).
//!
//! All embeddings are L2-normalised here, whether or not the caller did. Scores are sample-major
//! (`scores[i][c]`). Prompt modes:
//! - `single`: cosine similarity to one prompt per class;
//! - `ensemble`: the mean of the normalised prompt embeddings, renormalised (GLoRIA / MedCLIP /
//!   BenchX). [`ClassPrompts::Ensemble`] scores it by cosine; the evaluation protocol uses it as
//!   the positive side of a `PosNeg` pair instead, since a one-sided cosine ranks normal studies
//!   first (`docs/zero-shot-ensemble.md`);
//! - `pos_neg`: CheXzero: softmax over [sim(pos), sim(neg)] / temperature, the probability of the
//!   positive prompt = sigmoid((sim_pos - sim_neg) / temperature) ([`pos_neg_probability`], also
//!   used by the quick validation during training). Each side may itself be an ensemble of
//!   prompts.

use crate::linalg::{dot, normalized, normalized_rows};
use crate::metrics::{self, ClassEstimates};
use crate::stats::{BootstrapConfig, Estimate};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The prompt mode, as recorded in results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptMode {
    Single,
    Ensemble,
    PosNeg,
}

impl PromptMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PromptMode::Single => "single",
            PromptMode::Ensemble => "ensemble",
            PromptMode::PosNeg => "pos_neg",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "single" => PromptMode::Single,
            "ensemble" => PromptMode::Ensemble,
            "pos_neg" | "pos-neg" | "posneg" => PromptMode::PosNeg,
            _ => anyhow::bail!("unknown prompt mode {s:?} (single, ensemble, pos_neg)"),
        })
    }
}

/// The prompt embeddings of one class.
#[derive(Clone, Debug, PartialEq)]
pub enum ClassPrompts {
    /// One prompt embedding.
    Single(Vec<f32>),
    /// Several prompt embeddings, combined into one (mean of normalised, renormalised).
    Ensemble(Vec<Vec<f32>>),
    /// Positive and negative prompts (each side ensembled if it has several).
    PosNeg { positive: Vec<Vec<f32>>, negative: Vec<Vec<f32>> },
}

impl ClassPrompts {
    pub fn mode(&self) -> PromptMode {
        match self {
            ClassPrompts::Single(_) => PromptMode::Single,
            ClassPrompts::Ensemble(_) => PromptMode::Ensemble,
            ClassPrompts::PosNeg { .. } => PromptMode::PosNeg,
        }
    }
}

/// Mean of the L2-normalised prompt embeddings, renormalised.
pub fn ensemble_embedding(prompts: &[Vec<f32>]) -> Result<Vec<f32>> {
    ensure!(!prompts.is_empty(), "prompt ensemble is empty");
    let rows = normalized_rows(prompts, "prompt ensemble", None)?;
    let mut mean = vec![0f32; rows[0].len()];
    for r in &rows {
        for (m, x) in mean.iter_mut().zip(r) {
            *m += x;
        }
    }
    Ok(normalized(&mean))
}

enum Prepared {
    Cos(Vec<f32>),
    PosNeg(Vec<f32>, Vec<f32>),
}

/// Zero-shot scores (`n_images x n_classes`): cosine similarity for `Single`/`Ensemble`, the
/// probability of the positive prompt for `PosNeg` (`temperature` > 0 is only used there;
/// CheXzero uses the model's learned logit scale, i.e. temperature = 1 / logit_scale).
/// Errors on empty prompts, non-finite values or mismatched dimensions.
pub fn zero_shot_scores(
    images: &[Vec<f32>],
    classes: &[ClassPrompts],
    temperature: f64,
) -> Result<Vec<Vec<f64>>> {
    ensure!(!classes.is_empty(), "zero-shot: no classes");
    let images = normalized_rows(images, "image embeddings", None)?;
    let d = images.first().map(Vec::len);
    let check = |v: &Vec<f32>, c: usize| -> Result<()> {
        if let Some(d) = d {
            ensure!(
                v.len() == d,
                "zero-shot: class {c} prompt embedding has dimension {}, images have {d}",
                v.len()
            );
        }
        Ok(())
    };
    let prepared: Vec<Prepared> = classes
        .iter()
        .enumerate()
        .map(|(c, p)| {
            let p = match p {
                ClassPrompts::Single(v) => Prepared::Cos(
                    normalized_rows(std::slice::from_ref(v), "prompt", None)?.remove(0),
                ),
                ClassPrompts::Ensemble(vs) => Prepared::Cos(ensemble_embedding(vs)?),
                ClassPrompts::PosNeg { positive, negative } => {
                    ensure!(
                        temperature > 0.0 && temperature.is_finite(),
                        "zero-shot: temperature must be > 0, got {temperature}"
                    );
                    Prepared::PosNeg(ensemble_embedding(positive)?, ensemble_embedding(negative)?)
                }
            };
            match &p {
                Prepared::Cos(v) => check(v, c)?,
                Prepared::PosNeg(a, b) => {
                    check(a, c)?;
                    check(b, c)?
                }
            }
            Ok(p)
        })
        .collect::<Result<_>>()?;
    Ok(images
        .par_iter()
        .map(|x| {
            prepared
                .iter()
                .map(|p| match p {
                    Prepared::Cos(v) => dot(x, v) as f64,
                    Prepared::PosNeg(pos, neg) => {
                        pos_neg_probability(dot(x, pos) as f64 - dot(x, neg) as f64, temperature)
                    }
                })
                .collect()
        })
        .collect())
}

/// CheXzero's positive/negative prompt score: the softmax probability of the positive prompt over
/// `[sim_pos, sim_neg] / temperature`, i.e. `sigmoid(margin / temperature)` with
/// `margin = sim_pos - sim_neg`. The one implementation of pos/neg scoring: [`zero_shot_scores`]
/// and `medvlp-train`'s quick validation call it.
pub fn pos_neg_probability(margin: f64, temperature: f64) -> f64 {
    1.0 / (1.0 + (-(margin / temperature)).exp())
}

/// Row-wise softmax of `scores / temperature` (class probabilities for N-way zero-shot).
pub fn softmax_rows(scores: &[Vec<f64>], temperature: f64) -> Vec<Vec<f64>> {
    scores
        .iter()
        .map(|r| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = r.iter().map(|&s| ((s - m) / temperature).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|v| v / z).collect()
        })
        .collect()
}

/// Multi-label zero-shot evaluation: per-class AUROC and macro AUROC (with bootstrap CIs when
/// `boot` is given). `labels[i][c]`: image `i` is positive for class `c`.
pub fn evaluate_multilabel(
    scores: &[Vec<f64>],
    labels: &[Vec<bool>],
    boot: Option<&BootstrapConfig>,
) -> ClassEstimates {
    metrics::auroc_with_ci(scores, labels, boot)
}

/// Single-label N-way predictions: the class with the highest score (lowest index on ties).
pub fn nway_predict(scores: &[Vec<f64>]) -> Vec<usize> {
    metrics::argmax_rows(scores)
}

/// Single-label N-way zero-shot accuracy (5x200-style) with an optional bootstrap CI.
pub fn evaluate_nway(
    scores: &[Vec<f64>],
    truth: &[usize],
    boot: Option<&BootstrapConfig>,
) -> Option<Estimate> {
    metrics::accuracy_with_ci(&nway_predict(scores), truth, boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(i: usize, d: usize) -> Vec<f32> {
        let mut v = vec![0.0; d];
        v[i] = 1.0;
        v
    }

    #[test]
    fn single_is_cosine_and_normalises() {
        let imgs = vec![vec![3.0, 4.0], vec![0.0, 2.0]];
        let s = zero_shot_scores(
            &imgs,
            &[ClassPrompts::Single(vec![10.0, 0.0]), ClassPrompts::Single(vec![0.0, 1.0])],
            1.0,
        )
        .unwrap();
        assert!((s[0][0] - 0.6).abs() < 1e-6 && (s[0][1] - 0.8).abs() < 1e-6);
        assert!((s[1][0]).abs() < 1e-6 && (s[1][1] - 1.0).abs() < 1e-6);
        assert!(zero_shot_scores(&imgs, &[ClassPrompts::Single(vec![1.0, 0.0, 0.0])], 1.0).is_err());
    }

    #[test]
    fn ensemble_is_mean_of_normalised_renormalised() {
        // (1,0) and (0,5) -> normalised mean (0.5, 0.5) -> (0.7071, 0.7071)
        let v = ensemble_embedding(&[vec![1.0, 0.0], vec![0.0, 5.0]]).unwrap();
        assert!(
            (v[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6 && (v[1] - v[0]).abs() < 1e-7
        );
        let s = zero_shot_scores(
            &[vec![1.0, 0.0]],
            &[ClassPrompts::Ensemble(vec![vec![1.0, 0.0], vec![0.0, 5.0]])],
            1.0,
        )
        .unwrap();
        assert!((s[0][0] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!(ensemble_embedding(&[]).is_err());
    }

    #[test]
    fn pos_neg_is_softmax_over_the_pair() {
        // sim_pos = 0.6, sim_neg = 0.8, temperature 0.1: p = e^6 / (e^6 + e^8)
        let s = zero_shot_scores(
            &[vec![3.0, 4.0]],
            &[ClassPrompts::PosNeg { positive: vec![e(0, 2)], negative: vec![e(1, 2)] }],
            0.1,
        )
        .unwrap();
        let want = 6f64.exp() / (6f64.exp() + 8f64.exp());
        assert!((s[0][0] - want).abs() < 1e-5, "{} vs {want}", s[0][0]);
        assert!((pos_neg_probability(0.6 - 0.8, 0.1) - want).abs() < 1e-12);
        assert_eq!(pos_neg_probability(0.0, 0.5), 0.5);
        // A temperature of 0.1 scales the margin by exactly 10 for f32 similarities (training's
        // quick validation relies on it to keep its values).
        for m in [0.123_456_79f32, -0.987_654_3, 3.0e-8, 1.0] {
            let m = m as f64;
            assert_eq!(pos_neg_probability(m, 0.1), 1.0 / (1.0 + (-m * 10.0).exp()));
        }
        assert!(zero_shot_scores(
            &[vec![1.0, 0.0]],
            &[ClassPrompts::PosNeg { positive: vec![e(0, 2)], negative: vec![e(1, 2)] }],
            0.0
        )
        .is_err());
    }

    #[test]
    fn multilabel_auroc_and_nway_accuracy() {
        // 4 images, 2 classes along axes; image 3 is ambiguous.
        let imgs = vec![vec![1.0, 0.1], vec![0.1, 1.0], vec![1.0, 0.9], vec![0.2, 0.3]];
        let classes = [ClassPrompts::Single(e(0, 2)), ClassPrompts::Single(e(1, 2))];
        let s = zero_shot_scores(&imgs, &classes, 1.0).unwrap();
        let labels =
            vec![vec![true, false], vec![false, true], vec![true, true], vec![false, false]];
        let r = evaluate_multilabel(&s, &labels, None);
        assert_eq!(r.per_class[0].unwrap().value, 1.0);
        // class 1 cos: img0 .0995, img1 .995, img2 .669, img3 .832 -> positives {1,2}: pairs
        // (1>0, 1>3, 2>0, 2<3) = 3/4
        assert_eq!(r.per_class[1].unwrap().value, 0.75);
        assert_eq!(r.macro_.unwrap().value, 0.875);
        let acc = evaluate_nway(&s, &[0, 1, 0, 1], None).unwrap();
        assert_eq!(acc.value, 1.0);
        let acc = evaluate_nway(&s, &[0, 1, 1, 0], None).unwrap();
        assert_eq!(acc.value, 0.5);
        let p = softmax_rows(&[vec![0.0, 0.0], vec![1.0, 0.0]], 1.0);
        assert_eq!(p[0], vec![0.5, 0.5]);
        assert!((p[1][0] - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-12);
    }
}
