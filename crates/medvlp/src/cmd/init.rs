//! `medvlp init`: a freshly initialised model directory from a preset, optionally with the text
//! encoder taken from a Hugging Face BERT directory (with a report of loaded / new tensors).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use medvlp_data::tokenizer::Tokenizer;
use medvlp_model::config::TextConfig;
use medvlp_model::model_dir::{self, hf_bert_name};
use medvlp_model::{MedVlp, ModelConfig, ParamStore};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// tiny, tiny-convnet, small (ConvNet), small-vit or base.
    #[arg(long, default_value = "small")]
    pub preset: String,
    #[arg(long)]
    pub out: PathBuf,
    /// tokenizer.json to ship with the model (sets the text vocabulary size).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Hugging Face BERT directory to initialise the text encoder from (config, weights, tokenizer).
    #[arg(long)]
    pub text_init: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::preset(&args.preset)?;
    let store = ParamStore::new(args.seed, DType::F32, &dev);
    let mut tokenizer = args.tokenizer.clone();
    if let Some(dir) = &args.text_init {
        let p = dir.join("config.json");
        let text: TextConfig = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{}: not a BERT config", p.display()))?;
        cfg.text_config = TextConfig {
            pooling: cfg.text_config.pooling,
            max_length: cfg.text_config.max_length.min(text.max_position_embeddings),
            ..text
        };
        store.preload_safetensors(&dir.join("model.safetensors"), |n| {
            hf_bert_name(n).map(|n| format!("text_model.{n}"))
        })?;
        if tokenizer.is_none() {
            tokenizer = Some(dir.join("tokenizer.json"));
        }
    }
    if let Some(t) = &tokenizer {
        let tok = Tokenizer::from_file(t, cfg.text_config.max_length)?;
        if args.text_init.is_some() && tok.vocab_size() > cfg.text_config.vocab_size {
            bail!(
                "tokenizer {} has {} tokens, the text encoder only {}",
                t.display(),
                tok.vocab_size(),
                cfg.text_config.vocab_size
            );
        }
        if args.text_init.is_none() {
            cfg.text_config.vocab_size = tok.vocab_size();
        }
    }
    MedVlp::new(&cfg, &store)?;
    let report = store.load_report();
    store.drop_unused();
    model_dir::save(&args.out, &cfg, &store, tokenizer.as_deref())?;
    eprintln!("{} parameters; {report}", store.num_params());
    if let Some(text_init) = &args.text_init {
        eprintln!(
            "loaded from {}: {} tensors; newly initialised: {}",
            text_init.display(),
            report.loaded.len(),
            report.initialised.iter().filter(|n| n.starts_with("text_model")).count()
        );
        for n in &report.unused {
            eprintln!("  unused in the checkpoint: {n}");
        }
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
