//! `medvlp prepare --dataset NAME --root DIR [--out MANIFEST.jsonl] [--views ...] [--seed N]`:
//! build the JSONL manifest, summary, split and label-fraction lists of a dataset.

use std::path::PathBuf;

use anyhow::Result;
use medvlp_data::dataset::{
    generic::GenericColumns, prepare, PrepareOptions, UncertaintyPolicy, ViewFilter, DATASETS,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// mimic, chexpert, nih, rsna, siim, covidx, vindr, padchest, iu-xray or generic.
    #[arg(long)]
    pub dataset: String,
    /// The dataset's root folder (image paths in the manifest are relative to it).
    #[arg(long)]
    pub root: PathBuf,
    /// Output manifest. Default: ROOT/manifest.jsonl.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// frontal | pa | ap | all
    #[arg(long, default_value = "all")]
    pub views: ViewFilter,
    /// Seed of the patient-level split (datasets without an official one) and the label fractions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Uncertain (-1) labels: keep | u-ignore | u-zeros | u-ones.
    #[arg(long, default_value = "keep")]
    pub uncertainty: UncertaintyPolicy,
    #[arg(long, default_value_t = 0.1)]
    pub val_frac: f64,
    #[arg(long, default_value_t = 0.1)]
    pub test_frac: f64,
    /// MIMIC: NegBio labels instead of CheXpert-labeller ones.
    #[arg(long)]
    pub negbio: bool,
    /// generic: the CSV or JSONL file (relative to ROOT or absolute).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// generic: column names.
    #[arg(long)]
    pub id_col: Option<String>,
    #[arg(long, default_value = "path")]
    pub path_col: String,
    #[arg(long)]
    pub text_col: Option<String>,
    /// generic: label columns, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub label_cols: Vec<String>,
    #[arg(long)]
    pub patient_col: Option<String>,
    #[arg(long)]
    pub split_col: Option<String>,
    #[arg(long)]
    pub view_col: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    if !DATASETS.contains(&args.dataset.to_ascii_lowercase().as_str()) {
        tracing::info!(
            "dataset {:?} is an alias or unknown; known: {}",
            args.dataset,
            DATASETS.join(", ")
        );
    }
    let out = args.out.clone().unwrap_or_else(|| args.root.join("manifest.jsonl"));
    let mut o = PrepareOptions::new(&args.dataset, &args.root, &out);
    o.views = args.views;
    o.seed = args.seed;
    o.uncertainty = args.uncertainty;
    o.val_frac = args.val_frac;
    o.test_frac = args.test_frac;
    o.negbio = args.negbio;
    o.generic = GenericColumns {
        file: args.file,
        id: args.id_col,
        path: args.path_col,
        text: args.text_col,
        labels: args.label_cols,
        patient: args.patient_col,
        split: args.split_col,
        view: args.view_col,
    };
    let t = std::time::Instant::now();
    let s = prepare(o)?;
    println!(
        "{}: {} studies, {} images, {} patients in {:.1}s ({} split)",
        s.manifest,
        s.studies,
        s.images,
        s.patients,
        t.elapsed().as_secs_f64(),
        if s.official_split { "official" } else { "seeded patient-level" }
    );
    println!("splits: {:?}", s.splits);
    for (reason, n) in &s.dropped {
        println!(
            "dropped {n}: {reason} (e.g. {})",
            s.dropped_examples
                .get(reason)
                .and_then(|v| v.first())
                .map(String::as_str)
                .unwrap_or("-")
        );
    }
    println!("summary: {}", medvlp_data::dataset::sibling(&out, "summary.json").display());
    Ok(())
}
