//! `medvlp label --input FILE --output OUT.jsonl [--convention chexpert|strict]`: study labels and
//! entity spans for every report (JSONL with `id` and `text`, or one report per line), under
//! CheXpert's labelling rules or naming-only ones (docs/labeler-conventions.md).

use anyhow::{bail, Result};
use medvlp_data::text::{label_file, Convention, Extractor, InputFormat, Lexicon};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Reports: JSONL with `id` and `text`, or plain text with one report per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL: `{"id", "labels", "entities"}` per report, in input order.
    #[arg(long)]
    pub output: PathBuf,
    /// Input format: auto (JSONL when the first line is a JSON object), jsonl or text.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Leave the entity spans out of the output (labels only).
    #[arg(long)]
    pub no_entities: bool,
    /// A lexicon TOML replacing the shipped one (crates/medvlp-data/data/lexicon.toml format).
    #[arg(long)]
    pub lexicon: Option<PathBuf>,
    /// Labelling convention: chexpert (CheXpert's rules: vascular congestion and heart failure are
    /// edema, infection is pneumonia, a borderline heart is uncertain cardiomegaly) or strict
    /// (a finding only where the report names it; a borderline heart is cardiomegaly).
    /// docs/labeler-conventions.md lists every difference.
    #[arg(long, default_value = "chexpert")]
    pub convention: String,
}

pub fn run(args: Args) -> Result<()> {
    let format = match args.format.as_str() {
        "auto" => InputFormat::Auto,
        "jsonl" => InputFormat::Jsonl,
        "text" | "txt" => InputFormat::Text,
        other => bail!("--format must be auto, jsonl or text, got {other:?}"),
    };
    let convention: Convention = match args.convention.parse() {
        Ok(c) => c,
        Err(_) => bail!("--convention must be chexpert or strict, got {:?}", args.convention),
    };
    let custom;
    let extractor = match &args.lexicon {
        Some(p) => {
            custom = Extractor::with_convention(&Lexicon::load(p)?, convention)?;
            &custom
        }
        None => Extractor::builtin_for(convention),
    };
    super::refuse_overwriting_input(&args.input, &args.output, "--output")?;
    let t0 = std::time::Instant::now();
    let stats = label_file(extractor, &args.input, &args.output, format, !args.no_entities)?;
    for e in stats.errors.iter().take(20) {
        tracing::warn!("{e}");
    }
    if stats.errors.len() > 20 {
        tracing::warn!("... and {} more bad lines", stats.errors.len() - 20);
    }
    eprintln!(
        "labelled {} reports in {:.2}s -> {} ({} lines skipped; lexicon {}, {} convention)",
        stats.labelled,
        t0.elapsed().as_secs_f64(),
        args.output.display(),
        stats.skipped,
        extractor.version(),
        extractor.convention()
    );
    Ok(())
}
