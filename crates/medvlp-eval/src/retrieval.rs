//! Image<->report retrieval from embeddings.
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
use crate::metrics::{self, BootstrapConfig, Estimate, LabelRelevance};
use anyhow::{ensure, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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
                metrics::estimate(n, boot, |idx| {
                    metrics::recall_at_k_opt(&metrics::gather(r, idx), k)
                }),
            );
        }
        push(
            "mean_rank".into(),
            metrics::estimate(n, boot, |idx| metrics::mean_rank(&metrics::gather(r, idx))),
        );
        push(
            "median_rank".into(),
            metrics::estimate(n, boot, |idx| metrics::median_rank(&metrics::gather(r, idx))),
        );
        if let Some(rel) = &self.relevant_in_top {
            for &k in ks {
                push(
                    format!("hit@{k}"),
                    metrics::estimate(n, boot, |idx| {
                        metrics::hit_at_k(&metrics::gather(rel, idx), k)
                    }),
                );
            }
            for &k in ks {
                push(
                    format!("precision@{k}"),
                    metrics::estimate(n, boot, |idx| {
                        metrics::precision_at_k(&metrics::gather(rel, idx), k)
                    }),
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
                    let rank = metrics::rank_of(&row, local);
                    let r = match labels {
                        Some(l) => metrics::top_k(&row, kmax)
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
