//! An index of image and report embeddings from one model (`medvlp index`, the server's
//! `/v1/retrieve`): row `i` is one study, with its image embedding, its report embedding and its
//! [`Record`]. Rows are L2-normalised, so scores are cosine similarities. Exact search is a blocked
//! matrix product over the memory-mapped file; an optional HNSW graph per matrix
//! (instant-distance) answers approximate queries, with its recall@10 against exact search
//! measured when it is built and kept in the header. No tensor engine: plain `f32` vectors.
//!
//! # File format (version 1)
//!
//! One little-endian file, written atomically (a temporary file in the same folder, fsync,
//! rename) and memory-mapped by [`Index::open`]:
//!
//! | section | content |
//! |---|---|
//! | magic | the 8 bytes `MVLPIDX1` |
//! | header length | u64 |
//! | header | JSON: [`Header`], whose `sections` give each section's byte offset and length |
//! | padding | zeros up to a multiple of 64 bytes |
//! | images | `count x dim` row-major, f32 or bf16 ([`Dtype`]) |
//! | padding, texts | the report embeddings, same shape and dtype, 64-byte aligned |
//! | padding, records | JSONL, one [`Record`] per row, in row order |
//! | padding, graphs | optional: the HNSW graph over the images, then the one over the texts, each postcard-encoded with its sha256 in the header; a graph point is stored as its row number (the vectors are the matrices above) |
//!
//! `open` refuses a file whose sections are misaligned, overlap, have the wrong length for
//! `count x dim x dtype`, run past the end of the file, or do not end exactly where the file does,
//! a graph whose checksum or links are wrong, and records that do not parse; every error names the
//! file. bf16 halves the matrices; search widens them to f32 on the fly.

mod ann;
mod file;
mod matrix;
#[cfg(test)]
mod tests;

pub use file::{append, write, Index};

use serde::{Deserialize, Serialize};

/// The 8 bytes every index file starts with.
pub const MAGIC: &[u8; 8] = b"MVLPIDX1";
/// The format [`write`] produces and [`Index::open`] reads.
pub const FORMAT_VERSION: u32 = 1;

/// One indexed study.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The manifest's study id (unique in an index).
    pub id: String,
    /// The report text that was embedded.
    pub text: String,
    /// The image that was embedded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// How the matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    /// bfloat16 (round to nearest even): half the size, cosine within about 1e-2 of f32.
    Bf16,
}

impl Dtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// Which matrix a search runs over: `Image` finds images (for a text query), `Text` finds reports
/// (for an image query).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Image,
    Text,
}

/// One result: a row of the index and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
}

/// The HNSW graphs' parameters and their measured quality. Given to [`write`] as the request for
/// graphs (`ef_construction`, `ef_search`, `seed`); the writer fills in the measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnInfo {
    /// "hnsw".
    pub kind: String,
    /// Links per node (instant-distance's fixed `M`; twice that on layer zero).
    pub m: usize,
    pub ef_construction: usize,
    /// Candidates kept during a search; searches for more than this many hits run exactly.
    pub ef_search: usize,
    /// Seed of the layer assignment (insertion is parallel, so graphs may still differ run to run).
    pub seed: u64,
    /// Mean fraction of the exact top-10 images that the image graph finds, for the report rows
    /// taken as queries.
    pub recall_at_10_images: f32,
    /// The same for the report graph, with the image rows as queries.
    pub recall_at_10_texts: f32,
    /// Queries per recall measurement: up to 200 rows, evenly spaced.
    pub recall_queries: usize,
    /// Seconds spent building both graphs.
    pub build_seconds: f64,
}

impl AnnInfo {
    /// A request for HNSW graphs with these parameters.
    pub fn hnsw(ef_construction: usize, ef_search: usize, seed: u64) -> Self {
        AnnInfo {
            kind: "hnsw".into(),
            m: ann::M,
            ef_construction,
            ef_search,
            seed,
            recall_at_10_images: 0.0,
            recall_at_10_texts: 0.0,
            recall_queries: 0,
            build_seconds: 0.0,
        }
    }
}

impl Default for AnnInfo {
    /// ef_construction 100, ef_search 128, seed 0. On random 64-d unit vectors (harder than
    /// real embeddings; 2-core EPYC): recall@10 1.0 for 2,000 rows, 0.99 for 20,000 rows, whose two
    /// graphs take 80 s to build. ef_construction 200 gained under 0.01 of recall for 10% more time.
    fn default() -> Self {
        AnnInfo::hnsw(100, 128, 0)
    }
}

/// Where a section lies in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
    /// sha256 (lowercase hex) of the section, for the graphs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The sections of an index file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sections {
    pub images: Span,
    pub texts: Span,
    pub records: Span,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ann_images: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ann_texts: Option<Span>,
}

/// The header of an index file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format_version: u32,
    /// sha256 of the model's weights file (`Evaluator::model_hash`): queries must be embedded by
    /// the same model.
    pub model_hash: String,
    pub dim: usize,
    pub count: usize,
    pub dtype: Dtype,
    /// Which report text the text rows embed: "report" (findings + impression) or "impression".
    pub field: String,
    /// The HNSW graphs, when the index has them.
    #[serde(default)]
    pub ann: Option<AnnInfo>,
    /// Set by the writer.
    #[serde(default)]
    pub sections: Sections,
}

impl Header {
    /// A header to give [`write`]: `count`, `format_version` and `sections` are filled in by it.
    pub fn new(model_hash: &str, dim: usize, dtype: Dtype, field: &str) -> Self {
        Header {
            format_version: FORMAT_VERSION,
            model_hash: model_hash.to_string(),
            dim,
            count: 0,
            dtype,
            field: field.to_string(),
            ann: None,
            sections: Sections::default(),
        }
    }
}

/// The report fields an index can embed.
pub const FIELDS: [&str; 2] = ["report", "impression"];
