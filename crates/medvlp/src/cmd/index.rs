//! `medvlp index build|add|query|info`: an index of a model's image and report embeddings, one row
//! per study (its first image and its report), searched exactly or through HNSW graphs
//! ([`medvlp_index`] has the file format). A text query finds images, an image query finds reports.

use anyhow::{bail, Context, Result};
use medvlp_data::dataset::Study;
use medvlp_index::{AnnInfo, Dtype, Header, Index, Modality, Record};
use medvlp_model::encode::{encode_images, Evaluator};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: IndexCommand,
}

#[derive(clap::Subcommand)]
pub enum IndexCommand {
    /// Embed a manifest's studies (first image and report text) and write a new index.
    Build(BuildArgs),
    /// Embed more studies into an existing index (the model it was built with; ids already in
    /// it are skipped).
    Add(AddArgs),
    /// Search an index: an image finds reports, a text finds images. JSON lines on stdout.
    Query(QueryArgs),
    /// Print an index's header as JSON.
    Info(InfoArgs),
}

/// The studies to embed and the model that embeds them.
#[derive(clap::Args)]
pub struct Source {
    /// medvlp model directory (with tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL manifest (`medvlp prepare` or `medvlp synth`).
    #[arg(long)]
    pub data: PathBuf,
    /// Image root for relative paths (default: the manifest's folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub source: Source,
    /// The report text embedded for each study.
    #[arg(long, value_enum, default_value = "report")]
    pub field: FieldArg,
    /// Storage of the embeddings: bf16 halves the file (cosine within 1e-2 of f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Also build HNSW graphs for approximate search (their recall@10 is measured and printed).
    #[arg(long)]
    pub ann: bool,
    #[arg(long, default_value_t = AnnInfo::default().ef_construction, requires = "ann")]
    pub ef_construction: usize,
    /// Candidates per HNSW search; queries for more hits than this run exactly.
    #[arg(long, default_value_t = AnnInfo::default().ef_search, requires = "ann")]
    pub ef_search: usize,
    /// The index file to write.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub source: Source,
    /// The index to extend (rewritten atomically; its graphs are rebuilt).
    #[arg(long)]
    pub index: PathBuf,
}

#[derive(clap::Args)]
pub struct QueryArgs {
    #[arg(long)]
    pub index: PathBuf,
    /// The model the index was built with.
    #[arg(long)]
    pub model: PathBuf,
    /// An image file (PNG, JPEG, DICOM): finds reports.
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    pub image: Option<PathBuf>,
    /// A report text: finds images.
    #[arg(long)]
    pub text: Option<String>,
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Exact search even when the index has HNSW graphs.
    #[arg(long)]
    pub exact: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    #[arg(long)]
    pub index: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FieldArg {
    /// The study's `text` (findings + impression).
    Report,
    /// The impression section, else the report.
    Impression,
}

impl FieldArg {
    fn name(self) -> &'static str {
        match self {
            FieldArg::Report => "report",
            FieldArg::Impression => "impression",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        IndexCommand::Build(a) => build(a),
        IndexCommand::Add(a) => add(a),
        IndexCommand::Query(a) => query(a),
        IndexCommand::Info(a) => {
            let index = Index::open(&a.index)?;
            println!("{}", serde_json::to_string_pretty(index.header())?);
            Ok(())
        }
    }
}

/// Studies left out of an index, by reason.
#[derive(Default, serde::Serialize)]
struct Skipped {
    no_text: usize,
    no_image: usize,
    unreadable_image: usize,
    duplicate_id: usize,
    already_indexed: usize,
}

impl Skipped {
    fn total(&self) -> usize {
        self.no_text
            + self.no_image
            + self.unreadable_image
            + self.duplicate_id
            + self.already_indexed
    }
}

struct Embedded {
    images: Vec<Vec<f32>>,
    texts: Vec<Vec<f32>>,
    records: Vec<Record>,
    skipped: Skipped,
}

/// The report text of a study for `field`: "report" is `text` (else findings + impression),
/// "impression" the impression section (else the report).
fn field_text(s: &Study, field: &str) -> Option<String> {
    let report = || s.text.clone().or_else(|| s.findings_impression());
    let t = match field {
        "impression" => s.sections.get("impression").cloned().or_else(report),
        _ => report(),
    };
    t.filter(|t| !t.trim().is_empty())
}

fn load(source: &Source) -> Result<(Evaluator, String)> {
    let dev = medvlp_model::runtime::device(&source.device)?;
    let ev = Evaluator::load(
        &crate::hub::resolve_model(&source.model)?,
        source.batch_size.max(1),
        &dev,
    )?;
    let hash = ev.model_hash.clone().with_context(|| {
        format!("{}: cannot read the model's weights to hash them", source.model.display())
    })?;
    Ok((ev, hash))
}

/// Embeds the first image and the `field` text of every study of the manifest that has both and
/// whose id is not in `exclude`.
fn embed_manifest(
    ev: &Evaluator,
    source: &Source,
    field: &str,
    exclude: &HashSet<String>,
) -> Result<Embedded> {
    let studies = medvlp_data::dataset::read_manifest(&source.data)?;
    let root = source.root.clone().unwrap_or_else(|| {
        source.data.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).into()
    });
    // Records name their images by absolute path, usable from any working directory.
    let root = root.canonicalize().unwrap_or(root);
    let mut skipped = Skipped::default();
    let mut seen = HashSet::new();
    let mut kept: Vec<Study> = vec![];
    let mut texts: Vec<String> = vec![];
    for s in studies {
        if exclude.contains(&s.id) {
            skipped.already_indexed += 1;
        } else if !seen.insert(s.id.clone()) {
            tracing::warn!("{}: study {:?} appears again; skipped", source.data.display(), s.id);
            skipped.duplicate_id += 1;
        } else if s.images.is_empty() {
            skipped.no_image += 1;
        } else if let Some(t) = field_text(&s, field) {
            texts.push(t);
            kept.push(s);
        } else {
            skipped.no_text += 1;
        }
    }
    let mut out = Embedded { images: vec![], texts: vec![], records: vec![], skipped };
    if kept.is_empty() {
        return Ok(out);
    }
    let t0 = Instant::now();
    let res = ev.embed_studies(&kept, &root)?;
    out.skipped.unreadable_image = res.bad.len();
    let kept_texts: Vec<String> = res.indices.iter().map(|&i| texts[i].clone()).collect();
    out.texts = ev.embed_texts(&kept_texts)?;
    out.images = res.embeddings;
    out.records = res
        .indices
        .iter()
        .zip(kept_texts)
        .map(|(&i, text)| Record {
            id: kept[i].id.clone(),
            text,
            image: Some(root.join(&kept[i].images[0].path).display().to_string()),
        })
        .collect();
    tracing::info!("embedded {} studies in {:.1}s", out.records.len(), t0.elapsed().as_secs_f64());
    Ok(out)
}

fn report_skipped(data: &Path, s: &Skipped) {
    if s.total() > 0 {
        eprintln!(
            "{}: {} studies skipped: {} without a report text, {} without an image, {} with an \
             unreadable image, {} repeated ids, {} already in the index",
            data.display(),
            s.total(),
            s.no_text,
            s.no_image,
            s.unreadable_image,
            s.duplicate_id,
            s.already_indexed
        );
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn build(a: BuildArgs) -> Result<()> {
    super::refuse_overwriting_input(&a.source.data, &a.out, "--out")?;
    if a.out.is_dir() {
        bail!("--out {} is a folder; give the index file's path", a.out.display());
    }
    let t0 = Instant::now();
    let (ev, hash) = load(&a.source)?;
    let field = a.field.name();
    let emb = embed_manifest(&ev, &a.source, field, &HashSet::new())?;
    report_skipped(&a.source.data, &emb.skipped);
    if emb.records.is_empty() {
        bail!(
            "{}: no study has both a readable image and a {field} text; nothing to index",
            a.source.data.display()
        );
    }
    let embed_seconds = t0.elapsed().as_secs_f64();
    let dtype = match a.dtype {
        DtypeArg::F32 => Dtype::F32,
        DtypeArg::Bf16 => Dtype::Bf16,
    };
    let mut header = Header::new(&hash, emb.images[0].len(), dtype, field);
    if a.ann {
        header.ann = Some(AnnInfo::hnsw(a.ef_construction, a.ef_search, 0));
    }
    let h = medvlp_index::write(&a.out, &header, &emb.images, &emb.texts, &emb.records)?;
    let summary = serde_json::json!({
        "index": a.out.display().to_string(),
        "count": h.count,
        "dim": h.dim,
        "dtype": h.dtype,
        "field": h.field,
        "bytes": file_len(&a.out),
        "seconds": t0.elapsed().as_secs_f64(),
        "embed_seconds": embed_seconds,
        "skipped": emb.skipped,
        "ann": h.ann,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn add(a: AddArgs) -> Result<()> {
    super::refuse_overwriting_input(&a.source.data, &a.index, "--index")?;
    let t0 = Instant::now();
    let index = Index::open(&a.index)?;
    let (ev, hash) = load(&a.source)?;
    index.check_model(&hash)?;
    let present: HashSet<String> = index.records().iter().map(|r| r.id.clone()).collect();
    let field = index.header().field.clone();
    drop(index);
    let emb = embed_manifest(&ev, &a.source, &field, &present)?;
    report_skipped(&a.source.data, &emb.skipped);
    let header = if emb.records.is_empty() {
        eprintln!("{}: no new studies; {} unchanged", a.source.data.display(), a.index.display());
        Index::open(&a.index)?.header().clone()
    } else {
        medvlp_index::append(&a.index, &hash, &emb.images, &emb.texts, &emb.records)?
    };
    let summary = serde_json::json!({
        "index": a.index.display().to_string(),
        "added": emb.records.len(),
        "count": header.count,
        "bytes": file_len(&a.index),
        "seconds": t0.elapsed().as_secs_f64(),
        "skipped": emb.skipped,
        "ann": header.ann,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn query(a: QueryArgs) -> Result<()> {
    let index = Index::open(&a.index)?;
    let dev = medvlp_model::runtime::device(&a.device)?;
    let ev = Evaluator::load(&crate::hub::resolve_model(&a.model)?, 1, &dev)?;
    let hash = ev.model_hash.clone().with_context(|| {
        format!("{}: cannot read the model's weights to hash them", a.model.display())
    })?;
    index.check_model(&hash)?;
    let (embedding, modality) = match (&a.image, &a.text) {
        (Some(image), _) => {
            if !image.is_file() {
                bail!("{}: no such image file", image.display());
            }
            let item = medvlp_data::loader::Item {
                id: image.display().to_string(),
                images: vec![image.clone()],
                text: None,
                labels: Default::default(),
            };
            let pp = &ev.preprocess;
            let res = encode_images(ev.encoder(), pp, vec![item], 1, 1.0, &ev.device)?;
            let Some(e) = res.embeddings.into_iter().next() else {
                let why = res.bad.first().map(|(_, w)| w.as_str()).unwrap_or("unreadable");
                bail!("{}: {why}", image.display());
            };
            (e, Modality::Text)
        }
        (None, Some(text)) => {
            if text.trim().is_empty() {
                bail!("--text is empty");
            }
            let e = ev.embed_texts(std::slice::from_ref(text))?;
            (e.into_iter().next().context("the model returned no embedding")?, Modality::Image)
        }
        (None, None) => bail!("give --image or --text"),
    };
    let t0 = Instant::now();
    let hits = if a.exact {
        index.search_exact(modality, &embedding, a.k)?
    } else {
        index.search(modality, &embedding, a.k)?
    };
    let ann = index.header().ann.as_ref().is_some_and(|x| !a.exact && a.k <= x.ef_search);
    let how = if ann { "hnsw" } else { "exact" };
    tracing::info!(
        "{} of {} rows ({how}) in {:.2} ms",
        hits.len(),
        index.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    for (rank, h) in hits.iter().enumerate() {
        let r = index.record(h.row);
        let line = QueryLine {
            rank: rank + 1,
            id: &r.id,
            score: h.score,
            text: &r.text,
            image: r.image.as_deref(),
        };
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}

/// One line of `index query`'s output (a struct, so that the keys keep this order).
#[derive(serde::Serialize)]
struct QueryLine<'a> {
    rank: usize,
    id: &'a str,
    score: f32,
    text: &'a str,
    image: Option<&'a str>,
}
