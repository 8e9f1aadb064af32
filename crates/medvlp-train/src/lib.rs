//! medvlp-train
