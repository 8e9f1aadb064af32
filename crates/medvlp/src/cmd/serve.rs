//! `medvlp serve`: the model (and optionally an index from `medvlp index build`) over HTTP; see
//! the `medvlp-serve` crate for the routes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use medvlp_serve::ServeOptions;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// medvlp model directory (with tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Embedding index built with this model (`medvlp index build`), for /v1/retrieve.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// File holding a bearer token required on /v1/* and /metrics.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Most inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// How long the first input of a batch waits for others, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Inputs allowed to wait for the model; requests beyond it get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 64)]
    pub max_body_mib: usize,
    /// Pixel budget of one image, checked from its header before decoding.
    #[arg(long, default_value_t = medvlp_data::image::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Per-request timeout in seconds (504 past it).
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
    /// Images decoded at once (default: the number of CPUs).
    #[arg(long)]
    pub decode_threads: Option<usize>,
    /// bf16 products (bf16 operands, f32 accumulation; AVX-512 BF16 where the CPU has it).
    #[arg(long)]
    pub bf16: bool,
}

pub fn run(a: Args) -> Result<()> {
    medvlp_model::runtime::device(&a.device)?;
    let mut o = ServeOptions::new(a.model);
    o.index = a.index;
    o.bind = a.bind;
    o.token_file = a.token_file;
    o.device = a.device;
    o.max_batch = a.max_batch;
    o.max_wait = Duration::from_millis(a.max_wait_ms);
    o.queue = a.queue;
    o.max_body_bytes = a.max_body_mib << 20;
    o.max_pixels = a.max_pixels;
    o.timeout = Duration::from_secs(a.timeout_s.max(1));
    o.bf16 = a.bf16;
    if let Some(n) = a.decode_threads {
        o.decode_threads = n;
    }
    medvlp_serve::run(o)
}
