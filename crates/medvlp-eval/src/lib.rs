//! medvlp-eval: the evaluation protocols (zero-shot classification, linear probes, retrieval and
//! the fine-tuning protocol's data handling), their metrics, statistics and results.
//!
//! Candle-free: everything works on plain `f32` embeddings (`&[Vec<f32>]`, one row per item),
//! `f64` scores and manifests; the model side (`medvlp_train::evaluate`, with
//! `medvlp_model::encode::Evaluator`) computes embeddings and calls in here.
//!
//! - [`options`]: [`EvalOptions`], what one evaluation run is asked to do;
//! - [`splits`]: the studies each protocol sees, their embeddings, label fractions;
//! - [`protocols`]: zero-shot, linear probe, retrieval, fine-tuning -> result records and plots;
//! - [`zeroshot`], [`probe`], [`retrieval`]: the scoring, the probe and all ranking metrics;
//! - [`metrics`]: classification metrics; [`stats`]: bootstrap and t intervals;
//! - [`results`]: `results.jsonl` records and the markdown table writer; [`plots`]: SVG/PNG.

mod linalg;
pub mod metrics;
pub mod options;
pub mod plots;
pub mod probe;
pub mod protocols;
pub mod results;
pub mod retrieval;
pub mod splits;
pub mod stats;
pub mod zeroshot;

pub use options::{EvalOptions, TextField};
