//! `medvlp init`: a freshly initialised model directory from a preset, optionally with the text
//! encoder taken from a Hugging Face BERT directory (with a report of loaded / new tensors).

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use medvlp_data::tokenizer::Tokenizer;
use medvlp_model::model_dir::{self, bert_text_config, check_vocabulary, preload_bert};
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
    /// Image pooling instead of the preset's: cls or mean.
    #[arg(long)]
    pub vision_pooling: Option<String>,
    /// Text pooling instead of the preset's: cls, mean or pooler (BERT's tanh pooler, which
    /// `medvlp export --format hf` needs).
    #[arg(long)]
    pub text_pooling: Option<String>,
}

fn pooling(s: &str) -> Result<medvlp_model::config::Pooling> {
    serde_json::from_value(serde_json::json!(s))
        .map_err(|_| anyhow::anyhow!("pooling '{s}' is not one of cls, mean, pooler"))
}

pub fn run(args: Args) -> Result<()> {
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::preset(&args.preset)?;
    if let Some(p) = &args.vision_pooling {
        cfg.vision_config.pooling = pooling(p)?;
    }
    if let Some(p) = &args.text_pooling {
        cfg.text_config.pooling = pooling(p)?;
    }
    cfg.validate()?;
    let store = ParamStore::new(args.seed, DType::F32, &dev);
    let mut tokenizer = args.tokenizer.clone();
    if let Some(dir) = &args.text_init {
        cfg.text_config = bert_text_config(dir, &cfg.text_config)?;
        preload_bert(&store, dir)?;
        if tokenizer.is_none() {
            tokenizer = Some(dir.join("tokenizer.json"));
        }
    }
    if let Some(t) = &tokenizer {
        let tok = Tokenizer::from_file(t, cfg.text_config.max_length)?;
        if args.text_init.is_some() {
            check_vocabulary(&tok, &cfg.text_config)
                .with_context(|| format!("tokenizer {}", t.display()))?;
        } else {
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
