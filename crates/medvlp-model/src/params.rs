//! Parameter store: named `Var`s, deterministic initialisation, safetensors import/export.
//!
//! Initial values depend only on `(seed, parameter name)`, never on construction order or on a
//! thread RNG (candle's CPU device cannot be seeded), so the same config and seed give the same
//! model. Tensors present before a model is built (loaded from a checkpoint) are used as they are
//! and reported as loaded; the others are initialised and reported as new.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Inner {
    vars: BTreeMap<String, Var>,
    /// Names that were loaded from a file and not yet claimed by a model.
    preloaded: BTreeSet<String>,
    /// Names a model asked for that had been loaded.
    loaded: BTreeSet<String>,
    /// Names a model asked for that had to be initialised.
    initialised: BTreeSet<String>,
}

/// What a build on top of loaded weights used, created and left unused.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    pub initialised: Vec<String>,
    pub unused: Vec<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tensors loaded, {} newly initialised, {} in the file unused",
            self.loaded.len(),
            self.initialised.len(),
            self.unused.len()
        )
    }
}

#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    seed: u64,
    dtype: DType,
    device: Device,
    /// When false (inference), models receive detached tensors: no autograd bookkeeping.
    trainable: bool,
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed: stable across platforms and releases.
    let mut h: u64 = 0xcbf29ce484222325 ^ seed.wrapping_mul(0x9E3779B97F4A7C15);
    for b in name.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn init_values(shape: &Shape, init: &Init, seed: u64) -> Vec<f64> {
    let n = shape.elem_count();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut normal = |mean: f64, std: f64| -> Vec<f64> {
        (0..n)
            .map(|_| {
                // Box-Muller; 1 - u keeps the log argument in (0, 1].
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect()
    };
    match init {
        Init::Const(v) => vec![*v; n],
        Init::Randn { mean, stdev } => normal(*mean, *stdev),
        Init::Uniform { lo, up } => (0..n).map(|_| lo + (up - lo) * rng.random::<f64>()).collect(),
        Init::Kaiming { dist, fan, non_linearity } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Normal => normal(0.0, std),
                candle_nn::init::NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    (0..n).map(|_| -b + 2.0 * b * rng.random::<f64>()).collect()
                }
            }
        }
    }
}

impl ParamStore {
    pub fn new(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            seed,
            dtype,
            device: device.clone(),
            trainable: true,
        }
    }

    /// A store for inference: parameters reach the model detached from autograd, so forward
    /// passes record no backward graph.
    pub fn frozen(mut self) -> Self {
        self.trainable = false;
        self
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A `VarBuilder` whose `get` returns (and creates on first use) this store's variables.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), self.dtype, self.device.clone())
    }

    /// All variables, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.inner.lock().unwrap().vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.inner.lock().unwrap().vars.get(name).cloned()
    }

    pub fn num_params(&self) -> usize {
        self.inner.lock().unwrap().vars.values().map(|v| v.elem_count()).sum()
    }

    /// Load tensors from safetensors files before building a model. `rename` maps a name in the
    /// file to the store's name, or drops it (`None`). Returns how many tensors were taken.
    pub fn preload_safetensors(
        &self,
        path: &Path,
        rename: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<usize> {
        let tensors = candle_core::safetensors::load(path, &self.device)
            .map_err(|e| anyhow::anyhow!("reading weights {}: {e}", path.display()))?;
        self.preload(tensors, rename)
    }

    pub fn preload(
        &self,
        tensors: HashMap<String, Tensor>,
        rename: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<usize> {
        let mut inner = self.inner.lock().unwrap();
        let mut n = 0;
        for (name, t) in tensors {
            let Some(to) = rename(&name) else { continue };
            let t = t.to_dtype(self.dtype)?;
            inner.vars.insert(to.clone(), Var::from_tensor(&t)?);
            inner.preloaded.insert(to);
            n += 1;
        }
        Ok(n)
    }

    /// Which tensors the model build took from the loaded weights, which it initialised, and which
    /// loaded ones nothing asked for.
    pub fn load_report(&self) -> LoadReport {
        let inner = self.inner.lock().unwrap();
        LoadReport {
            loaded: inner.loaded.iter().cloned().collect(),
            initialised: inner.initialised.iter().cloned().collect(),
            unused: inner.preloaded.iter().cloned().collect(),
        }
    }

    /// Drop loaded tensors that no model asked for (e.g. a pooler or an MLM head we do not use).
    pub fn drop_unused(&self) {
        let mut inner = self.inner.lock().unwrap();
        let unused: Vec<String> = inner.preloaded.iter().cloned().collect();
        for n in unused {
            inner.vars.remove(&n);
        }
        inner.preloaded.clear();
    }

    /// Copy values from another store for every name both hold (shapes must agree).
    pub fn copy_from(&self, other: &ParamStore) -> Result<()> {
        let src = other.vars();
        let inner = self.inner.lock().unwrap();
        for (name, v) in src {
            if let Some(dst) = inner.vars.get(&name) {
                dst.set(&v.as_tensor().to_device(&self.device)?.to_dtype(self.dtype)?)?;
            }
        }
        Ok(())
    }
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(v) = inner.vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("parameter {name}: expected shape {s:?}, found {:?}", v.shape());
            }
            let t = if self.trainable { v.as_tensor().clone() } else { v.as_detached_tensor() };
            if inner.preloaded.remove(name) {
                inner.loaded.insert(name.to_string());
            }
            return t.to_dtype(dtype)?.to_device(dev);
        }
        let vals = init_values(&s, &h, name_seed(self.seed, name));
        let t = Tensor::from_vec(vals, s, &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?;
        let v = Var::from_tensor(&t)?;
        let t = if self.trainable { v.as_tensor().clone() } else { v.as_detached_tensor() };
        inner.vars.insert(name.to_string(), v);
        inner.initialised.insert(name.to_string());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self.inner.lock().unwrap().vars.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("parameter {name} does not exist"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.lock().unwrap().vars.contains_key(name)
    }
}
