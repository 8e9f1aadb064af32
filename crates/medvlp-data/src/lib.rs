//! medvlp-data: everything that turns files on disk into samples, without a tensor engine.
//!
//! - [`tokenizer`]: Hugging Face `tokenizer.json` loading, batch encoding with word offsets,
//!   WordPiece training.
//! - [`image`]: PNG/JPEG/DICOM decoding to grayscale (windowing, MONOCHROME1) and the
//!   preprocessing pipeline ([`image::preprocess::PreprocessConfig`]).
//! - [`dataset`]: the JSONL manifest, dataset adapters and `prepare`.
//! - [`loader`]: parallel, deterministic, prefetching batch loader with an optional mmap cache.
//! - [`bench`]: helpers of `medvlp bench data` (synthetic JPEG, MIMIC-sized tree generator).
//! - [`guard`]: third-party decoder panics caught quietly, reported as errors.
//! - [`text`]: radiology lexicon, entity extraction with assertion, report labels, prompt files.

pub mod assets;
pub mod bench;
pub mod dataset;
pub mod guard;
pub mod hash;
pub mod image;
pub mod loader;
pub mod text;
pub mod tokenizer;
