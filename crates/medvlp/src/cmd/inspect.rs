//! `medvlp inspect DIR`: config, parameter count per component, tensor names and shapes of a medvlp
//! model directory or a Hugging Face BERT directory (headers only: no model is built), or of an
//! imported checkpoint (loaded, so every tensor is checked against its architecture).

use anyhow::{Context, Result};
use medvlp_model::interop;
use medvlp_model::model_dir::{self, DirKind, CONFIG_FILE, WEIGHTS_FILE};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model: a medvlp or Hugging Face BERT directory, any imported checkpoint family, or
    /// `hf:ORG/NAME[@REV]`.
    pub dir: PathBuf,
    /// Print only the summary, not every tensor.
    #[arg(long)]
    pub summary: bool,
}

/// Component a tensor belongs to: the first name segment, and the second for the encoders
/// (`vision_model.embeddings`, `text_model.encoder`, ...).
fn component(name: &str, kind: DirKind) -> String {
    let name =
        if kind == DirKind::HfBert { name.strip_prefix("bert.").unwrap_or(name) } else { name };
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [a @ ("vision_model" | "text_model"), b, ..] => format!("{a}.{b}"),
        [a, ..] => a.to_string(),
        [] => String::new(),
    }
}

/// An imported checkpoint: loads it (every tensor checked against its architecture) and prints the
/// family, towers, preprocessing and tensors.
fn inspect_foreign(args: &Args) -> Result<()> {
    let dev = candle_core::Device::Cpu;
    let m = interop::load(&args.dir, &dev)?;
    println!("{} (imported: {})", args.dir.display(), m.family.name());
    for (k, v) in m.describe() {
        println!("{k:<16} {v}");
    }
    println!("preprocess:\n{}", serde_json::to_string_pretty(&m.preprocess)?);
    let sd = interop::state_dict::StateDict::read(&m.weights, &dev)?;
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut total = 0;
    let mut rows = vec![];
    for k in sd.keys() {
        let shape = sd.shape(k).unwrap_or_default();
        let count: usize = shape.iter().product();
        let parts: Vec<&str> = k.split('.').collect();
        let comp = parts
            .iter()
            .take(2.min(parts.len().saturating_sub(1)).max(1))
            .cloned()
            .collect::<Vec<_>>()
            .join(".");
        let e = per.entry(comp).or_default();
        e.0 += 1;
        e.1 += count;
        total += count;
        rows.push((k.clone(), shape));
    }
    println!("\n{:<40} {:>8} {:>14}", "component", "tensors", "parameters");
    for (c, (nt, np)) in &per {
        println!("{c:<40} {nt:>8} {np:>14}");
    }
    println!("{:<40} {:>8} {:>14}", "total", rows.len(), total);
    if !args.summary {
        println!("\n{:<72}  shape", "tensor");
        for (n, shape) in &rows {
            println!("{n:<72}  {shape:?}");
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if interop::detect(&args.dir).is_ok_and(|f| f != interop::Family::MedVlp) {
        return inspect_foreign(&args);
    }
    let kind = model_dir::detect(&args.dir)?;
    let cfg_path = args.dir.join(CONFIG_FILE);
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
    println!(
        "{} ({})",
        args.dir.display(),
        match kind {
            DirKind::MedVlp => "medvlp model",
            DirKind::HfBert => "Hugging Face BERT",
        }
    );
    println!("config:\n{}", serde_json::to_string_pretty(&cfg)?);
    let weights = args.dir.join(WEIGHTS_FILE);
    let (_, header) = model_dir::read_header(&weights)?;
    if let Some(meta) = header.metadata() {
        println!("weights metadata: {}", serde_json::to_string(meta)?);
    }
    let mut tensors: Vec<(String, String, Vec<usize>)> = header
        .tensors()
        .iter()
        .map(|(n, info)| (n.clone(), format!("{:?}", info.dtype), info.shape.clone()))
        .collect();
    tensors.sort();
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut total = 0usize;
    for (n, _, shape) in &tensors {
        let count: usize = shape.iter().product();
        let e = per.entry(component(n, kind)).or_default();
        e.0 += 1;
        e.1 += count;
        total += count;
    }
    println!("\n{:<28} {:>8} {:>14}", "component", "tensors", "parameters");
    for (c, (nt, np)) in &per {
        println!("{c:<28} {nt:>8} {np:>14}");
    }
    println!("{:<28} {:>8} {:>14}", "total", tensors.len(), total);
    if !args.summary {
        println!("\n{:<72} {:>6}  shape", "tensor", "dtype");
        for (n, dt, shape) in &tensors {
            println!("{n:<72} {dt:>6}  {shape:?}");
        }
    }
    Ok(())
}
