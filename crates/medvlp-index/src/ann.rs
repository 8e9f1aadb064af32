//! The optional HNSW graphs (instant-distance), one per matrix.
//!
//! A graph point is a row of its matrix. Serialised, a point is only its row number: the vectors
//! are the file's matrices, so the graph section costs about 200 bytes per row instead of a second
//! f32 copy of the embeddings. While a graph is decoded, the matrix it belongs to is lent to the
//! points through a thread-local (instant-distance derives `Deserialize`, so there is no other way
//! to pass it in). Decoded graphs are checked node by node against instant-distance 0.6.1's layout
//! (pinned exactly) before use, so that a corrupt graph is refused instead of indexing out of range.

use crate::matrix::Matrix;
use crate::Hit;
use anyhow::{bail, Context, Result};
use instant_distance::{Builder, Hnsw, Point, Search};
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

/// instant-distance's `M`: links per node on the upper layers (twice that on layer zero).
pub const M: usize = 32;
const INVALID: u32 = u32::MAX;

#[derive(Clone)]
pub(crate) enum AnnPoint {
    Row {
        row: u32,
        matrix: Arc<Matrix>,
    },
    /// A normalised query; never stored in a graph.
    Query(Vec<f32>),
}

impl Point for AnnPoint {
    /// Cosine distance (rows and queries are unit vectors).
    fn distance(&self, other: &Self) -> f32 {
        let sim = match (self, other) {
            (AnnPoint::Row { row, matrix }, AnnPoint::Query(q))
            | (AnnPoint::Query(q), AnnPoint::Row { row, matrix }) => {
                matrix.dot_row(*row as usize, q)
            }
            (AnnPoint::Row { row: a, matrix }, AnnPoint::Row { row: b, .. }) => {
                matrix.dot_row(*b as usize, &matrix.row(*a as usize))
            }
            (AnnPoint::Query(a), AnnPoint::Query(b)) => crate::matrix::dot(a, b),
        };
        1.0 - sim
    }
}

impl Serialize for AnnPoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AnnPoint::Row { row, .. } => row.serialize(s),
            AnnPoint::Query(_) => Err(serde::ser::Error::custom("a query is not a graph point")),
        }
    }
}

thread_local! {
    /// The matrix whose graph is being decoded on this thread.
    static DECODING: RefCell<Option<Arc<Matrix>>> = const { RefCell::new(None) };
}

impl<'de> Deserialize<'de> for AnnPoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let row = u32::deserialize(d)?;
        DECODING.with(|m| {
            let m = m.borrow();
            let matrix =
                m.as_ref().ok_or_else(|| D::Error::custom("graph decoded outside an index"))?;
            if row as usize >= matrix.count {
                return Err(D::Error::custom(format!(
                    "graph point {row} is not a row (the matrix has {})",
                    matrix.count
                )));
            }
            Ok(AnnPoint::Row { row, matrix: matrix.clone() })
        })
    }
}

/// An HNSW graph over one matrix.
pub(crate) struct AnnGraph {
    hnsw: Hnsw<AnnPoint>,
    matrix: Arc<Matrix>,
    pub ef_search: usize,
}

impl AnnGraph {
    pub fn build(matrix: Arc<Matrix>, ef_construction: usize, ef_search: usize, seed: u64) -> Self {
        let points = (0..matrix.count as u32)
            .map(|row| AnnPoint::Row { row, matrix: matrix.clone() })
            .collect();
        let (hnsw, _) = Builder::default()
            .ef_construction(ef_construction)
            .ef_search(ef_search)
            .seed(seed)
            .build_hnsw(points);
        AnnGraph { hnsw, matrix, ef_search }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(&self.hnsw).context("encoding the HNSW graph")
    }

    /// Decodes and checks a graph written by [`AnnGraph::to_bytes`] for `matrix`.
    pub fn from_bytes(bytes: &[u8], matrix: Arc<Matrix>) -> Result<Self> {
        let shape: GraphShape = postcard::from_bytes(bytes).context("decoding the HNSW graph")?;
        shape.check(matrix.count)?;
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                DECODING.with(|m| m.borrow_mut().take());
            }
        }
        DECODING.with(|m| *m.borrow_mut() = Some(matrix.clone()));
        let _reset = Reset;
        let (hnsw, rest) = postcard::take_from_bytes::<Hnsw<AnnPoint>>(bytes)
            .context("decoding the HNSW graph")?;
        if !rest.is_empty() {
            bail!("the HNSW graph has {} bytes after its end", rest.len());
        }
        let ef_search = shape.ef_search as usize;
        Ok(AnnGraph { hnsw, matrix, ef_search })
    }

    /// The graph's best `k` rows for a normalised query (at most `ef_search` of them), scored
    /// with the same dot product as the exact search.
    pub fn search(&self, q: &[f32], k: usize) -> Vec<Hit> {
        let mut search = Search::default();
        let query = AnnPoint::Query(q.to_vec());
        let mut hits: Vec<Hit> = self
            .hnsw
            .search(&query, &mut search)
            .filter_map(|item| match item.point {
                AnnPoint::Row { row, .. } => Some(*row as usize),
                AnnPoint::Query(_) => None,
            })
            .map(|row| Hit { row, score: crate::matrix::dot(&self.matrix.row(row), q) })
            .collect();
        crate::matrix::select_top_k(&mut hits, k, true);
        hits
    }
}

/// Mean fraction of the exact top-10 that the graph finds, over `queries` (normalised).
pub(crate) fn recall_at_10(graph: &AnnGraph, queries: &[Vec<f32>]) -> f32 {
    if queries.is_empty() {
        return 1.0;
    }
    let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
    let exact = graph.matrix.top_k(&refs, 10);
    let found: usize = queries
        .iter()
        .zip(&exact)
        .map(|(q, want)| {
            let want: HashSet<usize> = want.iter().map(|h| h.row).collect();
            graph.search(q, 10).iter().filter(|h| want.contains(&h.row)).count()
        })
        .sum();
    let wanted: usize = exact.iter().map(|e| e.len()).sum();
    found as f32 / wanted.max(1) as f32
}

/// instant-distance 0.6.1's `Hnsw` as serialised: `ef_search`, the points (row numbers here),
/// layer zero (2M links per point) and the upper layers (M links per node), links being point ids
/// or `u32::MAX`. Decoded on its own to check every link before the graph is used.
#[derive(Deserialize)]
struct GraphShape {
    ef_search: u64,
    points: Vec<u32>,
    zero: Vec<Links<{ 2 * M }>>,
    layers: Vec<Vec<Links<M>>>,
}

impl GraphShape {
    fn check(&self, count: usize) -> Result<()> {
        if self.points.len() != count {
            bail!("the HNSW graph has {} points for {count} rows", self.points.len());
        }
        let mut seen = vec![false; count];
        for &p in &self.points {
            if (p as usize) >= count || std::mem::replace(&mut seen[p as usize], true) {
                bail!("the HNSW graph's points are not the rows 0..{count}");
            }
        }
        if self.ef_search == 0 {
            bail!("the HNSW graph has ef_search 0");
        }
        if self.zero.len() != count {
            bail!("the HNSW graph's layer 0 has {} nodes for {count} points", self.zero.len());
        }
        // Searches enter at point 0 of the top layer and use a node's id in the layer below, so
        // every layer links only inside itself and is no larger than the one below it.
        let mut below = count;
        let layers = std::iter::once(self.zero.iter().map(|l| &l.0[..]).collect::<Vec<_>>())
            .chain(self.layers.iter().map(|l| l.iter().map(|n| &n.0[..]).collect()));
        for (depth, nodes) in layers.enumerate() {
            if nodes.len() > below || (count > 0 && nodes.is_empty()) {
                bail!("the HNSW graph's layer {depth} has {} nodes", nodes.len());
            }
            below = nodes.len();
            if nodes.iter().flat_map(|n| n.iter()).any(|&l| l != INVALID && l as usize >= below) {
                bail!("the HNSW graph's layer {depth} links outside itself");
            }
        }
        Ok(())
    }
}

/// A fixed-size array of links, serialised as a tuple (no length prefix).
struct Links<const N: usize>([u32; N]);

impl<'de, const N: usize> Deserialize<'de> for Links<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for V<N> {
            type Value = Links<N>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "{N} links")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Links<N>, A::Error> {
                let mut out = [INVALID; N];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot =
                        seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(Links(out))
            }
        }
        d.deserialize_tuple(N, V::<N>)
    }
}
