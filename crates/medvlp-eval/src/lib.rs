//! medvlp-eval: metrics, zero-shot classification, label-efficient probes and retrieval.
//!
//! Candle-free: everything works on plain `f32` embeddings (`&[Vec<f32>]`, one row per item) and
//! `f64` scores; the `medvlp` binary computes embeddings with the model and calls in here.

mod linalg;
pub mod metrics;
pub mod plots;
pub mod probe;
pub mod results;
pub mod retrieval;
pub mod stats;
pub mod zeroshot;
