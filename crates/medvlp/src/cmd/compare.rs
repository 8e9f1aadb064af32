//! `medvlp compare [--recipes clip,xlip,...] --budget-minutes N --seeds 3`: every registered recipe
//! (and, with `--ablations`, each paper's ablations) pre-trained on the same synthetic data and
//! budget, evaluated with the same protocol, tabulated with 95% intervals over seeds (a t interval
//! of the seed means; with one seed, the bootstrap interval of that run).
//! `medvlp compare --models A,B,C --data MANIFEST`: existing checkpoints of any family evaluated
//! under that same protocol, in the same table.

use crate::pipeline::{
    find, shared_tokenizer, synth_config, synth_data, vocab_size, Setup, HEADLINES,
};
use anyhow::{bail, Context, Result};
use medvlp_eval::results::{markdown_table, ResultRecord, Task};
use medvlp_eval::stats::t_interval_95;
use medvlp_eval::zeroshot::PromptMode;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Evaluate these models instead of training recipes: medvlp directories, imported checkpoints
    /// (OpenAI CLIP `.pt`, HF CLIP / dual encoder, open_clip, MGCA with its import file) or
    /// `hf:ORG/NAME[@REV]`, all under one protocol on `--data` (BenchX-style comparison).
    #[arg(long, value_delimiter = ',', requires = "data", conflicts_with_all = ["recipes", "ablations"])]
    pub models: Vec<String>,
    /// The manifest the `--models` are evaluated on (its test split; the train split for the probe).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Folder the manifest's image paths are relative to (default: the manifest's folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Recipes to compare (default: every registered recipe).
    #[arg(long, value_delimiter = ',')]
    pub recipes: Vec<String>,
    /// Add each recipe's paper ablations (as the recipe declares them): AttMIM vs random MIM,
    /// EntMLM vs random MLM, unpaired data off (XLIP); dual stream, aggregate-then-map (MCR);
    /// separate masking, no local alignment, no memory (MPMA).
    #[arg(long)]
    pub ablations: bool,
    #[arg(long, default_value_t = 10.0)]
    pub budget_minutes: f64,
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    #[arg(long, default_value = "small")]
    pub preset: String,
    #[arg(long, default_value = "compare")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 6000)]
    pub n: usize,
    #[arg(long, default_value_t = 2000)]
    pub image_only: usize,
    #[arg(long, default_value_t = 2000)]
    pub text_only: usize,
    #[arg(long, default_value_t = 1000)]
    pub pool: usize,
    #[arg(long, default_value_t = 200)]
    pub bootstrap: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `--models`: each model evaluated on the same data, prompts, pool and bootstrap.
fn run_models(args: &Args) -> Result<()> {
    let data = args.data.clone().context("--models needs --data MANIFEST")?;
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut results = vec![];
    for spec in &args.models {
        let path = crate::hub::resolve_model(std::path::Path::new(spec))?;
        let slug: String = spec
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
            .collect();
        let opts = medvlp_eval::EvalOptions {
            data: data.clone(),
            root: args.root.clone(),
            split: medvlp_data::dataset::Split::Test,
            prompts: "chexpert5".into(),
            modes: vec![PromptMode::PosNeg, PromptMode::Ensemble],
            nway_per_class: 200,
            fractions: vec![0.01, 0.1, 1.0],
            classes: vec![],
            pool: Some(args.pool),
            text_field: medvlp_eval::TextField::Report,
            bootstrap: args.bootstrap,
            seed: 0,
            batch_size: 64,
            epochs: 0,
            bf16: false,
            device: args.device.clone(),
            out: out.join("eval").join(&slug),
        };
        let tasks = [Task::ZeroShot, Task::LinearProbe, Task::Retrieval];
        let recs = medvlp_train::evaluate::evaluate_model(&path, &opts, &tasks)
            .with_context(|| format!("evaluating {spec}"))?;
        results.push((spec.clone(), vec![recs]));
    }
    let table = table(&results);
    println!("{table}");
    let text = format!(
        "# medvlp compare --models

{} model(s) on `{}` (test split; probes fit on its train split), CheXpert-5 prompts,          retrieval pool {}, {} bootstrap resamples.
Cells: value (95% bootstrap interval).

{table}
",
        args.models.len(),
        data.display(),
        args.pool,
        args.bootstrap
    );
    std::fs::write(out.join("compare.md"), text)?;
    eprintln!("table: {}", out.join("compare.md").display());
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    medvlp_model::runtime::device(&args.device)?;
    if !args.models.is_empty() {
        return run_models(&args);
    }
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let sc = synth_config(&args.preset, args.n, args.image_only, args.text_only, 0)?;
    let data = out.join("data");
    synth_data(&data, &sc)?;
    let tokenizer = shared_tokenizer(&data, &out, vocab_size(&args.preset))?;
    let setup = Setup {
        data,
        tokenizer,
        preset: args.preset.clone(),
        device: args.device.clone(),
        budget_minutes: args.budget_minutes,
        precision: medvlp_model::nn::Precision::Fp32,
    };
    let vars = medvlp_train::recipe::variants(&args.recipes, args.ablations)?;
    // results[variant][seed]
    let mut results: Vec<(String, Vec<Vec<ResultRecord>>)> = vec![];
    for medvlp_train::recipe::Variant { label, recipe, overrides: ov } in &vars {
        let mut per_seed = vec![];
        for seed in 0..args.seeds {
            let slug = format!("{}-seed{seed}", label.replace([',', ' '], "_").replace("__", "_"));
            let model = setup.train_budgeted(&out.join("runs").join(&slug), recipe, ov, seed)?;
            per_seed.push(setup.evaluate(
                &model,
                &out.join("eval").join(&slug),
                args.pool,
                args.bootstrap,
                seed,
            )?);
        }
        results.push((label.clone(), per_seed));
    }
    let table = table(&results);
    println!("{table}");
    let text = format!(
        "# medvlp compare\n\nPreset `{}`, {} minutes of pre-training per run on `{}`, {} seed(s), synthetic benchmark ({} paired, {} image-only, {} text-only at {} px).\n\
         Cells: mean over seeds (95% interval: t interval over seeds; with one seed, the bootstrap interval).\n\n{table}\n",
        args.preset, args.budget_minutes, args.device, args.seeds, sc.n, sc.image_only, sc.text_only, sc.size
    );
    std::fs::write(out.join("compare.md"), text)?;
    eprintln!("table: {}", out.join("compare.md").display());
    Ok(())
}

fn table(results: &[(String, Vec<Vec<ResultRecord>>)]) -> String {
    let header: Vec<&str> =
        std::iter::once("variant").chain(HEADLINES.iter().map(|h| h.name)).collect();
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(label, seeds)| {
            let cells = HEADLINES.iter().map(|h| {
                let recs: Vec<&ResultRecord> = seeds.iter().filter_map(|r| find(r, h)).collect();
                match recs.as_slice() {
                    [] => "-".to_string(),
                    [r] => match (r.ci_low, r.ci_high) {
                        (Some(l), Some(hi)) => format!("{:.3} ({:.3}-{:.3})", r.value, l, hi),
                        _ => format!("{:.3}", r.value),
                    },
                    _ => {
                        let vals: Vec<f64> = recs.iter().map(|r| r.value).collect();
                        let t = t_interval_95(&vals).expect("two or more seeds");
                        format!("{:.3} ({:.3}-{:.3})", t.mean, t.low, t.high)
                    }
                }
            });
            std::iter::once(label.clone()).chain(cells).collect()
        })
        .collect();
    markdown_table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r1(value: f64, ci: Option<(f64, f64)>) -> ResultRecord {
        let mut protocol = medvlp_eval::results::Protocol::default();
        protocol.extra.insert("prompt_mode".into(), serde_json::json!("pos_neg"));
        ResultRecord {
            task: Task::ZeroShot,
            metric: "auroc_macro".into(),
            class: None,
            value,
            ci_low: ci.map(|c| c.0),
            ci_high: ci.map(|c| c.1),
            split: "test".into(),
            label_fraction: None,
            direction: None,
            protocol,
        }
    }

    #[test]
    fn table_cells_bootstrap_with_one_seed_t_interval_with_more() {
        let results = vec![
            ("one".to_string(), vec![vec![r1(0.8, Some((0.7, 0.9)))]]),
            ("one, no ci".to_string(), vec![vec![r1(0.8, None)]]),
            (
                "three".to_string(),
                vec![vec![r1(0.70, None)], vec![r1(0.72, None)], vec![r1(0.75, None)]],
            ),
            (
                "twelve".to_string(),
                (0..12).map(|i| vec![r1(0.7 + 0.01 * i as f64, None)]).collect(),
            ),
            ("none".to_string(), vec![vec![]]),
        ];
        let t = table(&results);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7);
        assert!(lines[0].starts_with("| variant | zero-shot AUROC, CheXpert-5 macro (pos/neg prompts) | zero-shot AUROC, CheXpert-5 macro (ensemble prompts) |"), "{t}");
        assert_eq!(lines[1], format!("|---|{}", "---|".repeat(HEADLINES.len())));
        let dashes = " - |".repeat(HEADLINES.len() - 1);
        assert_eq!(lines[2], format!("| one | 0.800 (0.700-0.900) |{dashes}"));
        assert_eq!(lines[3], format!("| one, no ci | 0.800 |{dashes}"));
        // mean 0.72333, sd 0.025166, 4.303 * sd / sqrt(3) = 0.062518
        assert_eq!(lines[4], format!("| three | 0.723 (0.661-0.786) |{dashes}"));
        // 12 seeds use the 9-degrees-of-freedom quantile (2.262): mean 0.755, sd 0.036056
        assert_eq!(lines[5], format!("| twelve | 0.755 (0.731-0.779) |{dashes}"));
        assert_eq!(lines[6], format!("| none |{}", " - |".repeat(HEADLINES.len())));
        assert!(t.ends_with('\n'));
    }
}
