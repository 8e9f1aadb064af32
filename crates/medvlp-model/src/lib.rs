//! medvlp-model: encoders, fusion, heads and the project's own differentiable layers on candle,
//! plus weight import/export and model directories.
//!
//! Components follow candle-transformers' style: one component per file, plain structs, a
//! `forward`, Hugging Face parameter names.

pub mod bert;
pub mod config;
pub mod convnet;
#[cfg(feature = "cuda")]
pub mod cuda_driver;
pub mod encode;
pub mod fusion;
pub mod gradcheck;
pub mod heads;
pub mod interop;
pub mod mae_decoder;
pub mod masking;
pub mod medvlp;
pub mod memory;
pub mod model_dir;
pub mod nn;
pub mod params;
pub mod runtime;
pub mod vision;
pub mod vit;

pub use config::ModelConfig;
pub use medvlp::MedVlp;
pub use params::ParamStore;
