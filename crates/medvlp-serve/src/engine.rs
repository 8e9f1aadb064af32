//! The model worker: one thread owns the model and runs every forward pass. Requests put jobs
//! (a preprocessed image or a text) on a bounded queue; the worker takes the first job, gathers
//! more until `max_batch` jobs or `max_wait` has passed, and embeds them in one batch per kind.
//! The async runtime only awaits the replies, so inference never blocks it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::Tensor;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use medvlp_model::encode::{encode_texts, Evaluator};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// What one job embeds.
pub enum Input {
    /// Eval-preprocessed pixels (`channels x size x size`, normalised).
    Image(Vec<f32>),
    Text(String),
}

/// One embedding, or why the batch it was in failed.
pub type Reply = Result<Vec<f32>, String>;

struct Job {
    input: Input,
    reply: oneshot::Sender<Reply>,
}

/// The queue is full: the caller answers 503 with `Retry-After`.
#[derive(Debug)]
pub struct Overloaded;

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the model queue is full")
    }
}

impl std::error::Error for Overloaded {}

/// Handle to the worker; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: Sender<Job>,
    capacity: usize,
    alive: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// Batching settings.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue: usize,
}

impl Engine {
    /// Starts the worker thread, which owns `ev` until every `Engine` handle is dropped.
    pub fn start(ev: Evaluator, cfg: BatchConfig, metrics: Arc<Metrics>) -> Engine {
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue.max(1));
        let alive = Arc::new(AtomicBool::new(true));
        let engine = Engine { tx, capacity: cfg.queue.max(1), alive: alive.clone(), metrics };
        let m = engine.metrics.clone();
        std::thread::Builder::new()
            .name("medvlp-model".into())
            .spawn(move || {
                // This thread runs every kernel as worker 0 of a pool of its own.
                let _pool = medvlp_model::runtime::model_thread_pool();
                worker(ev, rx, cfg, &m);
                alive.store(false, Ordering::SeqCst);
            })
            .expect("spawning the model thread");
        engine
    }

    /// Inputs the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queues `inputs` (all or none) and returns their replies in order.
    pub fn submit(&self, inputs: Vec<Input>) -> Result<Vec<oneshot::Receiver<Reply>>, Overloaded> {
        if self.tx.len() + inputs.len() > self.capacity {
            return Err(Overloaded);
        }
        let mut replies = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (reply, rx) = oneshot::channel();
            match self.tx.try_send(Job { input, reply }) {
                Ok(()) => replies.push(rx),
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    return Err(Overloaded)
                }
            }
        }
        self.metrics.queue_depth.set(self.tx.len() as i64);
        Ok(replies)
    }

    /// Embeds `inputs` and waits for all of them.
    pub async fn embed(&self, inputs: Vec<Input>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let replies = self.submit(inputs).map_err(|_| EmbedError::Overloaded)?;
        let mut out = Vec::with_capacity(replies.len());
        for r in replies {
            match r.await {
                Ok(Ok(v)) => out.push(v),
                Ok(Err(e)) => return Err(EmbedError::Model(e)),
                Err(_) => return Err(EmbedError::Model("the model thread stopped".into())),
            }
        }
        Ok(out)
    }
}

#[derive(Debug)]
pub enum EmbedError {
    Overloaded,
    Model(String),
}

fn worker(ev: Evaluator, rx: Receiver<Job>, cfg: BatchConfig, metrics: &Metrics) {
    // The model thread runs every product in the evaluator's precision.
    medvlp_model::nn::with_precision(ev.precision, || work(&ev, rx, cfg, metrics))
}

fn work(ev: &Evaluator, rx: Receiver<Job>, cfg: BatchConfig, metrics: &Metrics) {
    let pp = &ev.preprocess;
    let (c, s) = (pp.channels as usize, pp.image_size as usize);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + cfg.max_wait;
        while jobs.len() < cfg.max_batch {
            match rx.recv_deadline(deadline) {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        metrics.queue_depth.set(rx.len() as i64);
        metrics.batch_size.observe(jobs.len() as f64);
        let (images, texts): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| matches!(j.input, Input::Image(_)));
        if !images.is_empty() {
            let n = images.len();
            let mut px = Vec::with_capacity(n * c * s * s);
            for j in &images {
                if let Input::Image(v) = &j.input {
                    px.extend_from_slice(v);
                }
            }
            let out = medvlp_data::guard::catch_quiet(|| -> Result<Vec<Vec<f32>>> {
                let t = Tensor::from_vec(px, (n, c, s, s), &ev.device)?;
                Ok(medvlp_model::encode::image_embeds(ev.encoder(), &t)?
                    .detach()
                    .to_vec2::<f32>()?)
            });
            reply_all(images, out);
        }
        if !texts.is_empty() {
            let strs: Vec<&str> = texts
                .iter()
                .map(|j| match &j.input {
                    Input::Text(t) => t.as_str(),
                    Input::Image(_) => "",
                })
                .collect();
            let out = medvlp_data::guard::catch_quiet(|| {
                encode_texts(ev.encoder(), &ev.tokenizer, &strs, cfg.max_batch, &ev.device)
            });
            reply_all(texts, out);
        }
    }
}

fn reply_all(jobs: Vec<Job>, out: Result<Result<Vec<Vec<f32>>>, String>) {
    let n = jobs.len();
    match out {
        Ok(Ok(rows)) if rows.len() == jobs.len() => {
            for (j, r) in jobs.into_iter().zip(rows) {
                let _ = j.reply.send(Ok(r));
            }
        }
        other => {
            let msg = match other {
                Ok(Ok(rows)) => format!("model returned {} rows for {n} inputs", rows.len()),
                Ok(Err(e)) => format!("{e:#}"),
                Err(panic) => format!("model forward panicked: {panic}"),
            };
            tracing::error!("batch failed: {msg}");
            for j in jobs {
                let _ = j.reply.send(Err(msg.clone()));
            }
        }
    }
}
