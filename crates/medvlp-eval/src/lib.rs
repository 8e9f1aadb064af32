//! medvlp-eval: metrics, zero-shot classification, label-efficient probes and retrieval.

pub mod metrics;
