//! medvlp-model
