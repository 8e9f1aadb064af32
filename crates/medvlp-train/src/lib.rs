//! medvlp-train: pre-training objectives, method recipes, the trainer and distributed training.

pub mod data_pipeline;
pub mod finetune;
pub mod objectives;
pub mod optim;
pub mod recipe;
pub mod run;
pub mod run_config;
pub mod trainer;
