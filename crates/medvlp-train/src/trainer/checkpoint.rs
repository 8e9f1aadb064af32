//! Checkpoints: `checkpoints/step-NNNNNNNN/` holds a model directory (config.json,
//! model.safetensors, tokenizer.json), `optimizer.safetensors` (AdamW moments) and
//! `trainer_state.json`. A checkpoint is written into a temporary folder and renamed into place, so
//! a crash (even SIGKILL) leaves either the previous or the new checkpoint, never a partial one.
//!
//! A checkpoint's `manifest.json` (sizes and SHA-256 of its files) is written last; a resumed run
//! takes the newest checkpoint that matches its manifest, so a checkpoint damaged after it was
//! written (a truncated file, a disk error) costs the steps since the previous one, not the run.
//!
//! Randomness in training is a pure function of (seed, step, micro-batch), so the step counter is
//! the whole RNG and data-position state.

use super::TrainState;
use crate::optim::AdamW;
use anyhow::{Context, Result};
use medvlp_data::hash::sha256_hex;
use medvlp_model::model_dir::{self, write_atomic};
use medvlp_model::{ModelConfig, ParamStore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
pub const MANIFEST_FILE: &str = "manifest.json";

pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Write a model directory (plus optimizer and trainer state when given) to `dir` atomically.
pub fn write_dir(
    dir: &Path,
    config: &ModelConfig,
    store: &ParamStore,
    tokenizer: Option<&Path>,
    opt: Option<&AdamW>,
    state: Option<&TrainState>,
) -> Result<()> {
    let parent = dir.parent().context("checkpoint path has no parent")?;
    std::fs::create_dir_all(parent)?;
    let name = dir.file_name().context("checkpoint path has no name")?.to_string_lossy();
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    model_dir::save(&tmp, config, store, tokenizer)?;
    if let Some(opt) = opt {
        let tensors = opt.state_tensors()?;
        let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
            .context("serialising optimizer state")?;
        write_atomic(&tmp.join(OPTIMIZER_FILE), &bytes)?;
    }
    if let Some(state) = state {
        write_atomic(&tmp.join(STATE_FILE), serde_json::to_string_pretty(state)?.as_bytes())?;
        write_manifest(&tmp)?;
    }
    // Replace an existing folder of the same name (e.g. `final/`, `best/`).
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old)?;
        std::fs::rename(&tmp, dir)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("renaming checkpoint into {}", dir.display()))?;
    }
    sync_dir(parent);
    Ok(())
}

/// Size and SHA-256 of each file of a checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    files: std::collections::BTreeMap<String, FileEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileEntry {
    size: u64,
    sha256: String,
}

fn write_manifest(dir: &Path) -> Result<()> {
    let mut files = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == MANIFEST_FILE || !e.path().is_file() {
            continue;
        }
        let bytes =
            std::fs::read(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
        files.insert(name, FileEntry { size: bytes.len() as u64, sha256: sha256_hex(&bytes) });
    }
    write_atomic(&dir.join(MANIFEST_FILE), &serde_json::to_vec_pretty(&Manifest { files })?)
}

/// Checks a checkpoint against its manifest: every listed file present, with its size and hash.
/// Checkpoints written before manifests existed have none and are only checked for their
/// trainer state.
pub fn verify(dir: &Path) -> Result<()> {
    let p = dir.join(MANIFEST_FILE);
    if !p.exists() {
        let s = dir.join(STATE_FILE);
        serde_json::from_str::<TrainState>(&std::fs::read_to_string(&s)?)
            .with_context(|| format!("parsing {}", s.display()))?;
        return Ok(());
    }
    let m: Manifest = serde_json::from_slice(&std::fs::read(&p)?)
        .with_context(|| format!("parsing {}", p.display()))?;
    for (name, want) in &m.files {
        let f = dir.join(name);
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        if bytes.len() as u64 != want.size {
            anyhow::bail!(
                "{}: {} bytes, the manifest says {}",
                f.display(),
                bytes.len(),
                want.size
            );
        }
        if sha256_hex(&bytes) != want.sha256 {
            anyhow::bail!("{}: contents differ from the manifest", f.display());
        }
    }
    Ok(())
}

/// Removes the temporary folders (`.NAME.partial-PID`, `.NAME.old-PID`) a killed run left in `dir`.
pub fn clean_temporaries(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && (name.contains(".partial-") || name.contains(".old-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Complete checkpoints under `root` (folders `step-N` with a trainer state), oldest first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
                if e.path().join(STATE_FILE).exists() {
                    out.push((n, e.path()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Delete all but the newest `keep` checkpoints, and partial folders left by a crash.
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = list(root);
    for (_, p) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(p)
            .with_context(|| format!("removing old checkpoint {}", p.display()))?;
    }
    clean_temporaries(root);
    Ok(())
}

/// Load parameters, optimizer moments and trainer state from a checkpoint into existing objects.
pub fn restore(dir: &Path, store: &ParamStore, opt: &mut AdamW) -> Result<TrainState> {
    let weights = candle_core::safetensors::load(dir.join(model_dir::WEIGHTS_FILE), store.device())
        .with_context(|| format!("reading {}", dir.join(model_dir::WEIGHTS_FILE).display()))?;
    for (name, var) in store.vars() {
        let t = weights
            .get(&name)
            .with_context(|| format!("checkpoint {} lacks parameter {name}", dir.display()))?;
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    let state: TrainState =
        serde_json::from_str(&std::fs::read_to_string(dir.join(STATE_FILE))?)
            .with_context(|| format!("parsing {}", dir.join(STATE_FILE).display()))?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let moments: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(&opt_path, store.device())
            .with_context(|| format!("reading {}", opt_path.display()))?;
    opt.load_state(&moments, state.optimizer_steps)?;
    Ok(state)
}
