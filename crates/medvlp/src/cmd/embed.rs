//! `medvlp embed`: text embeddings from a medvlp model directory (normalised joint-space embedding)
//! or a Hugging Face BERT directory (attention-masked mean of the last hidden state, L2-normalised).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use medvlp_data::tokenizer::Tokenizer;
use medvlp_model::bert::masked_mean_pool;
use medvlp_model::model_dir::{self, DirKind};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (medvlp or Hugging Face BERT with tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Texts: one per line, or JSONL objects with `id` and `text`.
    #[arg(long)]
    pub texts: PathBuf,
    /// Output JSONL: `{"id": ..., "embedding": [...]}` per input.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens per text (default: the model's max_length; 256 for BERT directories).
    #[arg(long)]
    pub max_length: Option<usize>,
}

/// One text to embed with its id (the JSONL `id`, or the 1-based line number).
pub struct Item {
    pub id: serde_json::Value,
    pub text: String,
}

/// Read one text per line or JSONL (`id`, `text`). Bad or empty lines are reported with file and
/// line, skipped and counted; the count is returned.
pub fn read_texts(path: &Path) -> Result<(Vec<Item>, usize)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut items = vec![];
    let mut bad = 0;
    let mut jsonl: Option<bool> = None;
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let lineno = i + 1;
        let line = line.with_context(|| format!("{}:{lineno}: not valid UTF-8 text", path.display()))?;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if jsonl != Some(true) {
                tracing::warn!("{}:{lineno}: empty line skipped", path.display());
                bad += 1;
            }
            continue;
        }
        let is_json = *jsonl.get_or_insert_with(|| trimmed.starts_with('{') && serde_json::from_str::<serde_json::Value>(trimmed).is_ok());
        if !is_json {
            items.push(Item { id: serde_json::json!(lineno), text: line });
            continue;
        }
        let parsed: Result<Item> = (|| {
            let v: serde_json::Value = serde_json::from_str(trimmed).context("not valid JSON")?;
            let text = v.get("text").and_then(|t| t.as_str()).context("no string field \"text\"")?;
            if text.trim().is_empty() {
                bail!("empty \"text\"");
            }
            Ok(Item { id: v.get("id").cloned().unwrap_or(serde_json::json!(lineno)), text: text.to_string() })
        })();
        match parsed {
            Ok(it) => items.push(it),
            Err(e) => {
                tracing::warn!("{}:{lineno}: {e}; line skipped", path.display());
                bad += 1;
            }
        }
    }
    Ok((items, bad))
}

#[derive(serde::Serialize)]
struct Record<'a> {
    id: &'a serde_json::Value,
    embedding: Vec<f32>,
}

enum Encoder {
    MedVlp(medvlp_model::model_dir::LoadedModel),
    Bert(medvlp_model::model_dir::LoadedBert),
}

pub fn run(args: Args) -> Result<()> {
    let dev = Device::Cpu;
    let kind = model_dir::detect(&args.model)?;
    let (encoder, tok_path, default_len) = match kind {
        DirKind::MedVlp => {
            let m = model_dir::load(&args.model, DType::F32, &dev, false)?;
            let t = m.tokenizer.clone();
            let l = m.config.text_config.max_length;
            (Encoder::MedVlp(m), t, l)
        }
        DirKind::HfBert => {
            let m = model_dir::load_hf_bert(&args.model, DType::F32, &dev, false)?;
            let t = m.tokenizer.clone();
            let l = m.config.max_position_embeddings.min(256);
            (Encoder::Bert(m), t, l)
        }
    };
    let tok_path = tok_path.with_context(|| format!("{} has no tokenizer.json", args.model.display()))?;
    let tok = Tokenizer::from_file(&tok_path, args.max_length.unwrap_or(default_len))?;
    let (items, bad) = read_texts(&args.texts)?;
    if items.is_empty() {
        bail!("{}: no texts to embed ({bad} bad lines)", args.texts.display());
    }
    let tmp = args.output.with_extension("jsonl.partial");
    let mut out = BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
    let t0 = std::time::Instant::now();
    for chunk in items.chunks(args.batch_size.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|i| i.text.as_str()).collect();
        let b = tok.encode_batch(&texts)?;
        let ids = Tensor::from_vec(b.input_ids.clone(), (b.batch, b.len), &dev)?;
        let mask = Tensor::from_vec(b.attention_mask.iter().map(|&m| m as f32).collect::<Vec<_>>(), (b.batch, b.len), &dev)?;
        let emb = match &encoder {
            Encoder::MedVlp(m) => m.model.text_embeds(&ids, &mask)?,
            Encoder::Bert(m) => {
                let types = Tensor::from_vec(b.token_type_ids.clone(), (b.batch, b.len), &dev)?;
                masked_mean_pool(&m.model.forward(&ids, Some(&types), Some(&mask))?, &mask)?
            }
        };
        for (item, embedding) in chunk.iter().zip(emb.to_vec2::<f32>()?) {
            serde_json::to_writer(&mut out, &Record { id: &item.id, embedding })?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &args.output).with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("embedded {} texts in {:.2}s -> {} ({} lines skipped)", items.len(), t0.elapsed().as_secs_f64(), args.output.display(), bad);
    Ok(())
}
