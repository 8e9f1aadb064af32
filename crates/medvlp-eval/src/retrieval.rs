//! Image<->report retrieval from embeddings, and every ranking metric of the crate.
//!
//! Ranks: [`paired_ranks`] and [`rank_of`] are 0-based (0 = retrieved first) and count ties
//! against the query; [`mean_rank`] / [`median_rank`] report 1-based ranks, as papers do. The
//! evaluation protocol ([`evaluate_retrieval`]) and the quick validation during training
//! (`medvlp-train`) rank with the same functions.
//!
//! `images[i]` and `texts[i]` are a pair (one frontal image per study, as in MCR's setting).
//! Similarity is the cosine (both sides are L2-normalised here). Two relevance definitions:
//! - **exact pair**: only the paired item is relevant; `ranks` holds its 0-based rank among the
//!   candidates (ties count against the query); Recall@K (= Hit@K for one relevant item), mean and
//!   median rank (1-based) follow.
//! - **label-based** (when label vectors are given): a retrieved candidate is relevant when its
//!   label vector relates to the query's as [`LabelRelevance`] says (default: identical positive
//!   sets, i.e. the same class on 5x200 data; the paired item is always relevant then). Hit@K =
//!   share of queries with a relevant item in the top K; Precision@K = mean share of relevant
//!   items in the top K. Equal similarities are ordered by candidate index.
//!
//! Candidate pool: the full split, or seeded chunks of `size` (the "5xN"/pool-of-1000 protocol):
//! the items are shuffled with the seed and cut into consecutive chunks; each query is ranked only
//! against the candidates of its chunk. When `size` does not divide the count, the last chunk is
//! the last `size` items of the shuffled order, scoring only the queries not scored before, so
//! every query sees exactly `size` candidates (or all of them when there are fewer).

use crate::linalg::{dot, normalized_rows};
use crate::stats::{self, BootstrapConfig, Estimate};
use anyhow::{ensure, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

// ---------------------------------------------------------------- ranking metrics

/// Rank (0-based) of the correct item for each query in a similarity matrix where query `i`'s
/// correct candidate is candidate `i`. Ties count against the query (pessimistic).
pub fn paired_ranks(sim: &[Vec<f32>]) -> Vec<usize> {
    sim.iter().enumerate().map(|(i, row)| rank_of(row, i)).collect()
}

/// 0-based rank of candidate `target` in one row of similarities: the number of other candidates
/// scoring >= it (ties count against the target; a NaN target ranks last).
pub fn rank_of(row: &[f32], target: usize) -> usize {
    let s = row[target];
    if s.is_nan() {
        return row.len() - 1;
    }
    row.iter().enumerate().filter(|&(j, &x)| j != target && x >= s).count()
}

/// Share of queries whose correct item ranks in the top `k` (0-based ranks). Kept with its
/// original signature for `medvlp-train`: NaN for no queries; prefer [`recall_at_k_opt`].
pub fn recall_at_k(ranks: &[usize], k: usize) -> f64 {
    recall_at_k_opt(ranks, k).unwrap_or(f64::NAN)
}

/// Share of queries whose correct item ranks in the top `k`; `None` for no queries.
/// With one relevant item per query this is also Hit@K.
pub fn recall_at_k_opt(ranks: &[usize], k: usize) -> Option<f64> {
    (!ranks.is_empty())
        .then(|| ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len() as f64)
}

/// Mean 1-based rank of 0-based ranks; `None` for no queries.
pub fn mean_rank(ranks: &[usize]) -> Option<f64> {
    (!ranks.is_empty())
        .then(|| ranks.iter().map(|&r| (r + 1) as f64).sum::<f64>() / ranks.len() as f64)
}

/// Median 1-based rank (numpy's median: mean of the two middle values for even counts).
pub fn median_rank(ranks: &[usize]) -> Option<f64> {
    let v: Vec<f64> = ranks.iter().map(|&r| (r + 1) as f64).collect();
    stats::median(&v)
}

/// When a retrieved candidate counts as relevant to a query under label-based relevance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelRelevance {
    /// Identical positive-label sets (for single-label data: the same class; this is the
    /// "5x200" hit definition). Two samples with no positive label are relevant to each other.
    #[default]
    SameLabels,
    /// At least one shared positive label (samples with no positive label are never relevant).
    AnySharedLabel,
}

impl LabelRelevance {
    pub fn relevant(self, a: &[bool], b: &[bool]) -> bool {
        match self {
            LabelRelevance::SameLabels => a == b,
            LabelRelevance::AnySharedLabel => a.iter().zip(b).any(|(&x, &y)| x && y),
        }
    }
}

/// Indices of the `k` highest entries of `row`, best first; equal scores keep index order.
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let cmp = |a: &usize, b: &usize| {
        let (x, y) = (row[*a], row[*b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(b),
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            _ => y.partial_cmp(&x).unwrap().then(a.cmp(b)),
        }
    };
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let k = k.min(row.len());
    if k == 0 {
        return vec![];
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Hit@K by label: share of queries with at least one relevant item among their top `k`.
/// `relevant_in_top[q][j]` says whether the query's j-th retrieved item is relevant.
pub fn hit_at_k(relevant_in_top: &[Vec<bool>], k: usize) -> Option<f64> {
    (!relevant_in_top.is_empty()).then(|| {
        relevant_in_top.iter().filter(|r| r.iter().take(k).any(|&x| x)).count() as f64
            / relevant_in_top.len() as f64
    })
}

/// Precision@K by label: mean over queries of (relevant items among the top `k`) / `k`.
pub fn precision_at_k(relevant_in_top: &[Vec<bool>], k: usize) -> Option<f64> {
    (!relevant_in_top.is_empty() && k > 0).then(|| {
        relevant_in_top
            .iter()
            .map(|r| r.iter().take(k).filter(|&&x| x).count() as f64 / k as f64)
            .sum::<f64>()
            / relevant_in_top.len() as f64
    })
}

// ---------------------------------------------------------------- the retrieval protocol

/// Retrieval direction as written into results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ImageToText,
    TextToImage,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ImageToText => "image_to_text",
            Direction::TextToImage => "text_to_image",
        }
    }
}

/// Candidate pool.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// Every item of the split is a candidate.
    Full,
    /// Seeded chunks of `size` candidates.
    Chunks { size: usize, seed: u64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrievalConfig {
    pub pool: Pool,
    /// K values for Recall@K, Hit@K and Precision@K.
    pub ks: Vec<usize>,
    pub relevance: LabelRelevance,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        RetrievalConfig {
            pool: Pool::Full,
            ks: vec![1, 5, 10],
            relevance: LabelRelevance::SameLabels,
        }
    }
}

/// Per-query outcome of one direction (query order = item order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectionResult {
    pub direction: Direction,
    /// Candidates each query was ranked against.
    pub pool_size: usize,
    /// 0-based rank of the paired item per query.
    pub ranks: Vec<usize>,
    /// Label relevance of the top `max(ks)` retrieved candidates per query (when labels were given).
    pub relevant_in_top: Option<Vec<Vec<bool>>>,
}

/// A named metric value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedEstimate {
    pub metric: String,
    pub estimate: Estimate,
}

impl DirectionResult {
    /// `recall@K`, `mean_rank`, `median_rank` (exact pair) and, with labels, `hit@K` and
    /// `precision@K` (label-based), each with a bootstrap CI over queries when `boot` is given.
    /// Metrics undefined on the data (no queries) are left out.
    pub fn metrics(&self, ks: &[usize], boot: Option<&BootstrapConfig>) -> Vec<NamedEstimate> {
        let n = self.ranks.len();
        let r = &self.ranks;
        let mut out = vec![];
        let mut push = |name: String, e: Option<Estimate>| {
            if let Some(estimate) = e {
                out.push(NamedEstimate { metric: name, estimate });
            }
        };
        for &k in ks {
            push(
                format!("recall@{k}"),
                stats::estimate(n, boot, |idx| recall_at_k_opt(&stats::gather(r, idx), k)),
            );
        }
        push("mean_rank".into(), stats::estimate(n, boot, |idx| mean_rank(&stats::gather(r, idx))));
        push(
            "median_rank".into(),
            stats::estimate(n, boot, |idx| median_rank(&stats::gather(r, idx))),
        );
        if let Some(rel) = &self.relevant_in_top {
            for &k in ks {
                push(
                    format!("hit@{k}"),
                    stats::estimate(n, boot, |idx| hit_at_k(&stats::gather(rel, idx), k)),
                );
            }
            for &k in ks {
                push(
                    format!("precision@{k}"),
                    stats::estimate(n, boot, |idx| precision_at_k(&stats::gather(rel, idx), k)),
                );
            }
        }
        out
    }
}

/// Both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrievalResult {
    pub image_to_text: DirectionResult,
    pub text_to_image: DirectionResult,
}

/// Chunks of item indices and, per chunk, the items scored as queries in it.
pub fn pool_chunks(n: usize, pool: Pool) -> Result<Vec<(Vec<usize>, Vec<usize>)>> {
    match pool {
        Pool::Full => Ok(vec![((0..n).collect(), (0..n).collect())]),
        Pool::Chunks { size, seed } => {
            ensure!(size >= 1, "retrieval: pool size must be >= 1");
            let mut order: Vec<usize> = (0..n).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for i in (1..n).rev() {
                let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
                order.swap(i, j);
            }
            if n <= size {
                return Ok(vec![(order.clone(), order)]);
            }
            let mut out = vec![];
            let mut start = 0;
            while start < n {
                if start + size <= n {
                    let c = order[start..start + size].to_vec();
                    out.push((c.clone(), c));
                } else {
                    out.push((order[n - size..].to_vec(), order[start..].to_vec()));
                }
                start += size;
            }
            Ok(out)
        }
    }
}

/// Image->text and text->image retrieval. `labels` (sample-major, one row per pair) enables the
/// label-based metrics.
pub fn evaluate_retrieval(
    images: &[Vec<f32>],
    texts: &[Vec<f32>],
    labels: Option<&[Vec<bool>]>,
    cfg: &RetrievalConfig,
) -> Result<RetrievalResult> {
    ensure!(
        images.len() == texts.len(),
        "retrieval: {} images but {} texts (they must be paired)",
        images.len(),
        texts.len()
    );
    ensure!(!images.is_empty(), "retrieval: no items");
    if let Some(l) = labels {
        ensure!(
            l.len() == images.len(),
            "retrieval: {} items but {} label rows",
            images.len(),
            l.len()
        );
    }
    let imgs = normalized_rows(images, "image embeddings", None)?;
    let txts = normalized_rows(texts, "text embeddings", Some(imgs[0].len()))?;
    let chunks = pool_chunks(images.len(), cfg.pool)?;
    let kmax = cfg.ks.iter().copied().max().unwrap_or(0);
    let one = |direction: Direction| -> DirectionResult {
        let (q, c) = match direction {
            Direction::ImageToText => (&imgs, &txts),
            Direction::TextToImage => (&txts, &imgs),
        };
        let n = q.len();
        let mut ranks = vec![0usize; n];
        let mut rel: Vec<Vec<bool>> = vec![vec![]; n];
        let mut pool_size = 0;
        for (cands, queries) in &chunks {
            pool_size = pool_size.max(cands.len());
            let res: Vec<(usize, usize, Vec<bool>)> = queries
                .par_iter()
                .map(|&qi| {
                    let row: Vec<f32> = cands.iter().map(|&j| dot(&q[qi], &c[j])).collect();
                    let local = cands
                        .iter()
                        .position(|&j| j == qi)
                        .expect("a query's pair is in its chunk");
                    let rank = rank_of(&row, local);
                    let r = match labels {
                        Some(l) => top_k(&row, kmax)
                            .iter()
                            .map(|&t| cfg.relevance.relevant(&l[qi], &l[cands[t]]))
                            .collect(),
                        None => vec![],
                    };
                    (qi, rank, r)
                })
                .collect();
            for (qi, rank, r) in res {
                ranks[qi] = rank;
                rel[qi] = r;
            }
        }
        DirectionResult { direction, pool_size, ranks, relevant_in_top: labels.map(|_| rel) }
    };
    Ok(RetrievalResult {
        image_to_text: one(Direction::ImageToText),
        text_to_image: one(Direction::TextToImage),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_from_paired_similarities() {
        let sim = vec![vec![0.9, 0.1, 0.2], vec![0.8, 0.5, 0.1], vec![0.1, 0.2, 0.3]];
        let r = paired_ranks(&sim);
        assert_eq!(r, vec![0, 1, 0]);
        assert!((recall_at_k(&r, 1) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(recall_at_k(&r, 2), 1.0);
        assert_eq!(recall_at_k_opt(&[], 2), None);
        // ties count against the query
        assert_eq!(rank_of(&[0.5, 0.5, 0.1], 0), 1);
    }
    #[test]
    fn ranks_and_label_precision() {
        assert_eq!(mean_rank(&[0, 1, 5]), Some(3.0));
        assert_eq!(median_rank(&[0, 1, 5, 9]), Some(4.0));
        assert_eq!(median_rank(&[]), None);
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9], 3), vec![1, 3, 2]);
        let rel = vec![vec![false, true, true], vec![false, false, false]];
        assert_eq!(hit_at_k(&rel, 1), Some(0.0));
        assert_eq!(hit_at_k(&rel, 2), Some(0.5));
        assert!((precision_at_k(&rel, 3).unwrap() - (2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!(LabelRelevance::SameLabels.relevant(&[false, false], &[false, false]));
        assert!(!LabelRelevance::AnySharedLabel.relevant(&[false, false], &[false, false]));
        assert!(LabelRelevance::AnySharedLabel.relevant(&[true, true], &[false, true]));
    }

    fn get<'a>(m: &'a [NamedEstimate], name: &str) -> &'a Estimate {
        &m.iter().find(|e| e.metric == name).unwrap_or_else(|| panic!("no {name}")).estimate
    }

    #[test]
    fn exact_pair_ranks_by_hand() {
        // 3 pairs in 2-d; text 1 is closer to image 0 than text 0 is.
        let imgs = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        let txts = vec![vec![1.0, 0.2], vec![1.0, 0.1], vec![0.9, 1.0]];
        let r = evaluate_retrieval(&imgs, &txts, None, &RetrievalConfig::default()).unwrap();
        // image 0: cos to texts: t0 .981, t1 .995, t2 .669 -> rank 1
        // image 1: t0 .196, t1 .0995, t2 .743 -> rank 2
        // image 2: t0 .832, t1 .774, t2 .9986 -> rank 0
        assert_eq!(r.image_to_text.ranks, vec![1, 2, 0]);
        // text 0 vs images: .981, .196, .832 -> 0; text 1: .995, .0995, .774 -> 2; text 2: .669, .743, .9986 -> 0
        assert_eq!(r.text_to_image.ranks, vec![0, 2, 0]);
        let m = r.image_to_text.metrics(&[1, 2, 3], None);
        assert!((get(&m, "recall@1").value - 1.0 / 3.0).abs() < 1e-12);
        assert!((get(&m, "recall@2").value - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(get(&m, "recall@3").value, 1.0);
        assert_eq!(get(&m, "mean_rank").value, 2.0);
        assert_eq!(get(&m, "median_rank").value, 2.0);
        assert!(m.iter().all(|e| !e.metric.starts_with("hit")));
        assert!(evaluate_retrieval(&imgs, &txts[..2], None, &RetrievalConfig::default()).is_err());
    }

    #[test]
    fn label_precision_by_hand() {
        // 4 items, classes A A B B (one-hot); embeddings cluster by class, pairs exact.
        let imgs = vec![
            vec![1.0, 0.0, 0.1],
            vec![1.0, 0.0, -0.1],
            vec![0.0, 1.0, 0.1],
            vec![0.0, 1.0, -0.1],
        ];
        let txts = imgs.clone();
        let labels =
            vec![vec![true, false], vec![true, false], vec![false, true], vec![false, true]];
        let cfg = RetrievalConfig { ks: vec![1, 2, 3], ..Default::default() };
        let r = evaluate_retrieval(&imgs, &txts, Some(&labels), &cfg).unwrap();
        let m = r.image_to_text.metrics(&cfg.ks, None);
        assert_eq!(get(&m, "recall@1").value, 1.0);
        assert_eq!(get(&m, "hit@1").value, 1.0);
        assert_eq!(get(&m, "precision@2").value, 1.0);
        assert!((get(&m, "precision@3").value - 2.0 / 3.0).abs() < 1e-12);
        let cfg2 = RetrievalConfig { relevance: LabelRelevance::AnySharedLabel, ..cfg.clone() };
        let r2 = evaluate_retrieval(&imgs, &txts, Some(&labels), &cfg2).unwrap();
        assert_eq!(r2.image_to_text.relevant_in_top, r.image_to_text.relevant_in_top);
    }

    #[test]
    fn pool_chunks_cover_every_query_once() {
        let ch = pool_chunks(25, Pool::Chunks { size: 10, seed: 3 }).unwrap();
        assert_eq!(ch.len(), 3);
        assert!(ch.iter().all(|(c, _)| c.len() == 10));
        let mut q: Vec<usize> = ch.iter().flat_map(|(_, q)| q.clone()).collect();
        assert_eq!(ch[2].1.len(), 5);
        q.sort();
        assert_eq!(q, (0..25).collect::<Vec<_>>());
        for (c, qs) in &ch {
            assert!(qs.iter().all(|x| c.contains(x)));
        }
        assert_eq!(pool_chunks(25, Pool::Chunks { size: 10, seed: 3 }).unwrap(), ch);
        assert_eq!(pool_chunks(5, Pool::Chunks { size: 10, seed: 3 }).unwrap()[0].0.len(), 5);
    }

    #[test]
    fn smaller_pool_gives_better_ranks() {
        // random embeddings: with a pool of 10 the paired item's rank is < 10.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut v = |_| {
            (0..8).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) - 0.5).collect::<Vec<f32>>()
        };
        let imgs: Vec<Vec<f32>> = (0..100).map(&mut v).collect();
        let txts: Vec<Vec<f32>> = (0..100).map(&mut v).collect();
        let full = evaluate_retrieval(&imgs, &txts, None, &RetrievalConfig::default()).unwrap();
        let cfg =
            RetrievalConfig { pool: Pool::Chunks { size: 10, seed: 0 }, ..Default::default() };
        let pooled = evaluate_retrieval(&imgs, &txts, None, &cfg).unwrap();
        assert_eq!(pooled.image_to_text.pool_size, 10);
        assert!(pooled.image_to_text.ranks.iter().all(|&r| r < 10));
        assert!(full.image_to_text.ranks.iter().any(|&r| r >= 10));
        // chance level: mean 1-based rank ~ 5.5 of 10
        let m = pooled.image_to_text.metrics(&[1], Some(&BootstrapConfig::default()));
        let mr = get(&m, "mean_rank");
        assert!(mr.value > 4.0 && mr.value < 7.0, "{mr:?}");
        let ci = mr.ci.unwrap();
        assert!(ci.low < mr.value && mr.value < ci.high);
    }
}
