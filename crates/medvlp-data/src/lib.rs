//! medvlp-data: everything that turns files on disk into samples, without a tensor engine.
//!
//! - [`tokenizer`]: Hugging Face `tokenizer.json` loading, batch encoding with word offsets,
//!   WordPiece training.

pub mod assets;
pub mod tokenizer;
