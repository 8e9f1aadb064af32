//! The embedding matrices (owned f32 while writing, memory-mapped f32/bf16 once written), their dot
//! products, and deterministic top-k selection.

use crate::{Dtype, Hit};
use memmap2::Mmap;
use rayon::prelude::*;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

/// Rows per block of the exact search: a block of f32 rows (256 x 512 x 4 = 512 KiB at the base
/// model's width) stays in L2 while every query of a batch passes over it.
pub const BLOCK_ROWS: usize = 256;

enum Store {
    /// Row-major values, already rounded to the file's dtype (the writer's copy).
    Owned(Vec<f32>),
    /// `count x dim` little-endian values at `offset` in the mapped file.
    Mapped { map: Arc<Mmap>, offset: usize, dtype: Dtype },
}

/// One `count x dim` matrix of L2-normalised rows.
pub(crate) struct Matrix {
    store: Store,
    pub count: usize,
    pub dim: usize,
}

impl Matrix {
    pub fn owned(values: Vec<f32>, dim: usize) -> Self {
        let count = values.len().checked_div(dim).unwrap_or(0);
        Matrix { store: Store::Owned(values), count, dim }
    }

    /// The caller has checked that `offset + count * dim * dtype.size()` lies inside `map`.
    pub fn mapped(map: Arc<Mmap>, offset: usize, count: usize, dim: usize, dtype: Dtype) -> Self {
        Matrix { store: Store::Mapped { map, offset, dtype }, count, dim }
    }

    /// Rows `start..end` as f32: borrowed when the storage already is (owned, or f32 mapped at an
    /// aligned offset on a little-endian machine), decoded otherwise.
    pub fn rows(&self, start: usize, end: usize) -> Cow<'_, [f32]> {
        let (a, b) = (start * self.dim, end * self.dim);
        match &self.store {
            Store::Owned(v) => Cow::Borrowed(&v[a..b]),
            Store::Mapped { map, offset, dtype } => {
                let size = dtype.size();
                let bytes = &map[offset + a * size..offset + b * size];
                match dtype {
                    Dtype::F32 => match f32_view(bytes) {
                        Some(v) => Cow::Borrowed(v),
                        None => Cow::Owned(decode_f32(bytes)),
                    },
                    Dtype::Bf16 => Cow::Owned(decode_bf16(bytes)),
                }
            }
        }
    }

    pub fn row(&self, row: usize) -> Cow<'_, [f32]> {
        self.rows(row, row + 1)
    }

    /// `row . q` without materialising the row (the HNSW search calls this per visited node).
    pub fn dot_row(&self, row: usize, q: &[f32]) -> f32 {
        match &self.store {
            Store::Mapped { map, offset, dtype: Dtype::Bf16 } => {
                let at = offset + row * self.dim * 2;
                dot_bf16(&map[at..at + self.dim * 2], q)
            }
            _ => dot(&self.row(row), q),
        }
    }

    /// Exact top-`k` rows for each query (queries are normalised, `dim` long): blocks of
    /// [`BLOCK_ROWS`] rows in parallel, each scored against every query, partial selection per
    /// block, then merged. Deterministic: the order is total (score, then row).
    pub fn top_k(&self, queries: &[&[f32]], k: usize) -> Vec<Vec<Hit>> {
        let nq = queries.len();
        let blocks = self.count.div_ceil(BLOCK_ROWS);
        (0..blocks)
            .into_par_iter()
            .map(|b| {
                let start = b * BLOCK_ROWS;
                let end = (start + BLOCK_ROWS).min(self.count);
                let rows = self.rows(start, end);
                let mut per_query: Vec<Vec<Hit>> = vec![Vec::with_capacity(end - start); nq];
                for (i, row) in rows.chunks_exact(self.dim).enumerate() {
                    for (hits, q) in per_query.iter_mut().zip(queries) {
                        hits.push(Hit { row: start + i, score: dot(row, q) });
                    }
                }
                for hits in &mut per_query {
                    select_top_k(hits, k, false);
                }
                per_query
            })
            .reduce(
                || vec![Vec::new(); nq],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        x.extend(y);
                        select_top_k(x, k, false);
                    }
                    a
                },
            )
            .into_iter()
            .map(|mut hits| {
                select_top_k(&mut hits, k, true);
                hits
            })
            .collect()
    }
}

/// Best first: higher score, then lower row. NaN (only from a corrupted matrix) ranks last.
pub(crate) fn hit_order(a: &Hit, b: &Hit) -> Ordering {
    let key = |h: &Hit| if h.score.is_nan() { f32::NEG_INFINITY } else { h.score };
    key(b).total_cmp(&key(a)).then(a.row.cmp(&b.row))
}

/// Keeps the best `k` of `hits`, sorted when `sort`.
pub(crate) fn select_top_k(hits: &mut Vec<Hit>, k: usize, sort: bool) {
    if hits.len() > k {
        if k > 0 {
            hits.select_nth_unstable_by(k - 1, hit_order);
        }
        hits.truncate(k);
    }
    if sort {
        hits.sort_unstable_by(hit_order);
    }
}

/// Dot product with eight independent accumulators, so the compiler can keep them in SIMD lanes
/// (a single running sum cannot be reordered).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

fn dot_bf16(row: &[u8], q: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (row.chunks_exact(16), q.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += bf16_to_f32(u16::from_le_bytes([x[2 * l], x[2 * l + 1]])) * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.chunks_exact(2).zip(rb) {
        tail += bf16_to_f32(u16::from_le_bytes([x[0], x[1]])) * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// The bytes as `&[f32]` when that is what they are in memory: little-endian and 4-aligned.
fn f32_view(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32; `align_to` only yields the aligned middle part.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

fn decode_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn decode_bf16(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()
}

pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Round to nearest, ties to even (the values are finite: the writer refuses others).
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// `values` in the file's encoding, and the values that encoding gives back.
pub(crate) fn encode(values: &[f32], dtype: Dtype) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        Dtype::F32 => (values.iter().flat_map(|v| v.to_le_bytes()).collect(), values.to_vec()),
        Dtype::Bf16 => {
            let half: Vec<u16> = values.iter().map(|&v| f32_to_bf16(v)).collect();
            (
                half.iter().flat_map(|h| h.to_le_bytes()).collect(),
                half.iter().map(|&h| bf16_to_f32(h)).collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_to_f32(f32_to_bf16(-0.5)), -0.5);
    }

    #[test]
    fn dot_handles_every_remainder() {
        for n in 0..20 {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 2.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - want).abs() < 1e-4, "n = {n}");
            let (bytes, rounded) = encode(&a, Dtype::Bf16);
            let want: f32 = rounded.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot_bf16(&bytes, &b) - want).abs() < 1e-4, "bf16 n = {n}");
        }
    }
}
