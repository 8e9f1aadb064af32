//! medvlp-train: pre-training objectives, method recipes (and their registry), the run
//! configuration, the data pipeline, the trainer and fine-tuning.

pub mod data_pipeline;
pub mod finetune;
pub mod objectives;
pub mod optim;
pub mod recipe;
pub mod run;
pub mod run_config;
pub mod trainer;
