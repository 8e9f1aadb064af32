//! `medvlp quickstart [--out DIR] [--budget-minutes N] [--compare clip]`: the main job on the
//! embedded default data. Generates the synthetic benchmark, pre-trains `xlip` on the `small`
//! preset within the budget (bf16 mixed precision where the CPU multiplies bf16 natively),
//! evaluates it and a randomly initialised model (zero-shot, linear probe at 1/10/100%,
//! retrieval), with `--compare clip` also `clip` on the same budget, prints one comparison table
//! and writes `report.md`, the plots and the XLIP model directory (`DIR/model`).

use crate::pipeline::{
    comparison_table, copy_dir, shared_tokenizer, synth_config, synth_data, vocab_size, Setup,
};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Output folder (data, runs, evaluations, report.md, model/).
    #[arg(long, default_value = "quickstart")]
    pub out: PathBuf,
    /// Pre-training wall-clock budget per recipe, in minutes (the default keeps the whole job
    /// within 30 minutes on a 2-core CPU).
    #[arg(long, default_value_t = 24.0)]
    pub budget_minutes: f64,
    /// Baselines trained on the same data and budget besides XLIP: `clip` (doubles the time).
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// `auto` (bf16 where the CPU multiplies bf16 faster than fp32: AMX, or AVX-512 BF16 on AMD;
    /// else fp32), `fp32` or `bf16`.
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Model preset (tiny for a smoke run, small for the CPU demo, base for a GPU).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Synthetic paired / image-only / text-only studies.
    #[arg(long, default_value_t = 6000)]
    pub n: usize,
    #[arg(long, default_value_t = 2000)]
    pub image_only: usize,
    #[arg(long, default_value_t = 2000)]
    pub text_only: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Retrieval candidate pool.
    #[arg(long, default_value_t = 1000)]
    pub pool: usize,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 200)]
    pub bootstrap: usize,
    /// `cpu` or `cuda[:N]` (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: Args) -> Result<()> {
    let t_all = Instant::now();
    // A device that cannot be used fails before any work.
    medvlp_model::runtime::device(&args.device)?;
    for c in &args.compare {
        if c != "clip" {
            anyhow::bail!("--compare {c}: the quickstart compares with `clip` only (`medvlp compare` runs any recipe)");
        }
    }
    let precision = match args.precision.as_str() {
        "auto" => crate::pipeline::auto_precision(&args.device),
        p => p.parse().map_err(|e: String| anyhow::anyhow!("--precision: {e}"))?,
    };
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let sc = synth_config(&args.preset, args.n, args.image_only, args.text_only, args.seed)?;
    eprintln!("[1/4] data");
    let data = out.join("data");
    synth_data(&data, &sc)?;
    let tokenizer = shared_tokenizer(&data, &out, vocab_size(&args.preset))?;
    let setup = Setup {
        data,
        tokenizer,
        preset: args.preset.clone(),
        device: args.device.clone(),
        budget_minutes: args.budget_minutes,
        precision,
    };

    let clip = args.compare.iter().any(|c| c == "clip");
    eprintln!(
        "[2/4] pre-training xlip{}, {} minutes each, {precision}",
        if clip { " and clip" } else { "" },
        args.budget_minutes
    );
    let xlip = setup.train_budgeted(&out.join("runs/xlip"), "xlip", &[], args.seed)?;
    let mut models = vec![("random init", setup.random_init(&out.join("runs/random"), args.seed)?)];
    if clip {
        models
            .push(("clip", setup.train_budgeted(&out.join("runs/clip"), "clip", &[], args.seed)?));
    }
    models.push(("xlip", xlip.clone()));
    let mut results = vec![];
    for (i, (name, dir)) in models.iter().enumerate() {
        eprintln!("[3/4] evaluating {name} ({}/{})", i + 1, models.len());
        let recs = setup.evaluate(
            dir,
            &out.join("eval").join(name.replace(' ', "-")),
            args.pool,
            args.bootstrap,
            args.seed,
        )?;
        results.push((name.to_string(), recs));
    }

    let table = comparison_table(&results);
    println!("\n{table}");
    let model_out = out.join("model");
    let _ = std::fs::remove_dir_all(&model_out);
    copy_dir(&xlip, &model_out)?;
    let mut report = format!(
        "# medvlp quickstart\n\nSynthetic benchmark: {} paired, {} image-only, {} text-only studies at {} px (seed {}, test split {:.0}%). \
         Preset `{}`, {} minutes of pre-training per recipe on `{}` ({precision}). Total time {:.1} minutes on {}.\n\n\
         Cells: value (95% bootstrap interval, {} resamples).\n\n{table}\n",
        sc.n, sc.image_only, sc.text_only, sc.size, args.seed, sc.test_frac * 100.0, args.preset, args.budget_minutes, args.device,
        t_all.elapsed().as_secs_f64() / 60.0, crate::pipeline::cpu_name(), args.bootstrap
    );
    report.push_str(
        "Zero-shot: the `chexpert5` prompt file, positive/negative prompts (CheXzero style, each side an ensemble over phrasing and severity) and the MedCLIP ensembles; N-way: test studies with exactly one of \
         the five findings. Linear probe: logistic regression on frozen image embeddings, regularisation chosen on the validation split. \
         Retrieval: test split in candidate pools as recorded in `eval/*/results.jsonl`. Per-class figures: `eval/<model>/summary.md`.\n\n## Plots\n\n",
    );
    for (name, _) in &results {
        let d = name.replace(' ', "-");
        report.push_str(&format!("### {name}\n\n![zero-shot ROC](eval/{d}/zero_shot_roc_pos_neg.svg)\n![retrieval](eval/{d}/retrieval_recall.svg)\n\n"));
    }
    std::fs::write(out.join("report.md"), report)?;
    eprintln!(
        "[4/4] report: {}  model: {}  ({:.1} minutes on {})",
        out.join("report.md").display(),
        model_out.display(),
        t_all.elapsed().as_secs_f64() / 60.0,
        crate::pipeline::cpu_name()
    );
    Ok(())
}
