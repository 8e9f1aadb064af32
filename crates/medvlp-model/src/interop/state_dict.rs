//! Foreign checkpoints as name -> tensor maps: safetensors files and PyTorch zip pickles
//! (`torch.save` state dicts, `.bin`, Lightning `.ckpt`). The pickle is parsed by candle's reader,
//! which builds plain values and never calls a Python callable: nothing in a checkpoint runs.
//!
//! Every tensor a loader takes is checked against the shape it expects, and the keys nobody took
//! are an error unless the family says to ignore them: a checkpoint that does not match its
//! architecture fails with the file, the key and the expected shape, never loads half-way.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct StateDict {
    pub path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
    used: Mutex<BTreeSet<String>>,
}

impl StateDict {
    /// Reads `path`: `.safetensors` by its header, anything else as a PyTorch zip pickle. A pickle
    /// holding a dict with a `state_dict` entry (Lightning) reads that entry. Tensors become f32.
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        let is_st = path.extension().is_some_and(|e| e == "safetensors");
        let raw = if is_st {
            crate::model_dir::read_header(path)?;
            candle_core::safetensors::load(path, device)
                .map_err(|e| anyhow!("{}: reading safetensors: {e}", path.display()))?
                .into_iter()
                .collect::<Vec<_>>()
        } else {
            read_pickle(path, device)?
        };
        let mut tensors = BTreeMap::new();
        for (k, t) in raw {
            let t = t.to_dtype(DType::F32).with_context(|| format!("{}: {k}", path.display()))?;
            tensors.insert(k, t);
        }
        if tensors.is_empty() {
            bail!("{}: holds no tensors", path.display());
        }
        Ok(Self::from_tensors(path, tensors))
    }

    pub fn from_tensors(path: &Path, tensors: BTreeMap<String, Tensor>) -> Self {
        Self { path: path.to_path_buf(), tensors, used: Mutex::new(BTreeSet::new()) }
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|t| t.dims().to_vec())
    }

    /// The tensor `key`, which must have `shape`.
    pub fn take(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.take_any(key, shape)?;
        if t.dims() != shape {
            bail!(
                "{}: {key} has shape {:?}, the architecture expects {shape:?}",
                self.path.display(),
                t.dims()
            );
        }
        Ok(t)
    }

    /// The tensor `key` whatever its shape (`hint` only names the expected shape when missing).
    pub fn take_any(&self, key: &str, hint: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(key).ok_or_else(|| {
            let dims: Vec<String> = hint
                .iter()
                .map(|&d| if d == 0 { "?".to_string() } else { d.to_string() })
                .collect();
            anyhow!(
                "{}: missing tensor {key} (expected shape [{}])",
                self.path.display(),
                dims.join(", ")
            )
        })?;
        self.used.lock().unwrap().insert(key.to_string());
        Ok(t.clone())
    }

    /// `take` when present, `None` when absent.
    pub fn take_opt(&self, key: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.has(key) {
            self.take(key, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Marks keys as deliberately unused (buffers such as `position_ids`).
    pub fn skip(&self, key: &str) {
        if self.has(key) {
            self.used.lock().unwrap().insert(key.to_string());
        }
    }

    /// Number of consecutive `{prefix}{i}.` groups, i = 0, 1, ...
    pub fn count_layers(&self, prefix: &str) -> usize {
        (0..).take_while(|i| self.keys().any(|k| k.starts_with(&format!("{prefix}{i}.")))).count()
    }

    /// Fails when a key was neither taken nor under one of `ignore`'s prefixes: extra tensors
    /// mean the checkpoint has parts this architecture does not run.
    pub fn finish(&self, ignore: &[&str]) -> Result<()> {
        let used = self.used.lock().unwrap();
        let extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !used.contains(*k) && !ignore.iter().any(|p| matches(p, k)))
            .collect();
        if !extra.is_empty() {
            let shown: Vec<String> = extra
                .iter()
                .take(12)
                .map(|k| format!("{k} {:?}", self.tensors[*k].dims()))
                .collect();
            bail!(
                "{}: {} tensors this architecture does not use: {}{}",
                self.path.display(),
                extra.len(),
                shown.join(", "),
                if extra.len() > 12 { ", ..." } else { "" }
            );
        }
        Ok(())
    }
}

/// `key` starts with `pattern`, where `*` in the pattern stands for any run of characters
/// (`text.encoder.layer.*.crossattention.` covers every layer's cross-attention).
pub fn matches(pattern: &str, key: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = key.strip_prefix(first) else { return false };
    for part in parts {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// What a pickled value is, for error messages.
fn describe(o: &Object) -> String {
    match o {
        Object::Int(_) | Object::Long(_) => "an integer".into(),
        Object::Float(_) => "a float".into(),
        Object::Unicode(_) => "a string".into(),
        Object::Bool(_) => "a bool".into(),
        Object::None => "None".into(),
        Object::Tuple(_) | Object::List(_) => "a list".into(),
        Object::Dict(_) => "a dict".into(),
        Object::Class { module_name, class_name } => {
            format!("the class {module_name}.{class_name}")
        }
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match &**callable {
            Object::Class { module_name, class_name } => {
                format!("an object built by {module_name}.{class_name}")
            }
            other => describe(other),
        },
        _ => "a non-tensor object".into(),
    }
}

fn dict_entries(o: Object) -> Option<Vec<(Object, Object)>> {
    match o {
        Object::Dict(kv) => Some(kv),
        // An OrderedDict with attributes (`_metadata`) arrives as BUILD over the dict.
        Object::Build { callable, .. } => dict_entries(*callable),
        _ => None,
    }
}

/// Reads the tensors of a zip-format PyTorch pickle, refusing non-tensor values in the state dict.
fn read_pickle(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|_| {
        anyhow!(
            "{}: not a safetensors file nor a zip-format PyTorch checkpoint (torch.save since \
             PyTorch 1.6; re-save older files with torch.save(torch.load(f), f))",
            path.display()
        )
    })?;
    let names: Vec<String> =
        zip.file_names().filter_map(|s| s.ok().map(|s| s.into_owned())).collect();
    if names.iter().any(|n| n.contains("/code/") || n.ends_with("constants.pkl")) {
        bail!(
            "{}: a TorchScript archive, not a state dict; save its weights with \
             torch.save(torch.jit.load(f).state_dict(), 'model.pt')",
            path.display()
        );
    }
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| anyhow!("{}: a zip file without data.pkl", path.display()))?
        .clone();
    let obj = {
        let reader = zip.by_name(&pkl)?;
        let mut reader = BufReader::new(reader);
        let mut stack = Stack::empty();
        stack.read_loop(&mut reader).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        stack.finalize().map_err(|e| anyhow!("{}: {e}", path.display()))?
    };
    let top = dict_entries(obj.clone())
        .ok_or_else(|| anyhow!("{}: holds {}, not a state dict", path.display(), describe(&obj)))?;
    // Lightning and many training scripts wrap the weights: {"state_dict": {...}, "epoch": ...}.
    let key = top.iter().find_map(|(k, v)| match k {
        Object::Unicode(s) if s == "state_dict" && dict_entries(v.clone()).is_some() => {
            Some("state_dict")
        }
        _ => None,
    });
    let entries = match key {
        Some(k) => top
            .into_iter()
            .find(|(n, _)| matches!(n, Object::Unicode(s) if s == k))
            .and_then(|(_, v)| dict_entries(v))
            .unwrap_or_default(),
        None => top,
    };
    let dir = PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    for (name, value) in entries {
        let n = match &name {
            Object::Unicode(s) => s.clone(),
            other => bail!("{}: a state-dict key that is {}", path.display(), describe(other)),
        };
        // PyTorch's per-module version record, attached to every state dict.
        if n == "_metadata" && matches!(value, Object::Dict(_)) {
            continue;
        }
        let what = describe(&value);
        match value.into_tensor_info(name, &dir) {
            Ok(Some(_)) => {}
            _ => bail!(
                "{}: {}{n} is {what}, not a tensor (only tensors are read; nothing in the file was \
                 executed)",
                path.display(),
                key.map(|k| format!("{k}.")).unwrap_or_default()
            ),
        }
    }
    let pth = candle_core::pickle::PthTensors::new(path, key)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut out = vec![];
    for name in pth.tensor_infos().keys() {
        let t = pth
            .get(name)
            .map_err(|e| anyhow!("{}: {name}: {e}", path.display()))?
            .ok_or_else(|| anyhow!("{}: {name} vanished", path.display()))?;
        out.push((name.clone(), t.to_device(device)?));
    }
    Ok(out)
}
