//! Model directories: `config.json` + `model.safetensors` (+ `tokenizer.json`), written atomically.
//! Also reads plain Hugging Face BERT directories.

use crate::bert::BertModel;
use crate::config::{ModelConfig, TextConfig, FORMAT_VERSION};
use crate::medvlp::MedVlp;
use crate::params::{LoadReport, ParamStore};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKind {
    MedVlp,
    HfBert,
}

/// sha256 of the canonical JSON of the config (hex); stored in the weights' metadata.
pub fn config_hash(config: &ModelConfig) -> String {
    let bytes = serde_json::to_vec(config).expect("config serialises");
    medvlp_data::hash::sha256_hex(&bytes)
}

/// The text config of a Hugging Face BERT directory (`config.json`), keeping `current`'s pooling
/// and its maximum length where the checkpoint allows it.
pub fn bert_text_config(dir: &Path, current: &TextConfig) -> Result<TextConfig> {
    let p = dir.join(CONFIG_FILE);
    let text: TextConfig = serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
    )
    .with_context(|| format!("{}: not a BERT config", p.display()))?;
    Ok(TextConfig {
        pooling: current.pooling,
        max_length: current.max_length.min(text.max_position_embeddings),
        ..text
    })
}

/// A tokenizer must not produce ids the text encoder's embedding table lacks.
pub fn check_vocabulary(
    tokenizer: &medvlp_data::tokenizer::Tokenizer,
    text: &TextConfig,
) -> Result<()> {
    if tokenizer.vocab_size() > text.vocab_size {
        bail!(
            "the tokenizer has {} tokens, the text encoder only {}",
            tokenizer.vocab_size(),
            text.vocab_size
        );
    }
    Ok(())
}

/// Queues a Hugging Face BERT directory's weights as the text encoder's (`text_model.*`).
pub fn preload_bert(store: &ParamStore, dir: &Path) -> Result<()> {
    store.preload_safetensors(&dir.join(WEIGHTS_FILE), |n| {
        hf_bert_name(n).map(|n| format!("text_model.{n}"))
    })?;
    Ok(())
}

/// Write `bytes` to `path` atomically: temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Tell a medvlp model directory from a Hugging Face BERT directory.
pub fn detect(dir: &Path) -> Result<DirKind> {
    let cfg = dir.join(CONFIG_FILE);
    if !cfg.exists() {
        bail!("{} has no {CONFIG_FILE}", dir.display());
    }
    let v = read_json(&cfg)?;
    match v.get("model_type").and_then(|m| m.as_str()) {
        Some("medvlp") => Ok(DirKind::MedVlp),
        Some("bert") | Some("roberta") | None if v.get("hidden_size").is_some() => {
            Ok(DirKind::HfBert)
        }
        Some(other) => bail!(
            "{}: model_type '{other}' is neither a medvlp model nor a BERT model",
            cfg.display()
        ),
        None => bail!("{}: no model_type; not a medvlp or BERT config", cfg.display()),
    }
}

/// Save a model directory. Weights carry metadata: format version, method, config hash.
pub fn save(
    dir: &Path,
    config: &ModelConfig,
    store: &ParamStore,
    tokenizer_json: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("medvlp_format_version".to_string(), FORMAT_VERSION.to_string());
    let method = config.method.get("name").and_then(|n| n.as_str()).unwrap_or("none").to_string();
    meta.insert("method".to_string(), method);
    meta.insert("config_hash".to_string(), config_hash(config));
    let vars = store.vars();
    let tensors = vars
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().contiguous()?)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut bytes =
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
            .context("serialising weights")?;
    canonical_header(&mut bytes)?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    write_atomic(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(config)?.as_bytes())?;
    if let Some(tok) = tokenizer_json {
        let dst = dir.join(TOKENIZER_FILE);
        if tok != dst {
            let bytes = std::fs::read(tok).with_context(|| format!("reading {}", tok.display()))?;
            write_atomic(&dst, &bytes)?;
        }
    }
    Ok(())
}

/// Rewrite a serialised safetensors header with sorted keys: the metadata arrives as a `HashMap`,
/// whose random iteration order would make identical models differ in their bytes. The header
/// keeps its length (same JSON, reordered), so the data offsets are untouched.
fn canonical_header(bytes: &mut [u8]) -> Result<()> {
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header = &bytes[8..8 + n];
    let text = std::str::from_utf8(header)?;
    let v: serde_json::Value = serde_json::from_str(text.trim_end())?; // serde_json's map is sorted
    let sorted = serde_json::to_string(&v)?;
    if sorted.len() <= n {
        let mut h = sorted.into_bytes();
        h.resize(n, b' ');
        bytes[8..8 + n].copy_from_slice(&h);
    }
    Ok(())
}

pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(CONFIG_FILE);
    let cfg: ModelConfig = serde_json::from_value(read_json(&path)?)
        .with_context(|| format!("{}: not a medvlp config", path.display()))?;
    cfg.validate().with_context(|| format!("{}", path.display()))?;
    Ok(cfg)
}

/// Safetensors header metadata of a weights file.
pub fn weights_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let (_, meta) = read_header(path)?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Tensor names, dtypes and shapes from a safetensors header, without reading the data.
pub fn read_header(path: &Path) -> Result<(usize, safetensors::tensor::Metadata)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut f, &mut len)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let n = u64::from_le_bytes(len) as usize;
    if n > 100_000_000 {
        bail!("{}: safetensors header of {n} bytes is implausible", path.display());
    }
    let mut buf = vec![0u8; n];
    std::io::Read::read_exact(&mut f, &mut buf)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(&buf)
        .with_context(|| format!("{}: bad safetensors header", path.display()))?;
    // The header promises the tensors' bytes: a shorter (or longer) file is damaged.
    let data = meta.tensors().values().map(|t| t.data_offsets.1).max().unwrap_or(0);
    let len = f.metadata().with_context(|| format!("reading {}", path.display()))?.len() as usize;
    if len != 8 + n + data {
        bail!(
            "{}: {len} bytes, but its header describes {} (a truncated or damaged file)",
            path.display(),
            8 + n + data
        );
    }
    Ok((n, meta))
}

/// A loaded medvlp model directory.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub store: ParamStore,
    pub model: MedVlp,
    pub tokenizer: Option<PathBuf>,
    pub report: LoadReport,
}

/// Load a medvlp model directory. Every parameter of the model must be in the weights.
/// `trainable`: false for inference (no autograd bookkeeping).
pub fn load(dir: &Path, dtype: DType, device: &Device, trainable: bool) -> Result<LoadedModel> {
    let config = load_config(dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    let meta = weights_metadata(&weights)?;
    if let Some(h) = meta.get("config_hash") {
        let now = config_hash(&config);
        if *h != now {
            tracing::warn!(
                "{}: config.json differs from the one the weights were saved with (hash {} vs {})",
                dir.display(),
                &now[..12],
                &h[..h.len().min(12)]
            );
        }
    }
    let store = ParamStore::new(0, dtype, device);
    let store = if trainable { store } else { store.frozen() };
    read_header(&weights)?;
    let tensors = candle_core::safetensors::load(&weights, device)
        .map_err(|e| anyhow::anyhow!("reading weights {}: {e}", weights.display()))?;
    // NaN or infinite weights would give NaN embeddings downstream: refuse them here.
    for (name, t) in &tensors {
        let total = t.to_dtype(DType::F32)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        if !total.is_finite() {
            bail!("{}: tensor {name} holds NaN or infinite values", weights.display());
        }
    }
    store.preload(tensors, |n| Some(n.to_string()))?;
    let model = MedVlp::new(&config, &store)
        .with_context(|| format!("building the model of {}", dir.display()))?;
    let report = store.load_report();
    if !report.initialised.is_empty() {
        bail!(
            "{}: {} parameters missing from {WEIGHTS_FILE}, e.g. {}",
            dir.display(),
            report.initialised.len(),
            report.initialised[0]
        );
    }
    let tok = dir.join(TOKENIZER_FILE);
    Ok(LoadedModel { config, store, model, tokenizer: tok.exists().then_some(tok), report })
}

/// Strip Hugging Face wrapper prefixes so that `bert.encoder...` and `encoder...` both load.
pub fn hf_bert_name(name: &str) -> Option<String> {
    let n = name.strip_prefix("bert.").unwrap_or(name);
    // `embeddings.position_ids` is a buffer (0..max_len) some checkpoints carry, not a parameter.
    if n.ends_with("position_ids") {
        return None;
    }
    if n.starts_with("embeddings.") || n.starts_with("encoder.") || n.starts_with("pooler.") {
        Some(n.to_string())
    } else {
        None
    }
}

/// A plain Hugging Face BERT directory (`config.json` + `model.safetensors`), with or without the
/// `bert.` prefix. Tensors become trainable variables in the returned store.
pub struct LoadedBert {
    pub config: TextConfig,
    pub store: ParamStore,
    pub model: BertModel,
    pub tokenizer: Option<PathBuf>,
    pub report: LoadReport,
}

pub fn load_hf_bert(
    dir: &Path,
    dtype: DType,
    device: &Device,
    trainable: bool,
) -> Result<LoadedBert> {
    let cfg_path = dir.join(CONFIG_FILE);
    let config: TextConfig = serde_json::from_value(read_json(&cfg_path)?)
        .with_context(|| format!("{}: not a BERT config", cfg_path.display()))?;
    config.validate().with_context(|| format!("{}", cfg_path.display()))?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.exists() {
        bail!("{} has no {WEIGHTS_FILE} (only safetensors weights are read)", dir.display());
    }
    let (_, header) = read_header(&weights)?;
    let has_pooler = header.tensors().keys().any(|k| k.ends_with("pooler.dense.weight"));
    let store = ParamStore::new(0, dtype, device);
    let store = if trainable { store } else { store.frozen() };
    store.preload_safetensors(&weights, hf_bert_name)?;
    let model = BertModel::new(&config, has_pooler, store.var_builder())?;
    let report = store.load_report();
    if !report.initialised.is_empty() {
        bail!(
            "{}: {} BERT parameters missing, e.g. {}",
            weights.display(),
            report.initialised.len(),
            report.initialised[0]
        );
    }
    let tok = dir.join(TOKENIZER_FILE);
    Ok(LoadedBert { config, store, model, tokenizer: tok.exists().then_some(tok), report })
}
