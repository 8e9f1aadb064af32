//! `medvlp embed`: text embeddings from a medvlp model directory (normalised joint-space embedding)
//! or a Hugging Face BERT directory (attention-masked mean of the last hidden state, L2-normalised),
//! and image embeddings from a medvlp model directory or any imported checkpoint family
//! (`medvlp_model::interop`) (`--images`: a list of image files or a
//! manifest; PNG, JPEG and DICOM, preprocessed as the model's `preprocess` block says).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use medvlp_data::tokenizer::Tokenizer;
use medvlp_model::bert::masked_mean_pool;
use medvlp_model::encode::JointEncoder;
use medvlp_model::interop::{self, Family, ForeignModel};
use medvlp_model::model_dir::{self, DirKind};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (medvlp or Hugging Face BERT with tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Texts: one per line, or JSONL objects with `id` and `text`.
    #[arg(long, required_unless_present = "images", conflicts_with = "images")]
    pub texts: Option<PathBuf>,
    /// Images: a folder (its PNG/JPEG/DICOM files), a list with one path per line (relative to the
    /// list's folder), or a JSONL manifest (first image of each study; ids are study ids). Needs a
    /// medvlp model directory.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Output JSONL: `{"id": ..., "embedding": [...]}` per input.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens per text (default: the model's max_length; 256 for BERT directories).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// bf16 products (bf16 operands, f32 accumulation; AVX-512 BF16 where the CPU has it):
    /// embeddings within cosine 0.9999 of fp32, see `medvlp bench encode --bf16`.
    #[arg(long)]
    pub bf16: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
    for (i, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let lineno = i + 1;
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        // A line that is not UTF-8 is a bad line, reported and skipped as `label` does.
        let line = match String::from_utf8(line) {
            Ok(l) => l.strip_suffix('\r').map(str::to_string).unwrap_or(l),
            Err(e) => {
                tracing::warn!(
                    "{}:{lineno}: not valid UTF-8 ({}); line skipped",
                    path.display(),
                    e.utf8_error()
                );
                bad += 1;
                continue;
            }
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if jsonl != Some(true) {
                tracing::warn!("{}:{lineno}: empty line skipped", path.display());
                bad += 1;
            }
            continue;
        }
        let is_json = *jsonl.get_or_insert_with(|| {
            trimmed.starts_with('{') && serde_json::from_str::<serde_json::Value>(trimmed).is_ok()
        });
        if !is_json {
            items.push(Item { id: serde_json::json!(lineno), text: line });
            continue;
        }
        let parsed: Result<Item> = (|| {
            let v: serde_json::Value = serde_json::from_str(trimmed).context("not valid JSON")?;
            let text =
                v.get("text").and_then(|t| t.as_str()).context("no string field \"text\"")?;
            if text.trim().is_empty() {
                bail!("empty \"text\"");
            }
            Ok(Item {
                id: v.get("id").cloned().unwrap_or(serde_json::json!(lineno)),
                text: text.to_string(),
            })
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
    // Boxed: the two loaded models differ in size by kilobytes.
    MedVlp(Box<medvlp_model::model_dir::LoadedModel>),
    Bert(Box<medvlp_model::model_dir::LoadedBert>),
    /// An imported checkpoint (CLIP, open_clip, MGCA, ...): its normalised joint embedding.
    Foreign(Box<ForeignModel>),
}

/// Image items from a path list or a manifest, with the ids written to the output.
fn read_images(path: &Path) -> Result<Vec<(serde_json::Value, medvlp_data::loader::Item)>> {
    if path.is_dir() {
        // A folder: its image files (PNG, JPEG, DICOM), sorted by name; ids are the file names.
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension().is_some_and(|x| {
                        matches!(
                            x.to_string_lossy().to_lowercase().as_str(),
                            "png" | "jpg" | "jpeg" | "dcm" | "dicom"
                        )
                    })
            })
            .collect();
        files.sort();
        return Ok(files
            .into_iter()
            .map(|p| {
                let name =
                    p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                (
                    serde_json::json!(name.clone()),
                    medvlp_data::loader::Item {
                        id: name,
                        images: vec![p],
                        text: None,
                        labels: Default::default(),
                    },
                )
            })
            .collect());
    }
    let root = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim_start().starts_with('{') {
        let studies = medvlp_data::dataset::read_manifest(path)?;
        let items = medvlp_data::loader::Loader::items_from_studies(&studies, &root, None);
        return Ok(items.into_iter().map(|it| (serde_json::json!(it.id.clone()), it)).collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let p = root.join(l.trim());
            let item = medvlp_data::loader::Item {
                id: format!("{}", i + 1),
                images: vec![p],
                text: None,
                labels: Default::default(),
            };
            (serde_json::json!(l.trim()), item)
        })
        .collect())
}

fn write_records(
    output: &Path,
    records: impl Iterator<Item = (serde_json::Value, Vec<f32>)>,
) -> Result<usize> {
    let tmp = output.with_extension("jsonl.partial");
    let mut out = BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut n = 0;
    for (id, embedding) in records {
        serde_json::to_writer(&mut out, &Record { id: &id, embedding })?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))?;
    Ok(n)
}

/// The family of an imported checkpoint (None for medvlp and BERT directories).
fn foreign_family(path: &Path) -> Option<Family> {
    interop::detect(path).ok().filter(|f| *f != Family::MedVlp)
}

fn load_foreign(args: &Args, dev: &candle_core::Device) -> Result<Box<ForeignModel>> {
    Ok(Box::new(interop::load(&args.model, dev)?))
}

fn run_images(args: &Args, list: &Path) -> Result<()> {
    let dev = medvlp_model::runtime::device(&args.device)?;
    if foreign_family(&args.model).is_some() {
        let m = load_foreign(args, &dev)?;
        return embed_images(args, list, m.as_ref(), &m.preprocess, &dev);
    }
    if model_dir::detect(&args.model)? != DirKind::MedVlp {
        bail!(
            "{}: image embeddings need a medvlp model directory (this is a text-only BERT)",
            args.model.display()
        );
    }
    let m = model_dir::load(&args.model, DType::F32, &dev, false)?;
    embed_images(args, list, &m.model, &m.config.preprocess, &dev)
}

fn embed_images(
    args: &Args,
    list: &Path,
    model: &dyn JointEncoder,
    pp: &medvlp_data::image::preprocess::PreprocessConfig,
    dev: &candle_core::Device,
) -> Result<()> {
    let entries = read_images(list)?;
    if entries.is_empty() {
        bail!("{}: no images listed", list.display());
    }
    let t0 = std::time::Instant::now();
    let items = entries.iter().map(|(_, it)| it.clone()).collect();
    let res = medvlp_model::encode::encode_images(model, pp, items, args.batch_size, 1.0, dev)?;
    // The loader has warned about each bad image once.
    if res.indices.is_empty() {
        let first: Vec<String> =
            res.bad.iter().take(5).map(|(p, why)| format!("{p} ({why})")).collect();
        bail!(
            "{}: none of the {} images could be read: {}",
            list.display(),
            entries.len(),
            first.join("; ")
        );
    }
    let n = write_records(
        &args.output,
        res.indices.iter().zip(res.embeddings).map(|(&i, e)| (entries[i].0.clone(), e)),
    )?;
    eprintln!(
        "embedded {n} images in {:.2}s -> {} ({} skipped)",
        t0.elapsed().as_secs_f64(),
        args.output.display(),
        res.bad.len()
    );
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    use medvlp_model::nn::{with_precision, Precision};
    let p = if args.bf16 { Precision::Bf16 } else { Precision::Fp32 };
    with_precision(p, || run_with(args))
}

fn run_with(args: Args) -> Result<()> {
    for input in [&args.texts, &args.images].into_iter().flatten() {
        super::refuse_overwriting_input(input, &args.output, "--output")?;
    }
    if let Some(list) = args.images.clone() {
        return run_images(&args, &list);
    }
    let texts_path = args.texts.clone().context("--texts or --images is required")?;
    let dev = medvlp_model::runtime::device(&args.device)?;
    let (encoder, tok) = if foreign_family(&args.model).is_some() {
        let m = load_foreign(&args, &dev)?;
        let len = args.max_length.unwrap_or(m.context_length).min(m.context_length);
        let tok = Tokenizer::for_inference(m.tokenizer.clone(), len)?;
        (Encoder::Foreign(m), tok)
    } else {
        medvlp_or_bert(&args, &dev)?
    };
    embed_texts(&args, &texts_path, &encoder, &tok, &dev)
}

fn medvlp_or_bert(args: &Args, dev: &candle_core::Device) -> Result<(Encoder, Tokenizer)> {
    let dev = dev.clone();
    let kind = model_dir::detect(&args.model)?;
    let (encoder, tok_path, default_len) = match kind {
        DirKind::MedVlp => {
            let m = model_dir::load(&args.model, DType::F32, &dev, false)?;
            let t = m.tokenizer.clone();
            let l = m.config.text_config.max_length;
            (Encoder::MedVlp(Box::new(m)), t, l)
        }
        DirKind::HfBert => {
            let m = model_dir::load_hf_bert(&args.model, DType::F32, &dev, false)?;
            let t = m.tokenizer.clone();
            let l = m.config.max_position_embeddings.min(256);
            (Encoder::Bert(Box::new(m)), t, l)
        }
    };
    let tok_path =
        tok_path.with_context(|| format!("{} has no tokenizer.json", args.model.display()))?;
    let tok = Tokenizer::from_file(&tok_path, args.max_length.unwrap_or(default_len))?;
    Ok((encoder, tok))
}

fn embed_texts(
    args: &Args,
    texts_path: &Path,
    encoder: &Encoder,
    tok: &Tokenizer,
    dev: &candle_core::Device,
) -> Result<()> {
    let dev = dev.clone();
    let (items, bad) = read_texts(texts_path)?;
    if items.is_empty() {
        bail!("{}: no texts to embed ({bad} bad lines)", texts_path.display());
    }
    let tmp = args.output.with_extension("jsonl.partial");
    let mut out = BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let t0 = std::time::Instant::now();
    for chunk in items.chunks(args.batch_size.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|i| i.text.as_str()).collect();
        let b = tok.encode_batch(&texts)?;
        let ids = Tensor::from_vec(b.input_ids.clone(), (b.batch, b.len), &dev)?;
        let mask = Tensor::from_vec(
            b.attention_mask.iter().map(|&m| m as f32).collect::<Vec<_>>(),
            (b.batch, b.len),
            &dev,
        )?;
        let emb = match encoder {
            Encoder::MedVlp(m) => medvlp_model::encode::text_embeds(&m.model, &ids, &mask)?,
            Encoder::Foreign(m) => medvlp_model::encode::text_embeds(m.as_ref(), &ids, &mask)?,
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
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "embedded {} texts in {:.2}s -> {} ({} lines skipped)",
        items.len(),
        t0.elapsed().as_secs_f64(),
        args.output.display(),
        bad
    );
    Ok(())
}
