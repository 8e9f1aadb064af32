//! From manifests to training batches: the paired loader (images decoded and preprocessed in
//! parallel, deterministic in (seed, epoch, index)), image-only samples with disease-kind prompts,
//! text-only reports, tokenisation with word ids, and entity spans mapped to word pieces.
//!
//! Micro-batch `k` of a run is a pure function of `k` and the seed, so a resumed run sees the same
//! batches: the paired loader's epoch is `k / batches_per_epoch` and its batch `k % batches_per_epoch`.

use crate::recipe::{Batch, TextBatch};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use medvlp_data::dataset::{read_manifest, Split, Study};
use medvlp_data::image::preprocess::PreprocessConfig;
use medvlp_data::loader::{EpochIter, Loader, LoaderConfig};
use medvlp_data::text::labels::{label_vector, CHEXPERT_14};
use medvlp_data::text::{disease_prompt, extract_entities, Entity, TextAugment};
use medvlp_data::tokenizer::Tokenizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Stream {
    loader: Loader,
    iter: Option<(u64, usize, EpochIter)>,
}

impl Stream {
    /// Batch `k` of the endless sequence of epochs.
    fn batch(&mut self, k: u64) -> Result<medvlp_data::loader::Batch> {
        let bpe = self.loader.batches_per_epoch().max(1) as u64;
        let (epoch, idx) = (k / bpe, (k % bpe) as usize);
        let reuse = matches!(&self.iter, Some((e, i, _)) if *e == epoch && *i == idx);
        if !reuse {
            self.iter = Some((epoch, idx, self.loader.epoch(epoch, idx)));
        }
        let (e, i, it) = self.iter.as_mut().unwrap();
        let b = it.next().with_context(|| format!("epoch {e} ended early (bad samples?)"))??;
        *i += 1;
        Ok(b)
    }
}

pub struct DataPipeline {
    pub tokenizer: Tokenizer,
    paired: Stream,
    image_only: Option<Stream>,
    text_only: Vec<Study>,
    n_text_only: usize,
    text_augment: TextAugment,
    seed: u64,
    device: Device,
    shard: (usize, usize),
}

pub struct PipelineConfig<'a> {
    pub manifest: &'a Path,
    pub root: Option<&'a Path>,
    pub image_only: Option<&'a Path>,
    pub text_only: Option<&'a Path>,
    pub split: Split,
    pub batch_size: usize,
    pub image_only_rate: f64,
    pub text_only_rate: f64,
    /// Applied to the reports of paired and text-only rows (not to disease prompts).
    pub text_augment: TextAugment,
    pub max_bad_fraction: f64,
    pub threads: usize,
    pub train: bool,
    pub seed: u64,
    /// Data parallel `(rank, world size)`: `batch_size` is per rank and each rank gets its share
    /// of every global batch (`(0, 1)`: one process).
    pub shard: (usize, usize),
}

fn root_of(manifest: &Path, root: Option<&Path>) -> PathBuf {
    root.map(|r| r.to_path_buf())
        .unwrap_or_else(|| manifest.parent().map(|p| p.to_path_buf()).unwrap_or_default())
}

fn stream(
    manifest: &Path,
    root: Option<&Path>,
    split: Split,
    pp: &PreprocessConfig,
    batch: usize,
    c: &PipelineConfig,
    salt: u64,
) -> Result<Stream> {
    let studies = read_manifest(manifest)?;
    let items = Loader::items_from_studies(&studies, &root_of(manifest, root), Some(split));
    if items.is_empty() {
        anyhow::bail!("{}: no {} studies with images", manifest.display(), split.as_str());
    }
    let cfg = LoaderConfig {
        batch_size: batch,
        seed: c.seed ^ salt,
        shuffle: c.train,
        train: c.train,
        max_bad_fraction: c.max_bad_fraction,
        threads: c.threads,
        shard: c.shard,
        ..Default::default()
    };
    let loader = Loader::new(items, pp.clone(), cfg)?;
    if loader.batches_per_epoch() == 0 {
        anyhow::bail!(
            "{}: {} studies are fewer than one global batch ({batch} x {} ranks)",
            manifest.display(),
            loader.len(),
            c.shard.1
        );
    }
    Ok(Stream { loader, iter: None })
}

impl DataPipeline {
    pub fn new(
        c: &PipelineConfig,
        pp: &PreprocessConfig,
        tokenizer: Tokenizer,
        device: &Device,
    ) -> Result<Self> {
        let n_img_only = (c.image_only_rate * c.batch_size as f64).round() as usize;
        let n_text_only = (c.text_only_rate * c.batch_size as f64).round() as usize;
        let paired = stream(c.manifest, c.root, c.split, pp, c.batch_size, c, 0)?;
        let image_only = match (c.image_only, n_img_only) {
            (Some(p), n) if n > 0 => Some(stream(p, c.root, c.split, pp, n, c, 0x1111)?),
            _ => None,
        };
        let text_only = match (c.text_only, n_text_only) {
            (Some(p), n) if n > 0 => read_manifest(p)?
                .into_iter()
                .filter(|s| s.split.is_none_or(|sp| sp == c.split))
                .filter(|s| {
                    s.text
                        .as_deref()
                        .or(s.sections.get("impression").map(|x| x.as_str()))
                        .is_some_and(|t| !t.trim().is_empty())
                })
                .collect(),
            _ => vec![],
        };
        Ok(Self {
            tokenizer,
            paired,
            image_only,
            n_text_only: if text_only.is_empty() { 0 } else { n_text_only },
            text_only,
            text_augment: c.text_augment,
            seed: c.seed,
            device: device.clone(),
            shard: (c.shard.0, c.shard.1.max(1)),
        })
    }

    /// Distinct bad samples of the paired and image-only streams, first met first.
    pub fn bad_samples(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        for s in std::iter::once(&self.paired).chain(self.image_only.as_ref()) {
            out.extend(s.loader.stats.bad_samples.lock().map(|v| v.clone()).unwrap_or_default());
        }
        out
    }

    pub fn paired_len(&self) -> usize {
        self.paired.loader.len()
    }

    /// Micro-batch `k`.
    pub fn batch(&mut self, k: u64) -> Result<Batch> {
        let pb = self.paired.batch(k)?;
        let mut texts: Vec<String> = vec![];
        let mut labels: Vec<BTreeMap<String, i8>> = vec![];
        let mut images = pb.images.clone();
        let shape = pb.sample_shape;
        for ((t, l), id) in pb.texts.iter().zip(&pb.labels).zip(&pb.ids) {
            texts.push(self.augment(t.as_deref().unwrap_or_default(), k, id));
            labels.push(l.clone());
        }
        let n_paired = pb.len();
        let mut n_image_only = 0;
        if let Some(s) = self.image_only.as_mut() {
            let ib = s.batch(k)?;
            for (j, l) in ib.labels.iter().enumerate() {
                texts.push(disease_prompt(l, self.seed ^ (k << 16) ^ j as u64));
                labels.push(l.clone());
            }
            images.extend_from_slice(&ib.images);
            n_image_only = ib.len();
        }
        let mut n_text_only = 0;
        let n = self.text_only.len();
        // Batches per pass over the text-only pool; None when the batch takes no text-only rows.
        // Data parallel: the global batch takes `n_text_only * world`, this rank its share.
        let (rank, world) = self.shard;
        if let Some(per_epoch) = n.checked_div(self.n_text_only * world) {
            let per_epoch = per_epoch.max(1) as u64;
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
                self.seed ^ 0x2222 ^ (k / per_epoch),
            ));
            let start =
                ((k % per_epoch) as usize) * self.n_text_only * world + rank * self.n_text_only;
            for &i in order.iter().cycle().skip(start).take(self.n_text_only) {
                let s = &self.text_only[i];
                let t = s.text.clone().or_else(|| s.findings_impression()).unwrap_or_default();
                texts.push(self.augment(&t, k, &s.id));
                labels.push(s.labels.clone());
                n_text_only += 1;
            }
        }
        let n_img = n_paired + n_image_only;
        let pixels = Tensor::from_vec(images, (n_img, shape[0], shape[1], shape[2]), &self.device)?;
        let text = self.encode(&texts)?;
        let lab: Vec<f32> = labels.iter().flat_map(label_vector).collect();
        Ok(Batch {
            pixels: Some(pixels),
            labels: Some(Tensor::from_vec(lab, (texts.len(), CHEXPERT_14.len()), &self.device)?),
            text,
            n_paired,
            n_image_only,
            n_text_only,
            first_rows: [
                rank * self.paired.loader.config().batch_size,
                rank * self.image_only.as_ref().map_or(0, |s| s.loader.config().batch_size),
                rank * self.n_text_only,
            ],
        })
    }

    /// A training report after sentence augmentation: a pure function of (seed, micro-batch,
    /// study), so batches stay reproducible across resumes and data-parallel ranks.
    fn augment(&self, text: &str, k: u64, id: &str) -> String {
        let seed = medvlp_data::hash::hash64(self.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15), id);
        self.text_augment.apply(text, seed)
    }

    /// Tokenise with word ids and entity word pieces.
    pub fn encode(&self, texts: &[String]) -> Result<TextBatch> {
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let b = self.tokenizer.encode_batch(&refs)?;
        let mut entities = Vec::with_capacity(b.batch);
        let mut word_ids = Vec::with_capacity(b.batch);
        for (i, t) in texts.iter().enumerate() {
            let offs = b.row(&b.offsets, i);
            let ents: Vec<Vec<usize>> = extract_entities(t)
                .iter()
                .map(|&Entity { start: s, end: e, .. }| {
                    (0..b.len)
                        .filter(|&k| offs[k].1 > offs[k].0 && offs[k].0 < e && offs[k].1 > s)
                        .collect::<Vec<_>>()
                })
                .filter(|v: &Vec<usize>| !v.is_empty())
                .collect();
            entities.push(ents);
            word_ids.push(b.row(&b.word_ids, i).to_vec());
        }
        Ok(TextBatch {
            ids: Tensor::from_vec(b.input_ids.clone(), (b.batch, b.len), &self.device)?,
            mask: Tensor::from_vec(
                b.attention_mask.iter().map(|&m| m as f32).collect::<Vec<_>>(),
                (b.batch, b.len),
                &self.device,
            )?,
            word_ids,
            entities,
            mask_id: self.tokenizer.mask_id,
        })
    }
}

/// Assembles micro-batch `k + 1` (texts, tokenisation, entity spans, tensors on the device) on its
/// own thread while step `k` runs, so the device does not wait for the host between steps; the
/// loader's worker threads already decode and augment ahead of it. Batches are a pure function of
/// `k`, so asking for them in any order gives what [`DataPipeline::batch`] gives: an out-of-order
/// request (a resume) is assembled on the spot, and the guess for the next one is dropped.
pub struct Prefetcher {
    data: std::sync::Arc<std::sync::Mutex<DataPipeline>>,
    requests: Option<std::sync::mpsc::Sender<u64>>,
    results: std::sync::mpsc::Receiver<(u64, Result<Batch>)>,
    /// The batch the worker is assembling (or has assembled) for us.
    pending: Option<u64>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    pub fn new(data: DataPipeline) -> Self {
        let data = std::sync::Arc::new(std::sync::Mutex::new(data));
        let (req_tx, req_rx) = std::sync::mpsc::channel::<u64>();
        let (res_tx, res_rx) = std::sync::mpsc::sync_channel(1);
        let shared = data.clone();
        let worker = std::thread::Builder::new()
            .name("medvlp-batches".into())
            .spawn(move || {
                for k in req_rx {
                    let b = match shared.lock() {
                        Ok(mut d) => d.batch(k),
                        Err(_) => {
                            Err(anyhow::anyhow!("the data pipeline failed on another thread"))
                        }
                    };
                    if res_tx.send((k, b)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the batch thread");
        Self { data, requests: Some(req_tx), results: res_rx, pending: None, worker: Some(worker) }
    }

    /// Micro-batch `k`; starts assembling `k + 1`.
    pub fn batch(&mut self, k: u64) -> Result<Batch> {
        let mut got = None;
        if let Some(p) = self.pending.take() {
            let (done, b) = self.results.recv().context("the batch thread stopped")?;
            debug_assert_eq!(done, p);
            if done == k {
                got = Some(b);
            }
        }
        let b = match got {
            Some(b) => b,
            None => self.lock()?.batch(k),
        };
        if let Some(tx) = &self.requests {
            if tx.send(k + 1).is_ok() {
                self.pending = Some(k + 1);
            }
        }
        b
    }

    /// Runs `f` on the pipeline (e.g. to read its bad-sample list).
    pub fn with<T>(&self, f: impl FnOnce(&DataPipeline) -> T) -> Result<T> {
        Ok(f(&*self.lock()?))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, DataPipeline>> {
        self.data.lock().map_err(|_| anyhow::anyhow!("the data pipeline failed on another thread"))
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.requests = None; // ends the worker's loop
        if self.pending.take().is_some() {
            let _ = self.results.recv();
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
