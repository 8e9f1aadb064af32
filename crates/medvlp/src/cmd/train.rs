//! `medvlp train --config FILE [--resume | --overwrite] [--out DIR] [key=value ...]`: pre-train a
//! recipe. SIGINT/SIGTERM write a checkpoint, then exit with 130/143 (the shell's codes for those
//! signals, which schedulers such as Slurm read as "interrupted"); `--resume` continues exactly.

use anyhow::{Context, Result};
use medvlp_train::run::{move_aside, previous_run, run_training};
use medvlp_train::run_config::RunConfig;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Run configuration (TOML), e.g. configs/xlip-tiny.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run folder (default: runs/<method>-<preset>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the newest valid checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
    /// Start afresh in a run folder that holds a previous run, moving that run aside to
    /// `DIR.replaced-UNIXTIME` (nothing is deleted).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// cpu, cuda or cuda:N (sets the config's `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// fp32, or bf16 mixed precision (sets `train.precision`).
    #[arg(long)]
    pub precision: Option<medvlp_model::nn::Precision>,
    /// Overrides of the config's dotted keys: `train.steps=100 data.manifest=m.jsonl seed=1`.
    pub overrides: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let mut overrides = args.overrides.clone();
    if let Some(d) = &args.device {
        overrides.push(format!("device={d}"));
    }
    if let Some(p) = args.precision {
        overrides.push(format!("train.precision={p}"));
    }
    let (rc, resolved) = RunConfig::load(args.config.as_deref(), &overrides)?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("runs/{}-{}", rc.method, rc.model.preset)));
    if args.overwrite && previous_run(&out).is_some() {
        let to = move_aside(&out)?;
        eprintln!("moved the previous run in {} to {}", out.display(), to.display());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())
        .context("installing signal handlers")?;
    let s = run_training(&rc, &resolved, &out, args.resume, stop)?;
    if s.stopped_early {
        eprintln!("stopped at step {} (checkpoint written); continue with --resume", s.state.step);
    } else {
        eprintln!(
            "done: {} steps, last loss {:.4}; model in {}",
            s.state.step,
            s.last_loss,
            out.join("final").display()
        );
    }
    if !s.bad_samples.is_empty() {
        let first: Vec<String> =
            s.bad_samples.iter().take(5).map(|(p, r)| format!("{p} ({r})")).collect();
        eprintln!(
            "{} bad samples skipped (listed in metrics.jsonl): {}",
            s.bad_samples.len(),
            first.join("; ")
        );
    }
    if s.state.nonfinite_skips > 0 {
        eprintln!("{} steps skipped for non-finite loss or gradients", s.state.nonfinite_skips);
    }
    if s.stopped_early {
        // Interrupted, not finished: 128 + the signal number, as a shell reports it.
        std::process::exit(if term.load(std::sync::atomic::Ordering::SeqCst) { 143 } else { 130 });
    }
    Ok(())
}
