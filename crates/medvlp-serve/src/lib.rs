//! `medvlp serve`: a model directory (and optionally an embedding index from `medvlp index
//! build`) behind HTTP, on axum + tokio.
//!
//! - `POST /v1/embed/image`: a PNG, JPEG or DICOM body, or `multipart/form-data` with several
//!   files -> joint-space embeddings.
//! - `POST /v1/embed/text`: a JSON list of strings (or `{"texts": [...]}`) -> embeddings.
//! - `POST /v1/zero-shot?prompts=chexpert5&mode=pos_neg` (or `labels=Edema,Pneumothorax`): an
//!   image -> per-label scores, computed as `medvlp eval zero-shot` computes them.
//! - `POST /v1/retrieve?k=10`: an image (-> nearest reports) or `{"text": ..., "k": ...}` (->
//!   nearest images) against the index.
//! - `POST /v1/preview`: what the model sees, as PNG (the page uses it).
//! - `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus), `GET /openapi.json`, `GET /`.
//!
//! Requests are batched dynamically by [`engine::Engine`]; decoding runs on the blocking pool,
//! bounded by a semaphore. Every bad input gets a 4xx JSON `{error, detail}`; a full queue gets
//! 503 with `Retry-After`; SIGTERM drains (in-flight requests finish, new ones get 503).

pub mod engine;
pub mod metrics;
mod routes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use medvlp_model::encode::Evaluator;

pub use routes::router;

/// Everything `medvlp serve` is told.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model: PathBuf,
    pub index: Option<PathBuf>,
    pub bind: SocketAddr,
    /// A file holding the bearer token; requests to `/v1/*` and `/metrics` must carry it.
    pub token_file: Option<PathBuf>,
    pub device: String,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Inputs that may wait for the model; beyond it requests get 503.
    pub queue: usize,
    pub max_body_bytes: usize,
    /// Pixel budget checked from the header before decoding (`data.max_pixels`).
    pub max_pixels: u64,
    pub timeout: Duration,
    /// Images decoded at once (default: the number of CPUs).
    pub decode_threads: usize,
    /// bf16 products for the embeddings (bf16 operands, f32 accumulation).
    pub bf16: bool,
    /// How long SIGTERM waits for in-flight requests before stopping anyway.
    pub drain_timeout: Duration,
}

impl ServeOptions {
    pub fn new(model: PathBuf) -> Self {
        ServeOptions {
            model,
            index: None,
            bind: "127.0.0.1:8080".parse().expect("valid address"),
            token_file: None,
            device: "cpu".into(),
            max_batch: 32,
            max_wait: Duration::from_millis(5),
            queue: 256,
            max_body_bytes: 64 << 20,
            max_pixels: medvlp_data::image::DEFAULT_MAX_PIXELS,
            timeout: Duration::from_secs(30),
            decode_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            bf16: false,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    pub engine: engine::Engine,
    pub preprocess: medvlp_data::image::preprocess::PreprocessConfig,
    pub index: Option<medvlp_index::Index>,
    /// 1 / logit_scale: the pos/neg prompt temperature, as in `medvlp eval`.
    pub temperature: f64,
    pub model_hash: Option<String>,
    pub token: Option<String>,
    pub metrics: Arc<metrics::Metrics>,
    pub draining: AtomicBool,
    pub decode_slots: tokio::sync::Semaphore,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    prompt_cache: std::sync::Mutex<routes::PromptCache>,
}

fn read_token(path: &Path) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(t)
}

/// Loads the model and index and builds the shared state (no socket yet).
pub fn build_state(opts: &ServeOptions) -> Result<Arc<AppState>> {
    if opts.max_batch == 0 || opts.queue == 0 || opts.decode_threads == 0 {
        bail!("--max-batch, --queue and --decode-threads must be at least 1");
    }
    medvlp_data::image::set_max_pixels(opts.max_pixels);
    let device = medvlp_model::runtime::device(&opts.device)?;
    let mut ev = Evaluator::load(&opts.model, opts.max_batch, &device)?;
    if opts.bf16 {
        ev.precision = medvlp_model::nn::Precision::Bf16;
    }
    let temperature = ev.temperature()?;
    let model_hash = ev.model_hash.clone();
    let index = match &opts.index {
        Some(p) => {
            let idx = medvlp_index::Index::open(p)?;
            let hash = model_hash.as_deref().unwrap_or("");
            idx.check_model(hash)
                .with_context(|| format!("index {} was built with another model", p.display()))?;
            Some(idx)
        }
        None => None,
    };
    let token = opts.token_file.as_deref().map(read_token).transpose()?;
    let metrics = Arc::new(metrics::Metrics::new());
    let preprocess = ev.preprocess.clone();
    let batch = engine::BatchConfig {
        max_batch: opts.max_batch,
        max_wait: opts.max_wait,
        queue: opts.queue,
    };
    let engine = engine::Engine::start(ev, batch, metrics.clone());
    Ok(Arc::new(AppState {
        engine,
        preprocess,
        index,
        temperature,
        model_hash,
        token,
        metrics,
        draining: AtomicBool::new(false),
        decode_slots: tokio::sync::Semaphore::new(opts.decode_threads),
        max_body_bytes: opts.max_body_bytes,
        timeout: opts.timeout,
        prompt_cache: std::sync::Mutex::new(Default::default()),
    }))
}

/// Serves until SIGTERM or SIGINT, then drains: new requests get 503 while in-flight ones
/// finish (up to `drain_timeout`). Prints `listening on http://ADDR` once bound.
pub fn run(opts: ServeOptions) -> Result<()> {
    if !opts.bind.ip().is_loopback() && opts.token_file.is_none() {
        tracing::warn!(
            "binding {} without --token-file: anyone who can reach this address can use the model",
            opts.bind
        );
    }
    let state = build_state(&opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("medvlp-http")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.bind)
            .await
            .with_context(|| format!("cannot bind {}", opts.bind))?;
        let addr = listener.local_addr()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{addr}")?;
            out.flush()?;
        }
        tracing::info!(
            "serving {} on http://{addr} (index: {})",
            opts.model.display(),
            opts.index.as_ref().map_or("none".into(), |p| p.display().to_string())
        );
        let app = router(state.clone());
        let drain_state = state.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                drain_state.draining.store(true, Ordering::SeqCst);
                tracing::info!("draining: new requests get 503, waiting for in-flight ones");
                let start = std::time::Instant::now();
                while drain_state.metrics.in_flight.get() > 0
                    && start.elapsed() < opts.drain_timeout
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .context("serving")?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
