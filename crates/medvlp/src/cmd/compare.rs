//! `medvlp compare [--recipes clip,xlip,...] --budget-minutes N --seeds 3`: every registered recipe
//! (and, with `--ablations`, each paper's ablations) pre-trained on the same synthetic data and
//! budget, evaluated with the same protocol, tabulated with 95% intervals over seeds (a t interval
//! of the seed means; with one seed, the bootstrap interval of that run).

use crate::pipeline::{
    find, shared_tokenizer, synth_config, synth_data, vocab_size, Setup, HEADLINES,
};
use anyhow::{bail, Context, Result};
use medvlp_eval::results::ResultRecord;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
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

/// Two-sided 95% Student t quantiles for 1..=9 degrees of freedom.
const T95: [f64; 9] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262];

pub fn run(args: Args) -> Result<()> {
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
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
    let mut t = String::from("| variant |");
    for h in &HEADLINES {
        t.push_str(&format!(" {} |", h.name));
    }
    t.push_str("\n|---|");
    t.push_str(&"---|".repeat(HEADLINES.len()));
    t.push('\n');
    for (label, seeds) in results {
        t.push_str(&format!("| {label} |"));
        for h in &HEADLINES {
            let recs: Vec<&ResultRecord> = seeds.iter().filter_map(|r| find(r, h)).collect();
            let cell = match recs.len() {
                0 => "-".to_string(),
                1 => match (recs[0].ci_low, recs[0].ci_high) {
                    (Some(l), Some(hi)) => format!("{:.3} ({:.3}-{:.3})", recs[0].value, l, hi),
                    _ => format!("{:.3}", recs[0].value),
                },
                n => {
                    let vals: Vec<f64> = recs.iter().map(|r| r.value).collect();
                    let mean = vals.iter().sum::<f64>() / n as f64;
                    let sd = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                        / (n - 1) as f64)
                        .sqrt();
                    let half = T95[(n - 2).min(8)] * sd / (n as f64).sqrt();
                    format!("{mean:.3} ({:.3}-{:.3})", mean - half, mean + half)
                }
            };
            t.push_str(&format!(" {cell} |"));
        }
        t.push('\n');
    }
    t
}
