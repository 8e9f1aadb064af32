//! The steps shared by `medvlp quickstart` and `medvlp compare`: the synthetic benchmark, one
//! tokenizer for every model, budgeted pre-training (a first plan from a short timing run, then
//! `train.budget_minutes` re-plans from the run's own step times so that the schedule fits the
//! budget), the random-init baseline, evaluation and the comparison
//! table.

use anyhow::{bail, Context, Result};
use medvlp_data::tokenizer::{train_on_manifests, WordPieceOptions};
use medvlp_eval::results::{ResultRecord, Task};
use medvlp_synth::{Difficulty, SynthConfig};
use medvlp_train::run::run_training;
use medvlp_train::run_config::RunConfig;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Generates the synthetic benchmark into `dir` unless the same parameters made it already.
pub fn synth_data(dir: &Path, sc: &SynthConfig) -> Result<()> {
    let stamp = serde_json::to_string(sc)?;
    let stamp_path = dir.join("pipeline-synth.json");
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        eprintln!("reusing the synthetic benchmark in {}", dir.display());
        return Ok(());
    }
    let t = Instant::now();
    eprintln!(
        "generating the synthetic benchmark ({} paired, {} image-only, {} text-only, {} px)",
        sc.n, sc.image_only, sc.text_only, sc.size
    );
    let _ = std::fs::remove_dir_all(dir);
    medvlp_synth::generate(sc, dir)?;
    std::fs::write(&stamp_path, &stamp)?;
    eprintln!("  done in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// The synthetic benchmark a preset trains on: images at the preset's size (at least 64 px), a
/// test split of 20% so that the default 6,000 studies allow a retrieval pool of 1,000.
pub fn synth_config(
    preset: &str,
    n: usize,
    image_only: usize,
    text_only: usize,
    seed: u64,
) -> Result<SynthConfig> {
    let image_size = medvlp_model::ModelConfig::preset(preset)?.vision_config.image_size as u32;
    Ok(SynthConfig {
        n,
        image_only,
        text_only,
        seed,
        size: image_size.clamp(64, 512),
        difficulty: Difficulty::Standard,
        test_frac: 0.2,
        ..Default::default()
    })
}

/// The vocabulary size of the shared tokenizer for a preset.
pub fn vocab_size(preset: &str) -> usize {
    if preset == "tiny" {
        1000
    } else {
        4000
    }
}

/// One WordPiece tokenizer for every model, trained on the training reports (paired + text-only).
pub fn shared_tokenizer(data: &Path, out: &Path, vocab_size: usize) -> Result<PathBuf> {
    let tok = out.join("tokenizer.json");
    if tok.exists() {
        return Ok(tok);
    }
    let manifests: Vec<PathBuf> = [data.join("manifest.jsonl"), data.join("text_only.jsonl")]
        .into_iter()
        .filter(|m| m.exists())
        .collect();
    train_on_manifests(
        &manifests.iter().map(|m| m.as_path()).collect::<Vec<_>>(),
        &WordPieceOptions { vocab_size, ..Default::default() },
        &tok,
    )?;
    Ok(tok)
}

/// What every budgeted run shares.
pub struct Setup {
    pub data: PathBuf,
    pub tokenizer: PathBuf,
    pub preset: String,
    pub device: String,
    pub budget_minutes: f64,
    /// `train.precision` of every run.
    pub precision: medvlp_model::nn::Precision,
}

/// bf16 mixed precision where the CPU multiplies bf16 faster than fp32 (AMX, or AVX-512 BF16 on
/// AMD), fp32 elsewhere (GPUs included: their quickstart figures were measured in fp32).
pub fn auto_precision(device: &str) -> medvlp_model::nn::Precision {
    use medvlp_model::nn::{fused::bf16_gemm, Precision};
    if device == "cpu" && bf16_gemm::path().native() {
        Precision::Bf16
    } else {
        Precision::Fp32
    }
}

impl Setup {
    fn overrides(&self, seed: u64, steps: u64) -> Vec<String> {
        vec![
            format!("data.manifest={}", self.data.join("manifest.jsonl").display()),
            format!("data.image_only={}", self.data.join("image_only.jsonl").display()),
            format!("data.text_only={}", self.data.join("text_only.jsonl").display()),
            format!("model.tokenizer={}", self.tokenizer.display()),
            format!("seed={seed}"),
            format!("device={}", self.device),
            format!("train.steps={steps}"),
            format!("train.precision={}", self.precision),
            format!("train.warmup_steps={}", (steps / 10).max(1)),
            "train.validate_every=0".into(),
            format!("train.checkpoint_every={}", (steps / 4).max(1)),
            "train.log_every=1".into(),
        ]
    }

    fn config(
        &self,
        dir: &Path,
        recipe: &str,
        overrides: &[String],
    ) -> Result<(RunConfig, String)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("base-config.toml");
        std::fs::write(&path, medvlp_train::recipe::shipped_config(recipe, &self.preset)?)
            .with_context(|| format!("writing {}", path.display()))?;
        RunConfig::load(Some(&path), overrides)
    }

    /// Pre-trains `recipe` (with `extra` overrides, e.g. an ablation) for the budget into
    /// `run_dir`; returns the model directory. A finished run with the same key is reused.
    pub fn train_budgeted(
        &self,
        run_dir: &Path,
        recipe: &str,
        extra: &[String],
        seed: u64,
    ) -> Result<PathBuf> {
        let final_dir = run_dir.join("final");
        let key = format!(
            "{recipe} {:?} {} {} {} {seed} {}",
            extra,
            self.preset,
            self.budget_minutes,
            self.precision,
            std::fs::read_to_string(self.data.join("pipeline-synth.json")).unwrap_or_default()
        );
        let key_path = run_dir.join("budget-key.txt");
        if final_dir.join("model.safetensors").exists()
            && std::fs::read_to_string(&key_path).ok().as_deref() == Some(key.as_str())
        {
            eprintln!("{recipe}: reusing {}", final_dir.display());
            return Ok(final_dir);
        }
        let _ = std::fs::remove_dir_all(run_dir);
        // Calibration: 12 steps, timed from the metrics without the first two (allocator and
        // loader warm-up). Five steps under-estimated the XLIP step by 10-15%, so the wall-clock
        // cap stopped the run before its learning rate had decayed.
        let calib = run_dir.join("calibration");
        let mut ov = self.overrides(seed, CALIBRATION_STEPS);
        ov.extend(extra.iter().cloned());
        ov.push("train.checkpoint_every=0".into());
        let (rc, resolved) = self.config(run_dir, recipe, &ov)?;
        run_training(&rc, &resolved, &calib, false, Arc::new(AtomicBool::new(false)))?;
        let per_step = step_seconds(&calib.join("metrics.jsonl"), 2)?;
        let _ = std::fs::remove_dir_all(&calib);
        // The first plan, which sets warm-up and checkpoint spacing; the trainer re-plans the
        // total from its own timing (this short run was off by 10-15% either way on a shared VM).
        let steps = ((self.budget_minutes * 60.0 / per_step).floor() as u64).max(2);
        eprintln!(
            "pre-training {recipe} {}: {per_step:.2}s per step -> first plan {steps} steps in {} minutes",
            extra.join(" "),
            self.budget_minutes
        );
        let mut ov = self.overrides(seed, steps);
        ov.extend(extra.iter().cloned());
        ov.push(format!("train.budget_minutes={}", self.budget_minutes));
        ov.push(format!("train.max_minutes={}", self.budget_minutes * 1.05));
        let (rc, resolved) = self.config(run_dir, recipe, &ov)?;
        let t = Instant::now();
        let s = run_training(&rc, &resolved, run_dir, false, Arc::new(AtomicBool::new(false)))?;
        eprintln!(
            "  {} steps in {:.1} minutes, last loss {:.4}",
            s.state.step,
            t.elapsed().as_secs_f64() / 60.0,
            s.last_loss
        );
        std::fs::write(&key_path, &key)?;
        Ok(final_dir)
    }

    /// The randomly initialised baseline (the clip recipe's model after 0 steps).
    pub fn random_init(&self, run_dir: &Path, seed: u64) -> Result<PathBuf> {
        let final_dir = run_dir.join("final");
        if !final_dir.join("model.safetensors").exists() {
            let (rc, resolved) = self.config(run_dir, "clip", &self.overrides(seed, 0))?;
            run_training(&rc, &resolved, run_dir, false, Arc::new(AtomicBool::new(false)))?;
        }
        Ok(final_dir)
    }

    /// The standard evaluation (zero-shot CheXpert-5, linear probe 1/10/100%, retrieval) into `out`.
    pub fn evaluate(
        &self,
        model: &Path,
        out: &Path,
        pool: usize,
        bootstrap: usize,
        seed: u64,
    ) -> Result<Vec<ResultRecord>> {
        use medvlp_eval::zeroshot::PromptMode;
        let opts = medvlp_eval::EvalOptions {
            data: self.data.join("manifest.jsonl"),
            root: None,
            split: medvlp_data::dataset::Split::Test,
            prompts: "chexpert5".into(),
            modes: vec![PromptMode::PosNeg, PromptMode::Ensemble],
            nway_per_class: 200,
            fractions: vec![0.01, 0.1, 1.0],
            classes: vec![],
            pool: Some(pool),
            text_field: medvlp_eval::TextField::Report,
            bootstrap,
            seed,
            batch_size: 64,
            epochs: 0,
            bf16: false,
            device: self.device.clone(),
            out: out.to_path_buf(),
        };
        let tasks = [Task::ZeroShot, Task::LinearProbe, Task::Retrieval];
        medvlp_train::evaluate::evaluate_model(model, &opts, &tasks)
    }
}

/// Steps of the timing run before a budgeted pre-training run.
const CALIBRATION_STEPS: u64 = 12;

/// Seconds per training step from a run's metrics, the first `skip` logged steps excluded.
pub fn step_seconds(metrics: &Path, skip: usize) -> Result<f64> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let el: Vec<(u64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .filter_map(|v| Some((v["step"].as_u64()?, v["elapsed_s"].as_f64()?)))
        .skip(skip.saturating_sub(1))
        .collect();
    match (el.first(), el.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => Ok((b.1 - a.1) / (b.0 - a.0) as f64),
        _ => bail!("{}: too few steps logged to time a step", metrics.display()),
    }
}

/// A headline metric of the comparison tables.
pub struct Headline {
    pub name: &'static str,
    pub task: Task,
    pub metric: &'static str,
    pub mode: Option<&'static str>,
    pub fraction: Option<f64>,
    pub direction: Option<&'static str>,
}

pub const HEADLINES: [Headline; 11] = [
    Headline {
        name: "zero-shot AUROC, CheXpert-5 macro (pos/neg prompts)",
        task: Task::ZeroShot,
        metric: "auroc_macro",
        mode: Some("pos_neg"),
        fraction: None,
        direction: None,
    },
    Headline {
        name: "zero-shot AUROC, CheXpert-5 macro (ensemble prompts)",
        task: Task::ZeroShot,
        metric: "auroc_macro",
        mode: Some("ensemble"),
        fraction: None,
        direction: None,
    },
    Headline {
        name: "zero-shot 5-way accuracy",
        task: Task::ZeroShot,
        metric: "accuracy",
        mode: Some("pos_neg"),
        fraction: None,
        direction: None,
    },
    Headline {
        name: "linear probe AUROC, 1% labels",
        task: Task::LinearProbe,
        metric: "auroc_macro",
        mode: None,
        fraction: Some(0.01),
        direction: None,
    },
    Headline {
        name: "linear probe AUROC, 10% labels",
        task: Task::LinearProbe,
        metric: "auroc_macro",
        mode: None,
        fraction: Some(0.1),
        direction: None,
    },
    Headline {
        name: "linear probe AUROC, 100% labels",
        task: Task::LinearProbe,
        metric: "auroc_macro",
        mode: None,
        fraction: Some(1.0),
        direction: None,
    },
    Headline {
        name: "image->report R@1",
        task: Task::Retrieval,
        metric: "recall@1",
        mode: None,
        fraction: None,
        direction: Some("image_to_text"),
    },
    Headline {
        name: "image->report R@5",
        task: Task::Retrieval,
        metric: "recall@5",
        mode: None,
        fraction: None,
        direction: Some("image_to_text"),
    },
    Headline {
        name: "image->report R@10",
        task: Task::Retrieval,
        metric: "recall@10",
        mode: None,
        fraction: None,
        direction: Some("image_to_text"),
    },
    Headline {
        name: "report->image R@10",
        task: Task::Retrieval,
        metric: "recall@10",
        mode: None,
        fraction: None,
        direction: Some("text_to_image"),
    },
    Headline {
        name: "image->report median rank",
        task: Task::Retrieval,
        metric: "median_rank",
        mode: None,
        fraction: None,
        direction: Some("image_to_text"),
    },
];

/// The record of a headline metric (macro / overall, not per class).
pub fn find<'a>(recs: &'a [ResultRecord], h: &Headline) -> Option<&'a ResultRecord> {
    recs.iter().find(|r| {
        r.task == h.task
            && r.metric == h.metric
            && r.class.is_none()
            && h.mode.is_none_or(|m| {
                r.protocol.extra.get("prompt_mode").and_then(|v| v.as_str()) == Some(m)
            })
            && h.fraction.is_none_or(|f| r.label_fraction.is_some_and(|x| (x - f).abs() < 1e-9))
            && h.direction.is_none_or(|d| r.direction.map(|x| x.as_str()) == Some(d))
    })
}

fn fmt(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Markdown table: one row per headline metric, one column per model; each cell is the value and,
/// when available, its 95% bootstrap interval.
pub fn comparison_table(results: &[(String, Vec<ResultRecord>)]) -> String {
    let header: Vec<&str> =
        std::iter::once("metric").chain(results.iter().map(|(n, _)| n.as_str())).collect();
    let rows: Vec<Vec<String>> = HEADLINES
        .iter()
        .map(|h| {
            let cells = results.iter().map(|(_, recs)| match find(recs, h) {
                Some(r) => match (r.ci_low, r.ci_high) {
                    (Some(l), Some(hi)) => format!("{} ({}-{})", fmt(r.value), fmt(l), fmt(hi)),
                    _ => fmt(r.value),
                },
                None => "-".to_string(),
            });
            std::iter::once(h.name.to_string()).chain(cells).collect()
        })
        .collect();
    medvlp_eval::results::markdown_table(&header, &rows)
}

pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// The CPU this runs on, as `/proc/cpuinfo` names it, with its thread count ("AMD EPYC, 2 threads").
pub fn cpu_name() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{name}, {threads} threads")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_time_leaves_out_the_warm_up_steps() {
        let dir = std::env::temp_dir().join(format!("medvlp-steps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = dir.join("metrics.jsonl");
        // Step 1 takes 5 s, step 2 takes 2 s, then 1 s per step; a validation line in between.
        let mut lines = vec![];
        let mut t = 0.0;
        for step in 1..=6u64 {
            t += match step {
                1 => 5.0,
                2 => 2.0,
                _ => 1.0,
            };
            lines.push(
                serde_json::json!({"kind": "train", "step": step, "elapsed_s": t}).to_string(),
            );
            if step == 3 {
                lines.push(serde_json::json!({"kind": "validation", "step": step}).to_string());
            }
        }
        std::fs::write(&m, lines.join("\n")).unwrap();
        assert!((step_seconds(&m, 1).unwrap() - 6.0 / 5.0).abs() < 1e-12);
        assert!((step_seconds(&m, 2).unwrap() - 1.0).abs() < 1e-12);
        std::fs::write(&m, lines[..2].join("\n")).unwrap();
        assert!(step_seconds(&m, 2).is_err(), "one timed step is too few");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn rec(task: Task, metric: &str, value: f64, ci: Option<(f64, f64)>) -> ResultRecord {
        ResultRecord {
            task,
            metric: metric.into(),
            class: None,
            value,
            ci_low: ci.map(|c| c.0),
            ci_high: ci.map(|c| c.1),
            split: "test".into(),
            label_fraction: None,
            direction: None,
            protocol: Default::default(),
        }
    }

    #[test]
    fn comparison_table_layout() {
        let mut zs = rec(Task::ZeroShot, "auroc_macro", 0.81234, Some((0.75, 0.8649)));
        zs.protocol.extra.insert("prompt_mode".into(), serde_json::json!("pos_neg"));
        let mut mr = rec(Task::Retrieval, "median_rank", 12.5, None);
        mr.direction = Some(medvlp_eval::retrieval::Direction::ImageToText);
        let mut lp = rec(Task::LinearProbe, "auroc_macro", 0.6, Some((0.5, 10.25)));
        lp.label_fraction = Some(0.1);
        let t = comparison_table(&[("a".into(), vec![zs, mr, lp]), ("b".into(), vec![])]);
        let want = "| metric | a | b |\n|---|---|---|\n\
            | zero-shot AUROC, CheXpert-5 macro (pos/neg prompts) | 0.812 (0.750-0.865) | - |\n\
            | zero-shot AUROC, CheXpert-5 macro (ensemble prompts) | - | - |\n\
            | zero-shot 5-way accuracy | - | - |\n\
            | linear probe AUROC, 1% labels | - | - |\n\
            | linear probe AUROC, 10% labels | 0.600 (0.500-10.2) | - |\n\
            | linear probe AUROC, 100% labels | - | - |\n\
            | image->report R@1 | - | - |\n\
            | image->report R@5 | - | - |\n\
            | image->report R@10 | - | - |\n\
            | report->image R@10 | - | - |\n\
            | image->report median rank | 12.5 | - |\n";
        assert_eq!(t, want);
        assert_eq!(comparison_table(&[]).lines().next(), Some("| metric |"));
    }
}
