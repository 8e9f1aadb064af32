//! medvlp-train: pre-training objectives, method recipes (and their registry), the run
//! configuration, the data pipeline, the trainer, fine-tuning, and the evaluation of a model
//! directory (`evaluate`, which fine-tuning needs here).

pub mod data_pipeline;
pub mod dist;
pub mod evaluate;
pub mod finetune;
pub mod objectives;
pub mod optim;
pub mod recipe;
pub mod run;
pub mod run_config;
pub mod trainer;
