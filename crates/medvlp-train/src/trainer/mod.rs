//! The training loop: gradient accumulation, fused AdamW with a warmup + cosine schedule,
//! non-finite guard, JSON-lines metrics, periodic atomic checkpoints (keep last K and best), exact
//! resume, and a clean stop (checkpoint, then exit) when the stop flag is raised (SIGINT/SIGTERM).
//!
//! Data parallel (a [`Communicator`] of several ranks): every rank starts from rank 0's
//! parameters, gradients are summed over ranks in buckets and averaged, every rank takes the same
//! optimiser step (clipping on the global norm), a stop, a time budget or a non-finite loss on any
//! rank stops or skips on all of them at the same step, and rank 0 alone writes checkpoints,
//! metrics and the final model.

pub mod checkpoint;

use crate::dist::Communicator;
use crate::optim::{AdamW, AdamWConfig, GradAccumulator, Schedule};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use medvlp_data::loader::BadSampleBudget;
use medvlp_model::nn::{with_precision, Precision};
use medvlp_model::{ModelConfig, ParamStore};
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub warmup_steps: u64,
    pub min_lr_ratio: f64,
    pub checkpoint_every: u64,
    pub keep_last: usize,
    pub log_every: u64,
    pub validate_every: u64,
    /// Stop (keeping the last good checkpoint) after this many consecutive non-finite steps.
    pub max_nonfinite_steps: u64,
    /// Wall-clock budget of this invocation in minutes (0 = none): past it the run ends as if
    /// `steps` were reached (`final/` written). The schedule still spans `steps` (or the plan of
    /// `budget_minutes`), so this is a hard stop, not a plan.
    pub max_minutes: f64,
    /// Fit the schedule to this many minutes of training (0 = off). `steps` is then only the first
    /// plan: at the end of warm-up, and at one half and three quarters of the current plan, the
    /// trainer sets the total from its own measured time per step so that the cosine decay ends
    /// at the budget. A timing run before the run cannot do this on a shared machine, whose speed
    /// drifts by 10-20% over tens of seconds. The plan is kept in the checkpoint, so a run resumed
    /// after a re-plan follows the same schedule exactly; the training time before the checkpoint
    /// counts against the budget.
    pub budget_minutes: f64,
    /// `fp32`, or `bf16` mixed precision (fp32 weights and optimiser state, bf16 products; see
    /// `medvlp_model::nn::precision`).
    pub precision: Precision,
    /// Data parallel, as open_clip's `--local-loss`: each rank's contrastive loss takes its own
    /// rows as queries against the global batch (less compute and memory per rank, the same
    /// gradients); false: every rank computes the whole global loss.
    pub local_loss: bool,
    pub optimizer: AdamWConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            grad_accum: 1,
            warmup_steps: 50,
            min_lr_ratio: 0.01,
            checkpoint_every: 200,
            keep_last: 2,
            log_every: 10,
            validate_every: 0,
            max_nonfinite_steps: 5,
            max_minutes: 0.0,
            budget_minutes: 0.0,
            precision: Precision::Fp32,
            local_loss: false,
            optimizer: AdamWConfig::default(),
        }
    }
}

/// Everything besides parameters and moments that a resumed run needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Loop steps done (each consumed `grad_accum` micro-batches, applied or skipped).
    pub step: u64,
    /// Updates actually applied (AdamW bias correction).
    pub optimizer_steps: u64,
    pub nonfinite_skips: u64,
    pub consecutive_nonfinite: u64,
    pub best_metric: Option<f64>,
    pub seed: u64,
    /// The schedule's total steps as last re-planned by `budget_minutes` (None: `steps`).
    #[serde(default)]
    pub planned_steps: Option<u64>,
    /// Seconds of training up to `step`, over every invocation (the budget's clock).
    #[serde(default)]
    pub train_seconds: f64,
}

/// One micro-batch's loss and its named parts (for logging).
pub struct LossOutput {
    pub loss: Tensor,
    /// Named parts for the log: detached scalar tensors, read after the backward pass is queued.
    pub parts: Vec<(String, Tensor)>,
    pub samples: usize,
}

/// What the trainer trains: a recipe bound to its data. Everything it does must be a pure function
/// of `(step, micro)` and the seed, so that a resumed run sees the same batches and masks.
pub trait Objective {
    fn loss(&mut self, step: u64, micro: usize) -> Result<LossOutput>;

    /// Validation metrics (the first is the one `best/` tracks; lower is better unless its name
    /// ends with `auroc` or starts with `recall`).
    /// Distinct bad samples met so far (path or id, reason), first met first.
    fn bad_samples(&self) -> Vec<(String, String)> {
        vec![]
    }

    fn validate(&mut self, _step: u64) -> Result<Vec<(String, f64)>> {
        Ok(vec![])
    }
}

pub struct Trainer<'a> {
    pub config: TrainConfig,
    pub model_config: ModelConfig,
    pub store: &'a ParamStore,
    pub out_dir: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub stop: Arc<AtomicBool>,
    pub seed: u64,
    /// The data-parallel group (`dist::SingleProcess` for one process).
    pub comm: Arc<dyn Communicator>,
}

/// Elements per all-reduce bucket (16 MB of f32).
const BUCKET: usize = 1 << 22;

/// Applies the collective `f` to `ts` flattened and concatenated in buckets of about [`BUCKET`]
/// elements (one call per bucket instead of one per tensor) and splits the results back.
fn bucketed(ts: &[Tensor], f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(ts.len());
    let mut start = 0;
    while start < ts.len() {
        let mut end = start;
        let mut n = 0;
        while end < ts.len() && (end == start || n + ts[end].elem_count() <= BUCKET) {
            n += ts[end].elem_count();
            end += 1;
        }
        let flat: Vec<Tensor> =
            ts[start..end].iter().map(|t| t.flatten_all()).collect::<candle_core::Result<_>>()?;
        let reduced = f(&Tensor::cat(&flat, 0)?)?;
        let mut off = 0;
        for t in &ts[start..end] {
            out.push(reduced.narrow(0, off, t.elem_count())?.reshape(t.shape())?);
            off += t.elem_count();
        }
        start = end;
    }
    Ok(out)
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub state: TrainState,
    pub stopped_early: bool,
    pub last_loss: f64,
    /// Distinct bad samples the run skipped (path or id, reason).
    pub bad_samples: Vec<(String, String)>,
}

fn higher_is_better(name: &str) -> bool {
    name.ends_with("auroc") || name.starts_with("recall") || name.ends_with("accuracy")
}

impl<'a> Trainer<'a> {
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.out_dir.join("checkpoints")
    }

    /// Rank 0 writes the run folder; the other ranks only read it (resume).
    fn writer(&self) -> bool {
        self.comm.rank() == 0
    }

    fn distributed(&self) -> bool {
        self.comm.world_size() > 1
    }

    /// Sums of `values` over ranks (the values themselves for one process).
    fn sum_over_ranks(&self, values: &[f64]) -> Result<Vec<f64>> {
        if !self.distributed() {
            return Ok(values.to_vec());
        }
        let t = Tensor::new(values, &candle_core::Device::Cpu)?;
        Ok(self.comm.all_reduce_sum(&t)?.to_vec1::<f64>()?)
    }

    /// Every rank takes rank 0's parameters (and, on resume, they all read the same checkpoint).
    fn broadcast_parameters(&self) -> Result<()> {
        if !self.distributed() {
            return Ok(());
        }
        let vars: Vec<candle_core::Var> = self.store.vars().into_iter().map(|(_, v)| v).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let got = bucketed(&ts, |t| self.comm.broadcast(t, 0))?;
        for (v, t) in vars.iter().zip(got) {
            v.set(&t)?;
        }
        Ok(())
    }

    /// Gradients summed over ranks (missing ones count as zeros so that every rank reduces the
    /// same buckets).
    fn reduce_gradients(
        &self,
        opt: &AdamW,
        sums: Vec<Option<Tensor>>,
    ) -> Result<Vec<Option<Tensor>>> {
        if !self.distributed() {
            return Ok(sums);
        }
        let ts: Vec<Tensor> = sums
            .into_iter()
            .zip(&opt.params)
            .map(|(g, p)| match g {
                Some(g) => Ok(g),
                None => p.var.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(bucketed(&ts, |t| self.comm.all_reduce_sum(t))?.into_iter().map(Some).collect())
    }

    fn log(&self, line: serde_json::Value) -> Result<()> {
        if !self.writer() {
            return Ok(());
        }
        let p = self.out_dir.join("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        writeln!(f, "{line}")?;
        Ok(())
    }

    fn save_checkpoint(&self, opt: &AdamW, state: &TrainState) -> Result<PathBuf> {
        let dir = self.checkpoints_dir().join(checkpoint::checkpoint_name(state.step));
        if !self.writer() {
            return Ok(dir);
        }
        checkpoint::write_dir(
            &dir,
            &self.model_config,
            self.store,
            self.tokenizer.as_deref(),
            Some(opt),
            Some(state),
        )?;
        // Older checkpoints go only once the new one reads back as written.
        checkpoint::verify(&dir)
            .with_context(|| format!("checkpoint {} did not read back intact", dir.display()))?;
        checkpoint::prune(&self.checkpoints_dir(), self.config.keep_last)?;
        Ok(dir)
    }

    /// A bad-sample budget error: write a checkpoint first, so that the run continues from here
    /// with `--resume` once the files are fixed or dropped (or the budget raised).
    fn stop_on_bad_data(&self, e: anyhow::Error, opt: &AdamW, state: &TrainState) -> anyhow::Error {
        if e.downcast_ref::<BadSampleBudget>().is_none() {
            return e;
        }
        match self.save_checkpoint(opt, state) {
            Ok(dir) => e.context(format!(
                "stopped at step {} with a checkpoint in {}: fix or drop those files (or raise \
                 data.max_bad_fraction), then --resume",
                state.step,
                dir.display()
            )),
            Err(c) => e.context(format!("the checkpoint at step {} failed too: {c:#}", state.step)),
        }
    }

    /// Restores the newest checkpoint that matches its manifest, warning about each newer one that
    /// does not. `None` when there is no checkpoint at all; an error when every one is damaged.
    fn restore_newest_valid(&self, opt: &mut AdamW) -> Result<Option<(PathBuf, TrainState)>> {
        let all = checkpoint::list(&self.checkpoints_dir());
        if all.is_empty() {
            return Ok(None);
        }
        let mut damaged = vec![];
        for (_, dir) in all.iter().rev() {
            match checkpoint::verify(dir).and_then(|_| checkpoint::restore(dir, self.store, opt)) {
                Ok(state) => return Ok(Some((dir.clone(), state))),
                Err(e) => {
                    tracing::warn!(
                        "checkpoint {} is damaged ({e:#}); trying an older one",
                        dir.display()
                    );
                    damaged.push(dir.display().to_string());
                }
            }
        }
        bail!("--resume: every checkpoint is damaged: {}", damaged.join(", "))
    }

    /// On resume from `step`: metrics.jsonl keeps the records up to that step; the records of the
    /// steps that will run again move to metrics.replaced.jsonl.
    fn truncate_metrics(&self, step: u64) -> Result<()> {
        if !self.writer() {
            return Ok(());
        }
        let p = self.out_dir.join("metrics.jsonl");
        let Ok(text) = std::fs::read_to_string(&p) else { return Ok(()) };
        let (mut keep, mut drop) = (String::new(), String::new());
        for line in text.lines() {
            let s = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64());
            let out = if s.is_some_and(|s| s > step) { &mut drop } else { &mut keep };
            out.push_str(line);
            out.push('\n');
        }
        if !drop.is_empty() {
            let side = self.out_dir.join("metrics.replaced.jsonl");
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&side)?;
            f.write_all(drop.as_bytes())?;
            medvlp_model::model_dir::write_atomic(&p, keep.as_bytes())?;
        }
        Ok(())
    }

    /// Sets the schedule's total steps from the time per step since `from` (step, seconds into
    /// this invocation) so that training ends at `budget_minutes`; rank 0's clock decides for
    /// every rank.
    fn replan(
        &self,
        schedule: &mut Schedule,
        state: &mut TrainState,
        from: (u64, f64),
        t_start: Instant,
        seconds_before: f64,
    ) -> Result<()> {
        let own = [t_start.elapsed().as_secs_f64(), from.1];
        let rank0 = if self.writer() { own } else { [0.0; 2] };
        let [now, t0] = self.sum_over_ranks(&rank0)?[..] else { unreachable!() };
        let per_step = (now - t0) / (state.step - from.0) as f64;
        let left =
            self.config.budget_minutes * 60.0 * (1.0 - BUDGET_RESERVE) - seconds_before - now;
        let more = (left / per_step.max(1e-9)).floor().max(0.0) as u64;
        let total = state.step + more;
        if total != schedule.total_steps {
            tracing::info!(
                "step {}: {per_step:.3}s per step, {:.0}s of the budget left -> {total} steps (was {})",
                state.step,
                left.max(0.0),
                schedule.total_steps
            );
        }
        self.log(serde_json::json!({"kind": "plan", "step": state.step, "s_per_step": per_step,
            "budget_left_s": left, "total_steps": total, "previous_total_steps": schedule.total_steps}))?;
        schedule.total_steps = total;
        state.planned_steps = Some(total);
        Ok(())
    }

    /// Train to `config.steps` (or the `budget_minutes` plan), resuming from the newest checkpoint
    /// when `resume` is set.
    pub fn run(&self, objective: &mut dyn Objective, resume: bool) -> Result<RunSummary> {
        std::fs::create_dir_all(&self.out_dir)
            .with_context(|| format!("creating {}", self.out_dir.display()))?;
        let c = &self.config;
        let mut opt = AdamW::new(self.store.vars(), c.optimizer.clone())?;
        let mut state = TrainState { seed: self.seed, ..Default::default() };
        if self.writer() {
            checkpoint::clean_temporaries(&self.out_dir);
            checkpoint::clean_temporaries(&self.checkpoints_dir());
        }
        if self.distributed() {
            self.comm.barrier()?;
        }
        if resume {
            match self.restore_newest_valid(&mut opt)? {
                Some((dir, restored)) => {
                    state = restored;
                    if state.seed != self.seed {
                        bail!(
                            "checkpoint {} was trained with seed {}, this run has seed {}",
                            dir.display(),
                            state.seed,
                            self.seed
                        );
                    }
                    tracing::info!("resumed from {} at step {}", dir.display(), state.step);
                    self.truncate_metrics(state.step)?;
                }
                None => tracing::warn!(
                    "--resume: no checkpoint under {}, starting from scratch",
                    self.checkpoints_dir().display()
                ),
            }
        }
        // Identical replicas (also when a rank was initialised or restored differently).
        self.broadcast_parameters()?;
        let mut schedule = Schedule {
            warmup_steps: c.warmup_steps,
            total_steps: state.planned_steps.filter(|_| c.budget_minutes > 0.0).unwrap_or(c.steps),
            min_lr_ratio: c.min_lr_ratio,
        };
        let bar = if std::io::stderr().is_terminal() && self.writer() {
            let pb = indicatif::ProgressBar::new(schedule.total_steps);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap(),
            );
            pb.set_position(state.step);
            Some(pb)
        } else {
            None
        };
        let t_start = Instant::now();
        let mut samples_since = 0usize;
        let mut t_since = Instant::now();
        let mut last_loss = f64::NAN;
        let mut stopped = false;
        let mut reported_bad = 0;
        let (first_step, seconds_before) = (state.step, state.train_seconds);
        // The budget's timing starts a few steps in (allocator and loader warm-up).
        let mut timing_from: Option<(u64, f64)> = None;
        // Re-plans already made: a resumed run continues with the next one.
        let mut replans = (0..3).take_while(|&i| state.step >= replan_step(i, &schedule)).count();
        while state.step < schedule.total_steps {
            // A stop or the time budget on any rank ends the run on all of them, at this step.
            let over_budget =
                c.max_minutes > 0.0 && t_start.elapsed().as_secs_f64() > c.max_minutes * 60.0;
            let flags = self.sum_over_ranks(&[
                self.stop.load(Ordering::SeqCst) as u8 as f64,
                over_budget as u8 as f64,
            ])?;
            if flags[0] > 0.0 {
                stopped = true;
                break;
            }
            if flags[1] > 0.0 {
                tracing::info!(
                    "time budget of {} minutes reached at step {}",
                    c.max_minutes,
                    state.step
                );
                self.log(serde_json::json!({"kind": "budget", "step": state.step, "elapsed_s": t_start.elapsed().as_secs_f64()}))?;
                break;
            }
            let lr = schedule.lr(c.optimizer.lr, state.step);
            let mut acc = GradAccumulator::new(opt.params.len());
            let mut loss_sum = 0.0;
            let mut parts_sum: Vec<(String, f64)> = vec![];
            let mut finite = true;
            for micro in 0..c.grad_accum.max(1) {
                let group =
                    crate::dist::Group { comm: self.comm.clone(), local_loss: c.local_loss };
                let out = match crate::dist::with_group(group, || {
                    with_precision(c.precision, || objective.loss(state.step, micro))
                }) {
                    Ok(out) => out,
                    Err(e) => return Err(self.stop_on_bad_data(e, &opt, &state)),
                };
                samples_since += out.samples;
                // The backward pass is queued before any value is read back, so a GPU runs
                // forward and backward without waiting for the host in between; the loss and
                // its parts then come back in one transfer.
                let grads = out.loss.backward()?;
                let mut named = vec![(String::new(), out.loss.detach())];
                named.extend(out.parts);
                let values = crate::recipe::part_values(&named)?;
                let l = values[0].1;
                // No early exit on a non-finite loss: every rank runs the same micro-batches
                // (their losses may hold collectives).
                if !l.is_finite() {
                    finite = false;
                    continue;
                }
                loss_sum += l;
                for (k, v) in values.into_iter().skip(1) {
                    match parts_sum.iter_mut().find(|(n, _)| *n == k) {
                        Some(e) => e.1 += v,
                        None => parts_sum.push((k, v)),
                    }
                }
                acc.add(opt.collect_grads(&grads)?)?;
            }
            let k = c.grad_accum.max(1) as f64;
            // The step is taken only where every rank's loss was finite; the logged loss is the
            // mean over ranks.
            let world = self.comm.world_size() as f64;
            let agreed = self.sum_over_ranks(&[finite as u8 as f64, loss_sum])?;
            let finite = agreed[0] == world;
            let loss_sum = agreed[1] / world;
            let stats = if finite {
                let sums = self.reduce_gradients(&opt, std::mem::take(&mut acc.sums))?;
                Some(opt.step(&sums, lr, 1.0 / (k * world))?)
            } else {
                None
            };
            let applied = stats.map(|s| s.applied).unwrap_or(false);
            state.step += 1;
            state.train_seconds = seconds_before + t_start.elapsed().as_secs_f64();
            if applied {
                state.optimizer_steps = opt.step;
                state.consecutive_nonfinite = 0;
                last_loss = loss_sum / k;
            } else {
                state.nonfinite_skips += 1;
                state.consecutive_nonfinite += 1;
                tracing::warn!(
                    "step {}: non-finite loss or gradient, step skipped ({} so far)",
                    state.step,
                    state.nonfinite_skips
                );
                self.log(serde_json::json!({"kind": "nonfinite", "step": state.step, "skips": state.nonfinite_skips}))?;
                if state.consecutive_nonfinite >= c.max_nonfinite_steps {
                    let last = checkpoint::list(&self.checkpoints_dir())
                        .pop()
                        .map(|(_, p)| p.display().to_string())
                        .unwrap_or_else(|| "none".into());
                    bail!(
                        "stopping: {} consecutive non-finite steps (last good checkpoint: {last})",
                        state.consecutive_nonfinite
                    );
                }
            }
            if state.step == first_step + BUDGET_TIMING_SKIP {
                timing_from = Some((state.step, t_start.elapsed().as_secs_f64()));
            }
            // Each re-plan once: one that moves the total may move the next point to this step.
            if c.budget_minutes > 0.0
                && replans < 3
                && state.step >= replan_step(replans, &schedule)
            {
                if let Some(from) = timing_from.filter(|f| f.0 < state.step) {
                    replans += 1;
                    self.replan(&mut schedule, &mut state, from, t_start, seconds_before)?;
                    if let Some(pb) = &bar {
                        pb.set_length(schedule.total_steps);
                    }
                }
            }
            let last = state.step == schedule.total_steps;
            if applied && (state.step.is_multiple_of(c.log_every.max(1)) || last) {
                let dt = t_since.elapsed().as_secs_f64();
                let mut line = serde_json::json!({
                    "kind": "train", "step": state.step, "loss": last_loss, "lr": lr,
                    "grad_norm": stats.map(|s| s.grad_norm).unwrap_or(f64::NAN),
                    "samples_per_s": samples_since as f64 / dt.max(1e-9),
                    "elapsed_s": t_start.elapsed().as_secs_f64(),
                });
                for (n, v) in &parts_sum {
                    line[n.as_str()] = serde_json::json!(v / k);
                }
                self.log(line)?;
                if let Some(pb) = &bar {
                    let parts: Vec<String> =
                        parts_sum.iter().map(|(n, v)| format!("{n} {:.3}", v / k)).collect();
                    pb.set_message(format!(
                        "loss {last_loss:.4} ({}) lr {lr:.2e} {:.1} samples/s",
                        parts.join(", "),
                        samples_since as f64 / dt.max(1e-9)
                    ));
                }
                samples_since = 0;
                t_since = Instant::now();
            }
            if let Some(pb) = &bar {
                pb.set_position(state.step);
            }
            // Validation on rank 0 (the others go on to the next step's collectives and wait).
            if c.validate_every > 0 && state.step.is_multiple_of(c.validate_every) && self.writer()
            {
                let metrics = match objective.validate(state.step) {
                    Ok(m) => m,
                    Err(e) => return Err(self.stop_on_bad_data(e, &opt, &state)),
                };
                if let Some((name, value)) = metrics.first().cloned() {
                    let mut line = serde_json::json!({"kind": "validation", "step": state.step});
                    for (n, v) in &metrics {
                        line[n.as_str()] = serde_json::json!(v);
                    }
                    self.log(line)?;
                    let better = match state.best_metric {
                        None => true,
                        Some(b) => {
                            if higher_is_better(&name) {
                                value > b
                            } else {
                                value < b
                            }
                        }
                    };
                    if better && value.is_finite() {
                        state.best_metric = Some(value);
                        // `self.writer()` holds here (validation runs on rank 0).
                        checkpoint::write_dir(
                            &self.out_dir.join("best"),
                            &self.model_config,
                            self.store,
                            self.tokenizer.as_deref(),
                            None,
                            None,
                        )?;
                    }
                }
            }
            let bad = objective.bad_samples();
            if bad.len() > reported_bad && self.writer() {
                let new: Vec<serde_json::Value> = bad[reported_bad..]
                    .iter()
                    .map(|(p, r)| serde_json::json!({"sample": p, "reason": r}))
                    .collect();
                self.log(serde_json::json!({"kind": "bad_samples", "step": state.step, "count": bad.len(), "new": new}))?;
                reported_bad = bad.len();
            }
            // No periodic checkpoint inside a non-finite streak: keep_last must not prune the good ones.
            if c.checkpoint_every > 0
                && state.step.is_multiple_of(c.checkpoint_every)
                && state.consecutive_nonfinite == 0
            {
                self.save_checkpoint(&opt, &state)?;
            }
        }
        if let Some(pb) = &bar {
            pb.finish_and_clear();
        }
        if stopped {
            let dir = self.save_checkpoint(&opt, &state)?;
            tracing::info!(
                "stopped at step {}: checkpoint written to {}",
                state.step,
                dir.display()
            );
        } else if self.writer() {
            checkpoint::write_dir(
                &self.out_dir.join("final"),
                &self.model_config,
                self.store,
                self.tokenizer.as_deref(),
                None,
                None,
            )?;
        }
        Ok(RunSummary {
            state,
            stopped_early: stopped,
            last_loss,
            bad_samples: objective.bad_samples(),
        })
    }
}

/// Steps of each invocation before the budget's timing starts.
const BUDGET_TIMING_SKIP: u64 = 2;
/// Share of `budget_minutes` kept back for the final model and the checkpoints still to come.
const BUDGET_RESERVE: f64 = 0.01;

/// The step after which a `budget_minutes` run makes its re-plan `i`: the end of warm-up, then one
/// half and three quarters of the current plan (late enough to have timed the slow stretches,
/// early enough that the cosine decay stays smooth: a 5% change at one half moves the learning
/// rate by ~4%).
fn replan_step(i: usize, s: &Schedule) -> u64 {
    match i {
        0 => s.warmup_steps.max(1),
        1 => s.total_steps / 2,
        _ => s.total_steps * 3 / 4,
    }
}

/// Save the resolved configuration of a run (TOML) next to its metrics.
pub fn save_resolved_config(out_dir: &Path, toml_text: &str) -> Result<()> {
    std::fs::create_dir_all(out_dir)?;
    medvlp_model::model_dir::write_atomic(&out_dir.join("config.toml"), toml_text.as_bytes())
}
