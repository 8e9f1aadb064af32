//! The training/evaluation loader: rayon-parallel decode + preprocess into a bounded
//! crossbeam-channel prefetch queue.
//!
//! Determinism: the order of an epoch is a seeded permutation of (seed, epoch), and every
//! sample's augmentation and image choice come from [`sample_rng`]`(seed, epoch, index)`, so a
//! run resumed at (epoch, batch) sees exactly the batches it would have seen.
//! Bad samples (missing file, corrupt image, truncated DICOM, empty report when text is
//! required) are skipped, counted and reported with their path; the epoch aborts with an error
//! once they exceed `max_bad_fraction` of the dataset. Batches shrink by the skipped samples.
//! An optional [`Cache`] stores the resized images (16-bit) in one memory-mapped file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::dataset::{Split, Study};
use crate::image::preprocess::{self, sample_rng, PreprocessConfig};
use crate::image::{decode_file_scaled, GrayImage};

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Training mode: augmentation on, random image of a multi-image study.
    pub train: bool,
    /// Batches decoded ahead of the consumer (channel bound).
    pub prefetch: usize,
    /// Abort the epoch when bad samples exceed this fraction of the dataset.
    pub max_bad_fraction: f64,
    /// Treat an empty report as a bad sample.
    pub require_text: bool,
    /// rayon threads for decoding; 0 = all cores.
    pub threads: usize,
    /// Data parallel `(rank, world size)`: each global batch is `batch_size * world` samples of
    /// the epoch's order and this loader yields the rank's contiguous `batch_size` of them, so
    /// the ranks see disjoint samples that cover the epoch (a last global batch too short to give
    /// every rank a full share is dropped). `(0, 1)`: the whole batch.
    pub shard: (usize, usize),
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 32,
            seed: 0,
            shuffle: true,
            train: true,
            prefetch: 4,
            max_bad_fraction: 0.01,
            require_text: false,
            threads: 0,
            shard: (0, 1),
        }
    }
}

/// One dataset item: a study with its candidate images.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub images: Vec<PathBuf>,
    pub text: Option<String>,
    pub labels: BTreeMap<String, i8>,
}

/// A batch: images as one contiguous `[B, C, H, W]` buffer.
#[derive(Debug, Clone)]
pub struct Batch {
    pub epoch: u64,
    pub batch_index: usize,
    /// Dataset indices of the samples.
    pub indices: Vec<usize>,
    pub ids: Vec<String>,
    pub images: Vec<f32>,
    pub texts: Vec<Option<String>>,
    pub labels: Vec<BTreeMap<String, i8>>,
    /// Per-sample shape `[C, H, W]`.
    pub sample_shape: [usize; 3],
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Bad samples seen so far (shared between the producer and the caller). Each distinct sample
/// counts once, however many epochs (or validation passes) meet it again.
#[derive(Debug, Default)]
pub struct LoaderStats {
    pub loaded: AtomicUsize,
    /// Distinct bad samples.
    pub bad: AtomicUsize,
    /// (path or id, reason) of each distinct bad sample, in the order they were first met.
    pub bad_samples: Mutex<Vec<(String, String)>>,
    seen: Mutex<std::collections::HashSet<usize>>,
}

/// More distinct bad samples than `max_bad_fraction` of a loader's samples allows.
#[derive(Debug, thiserror::Error)]
#[error(
    "{count} distinct bad samples exceed max_bad_fraction {fraction} of {total} samples: {}",
    list(samples)
)]
pub struct BadSampleBudget {
    pub count: usize,
    pub total: usize,
    pub fraction: f64,
    /// (path or id, reason), first met first.
    pub samples: Vec<(String, String)>,
}

fn list(samples: &[(String, String)]) -> String {
    let mut s: Vec<String> = samples.iter().take(5).map(|(p, r)| format!("{p} ({r})")).collect();
    if samples.len() > 5 {
        s.push(format!("and {} more", samples.len() - 5));
    }
    s.join("; ")
}

pub struct Loader {
    items: Arc<Vec<Item>>,
    pp: Arc<PreprocessConfig>,
    cfg: LoaderConfig,
    cache: Option<Arc<Cache>>,
    pool: Arc<rayon::ThreadPool>,
    pub stats: Arc<LoaderStats>,
}

impl Loader {
    /// Items from manifest studies (optionally one split); image paths are joined to `root`.
    /// Studies without images are left out (they cannot be samples).
    pub fn items_from_studies(studies: &[Study], root: &Path, split: Option<Split>) -> Vec<Item> {
        studies
            .iter()
            .filter(|s| split.is_none() || s.split == split)
            .filter(|s| !s.images.is_empty())
            .map(|s| Item {
                id: s.id.clone(),
                images: s.images.iter().map(|i| root.join(&i.path)).collect(),
                text: s.text.clone().or_else(|| s.findings_impression()),
                labels: s.labels.clone(),
            })
            .collect()
    }

    pub fn new(items: Vec<Item>, pp: PreprocessConfig, cfg: LoaderConfig) -> Result<Self> {
        pp.validate()?;
        if cfg.batch_size == 0 {
            bail!("batch_size must be > 0");
        }
        if !(0.0..=1.0).contains(&cfg.max_bad_fraction) {
            bail!("max_bad_fraction must be in [0, 1]");
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(cfg.threads).build()?;
        Ok(Loader {
            items: Arc::new(items),
            pp: Arc::new(pp),
            cfg,
            cache: None,
            pool: Arc::new(pool),
            stats: Arc::new(LoaderStats::default()),
        })
    }

    /// Use a preprocessed cache (built with [`Cache::build`] for these items and config).
    pub fn with_cache(mut self, cache: Cache) -> Result<Self> {
        cache.check(&self.items, &self.pp)?;
        self.cache = Some(Arc::new(cache));
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    pub fn batches_per_epoch(&self) -> usize {
        match self.cfg.shard {
            (_, w) if w > 1 => self.items.len() / (self.cfg.batch_size * w),
            _ => self.items.len().div_ceil(self.cfg.batch_size),
        }
    }

    /// The dataset indices of batch `bi` of an epoch whose order is `order` (this rank's share).
    fn batch_indices(cfg: &LoaderConfig, order: &[usize], bi: usize) -> Option<Vec<usize>> {
        let (rank, world) = cfg.shard;
        let world = world.max(1);
        let global = cfg.batch_size * world;
        let start = bi * global;
        if world == 1 {
            return (start < order.len())
                .then(|| order[start..(start + global).min(order.len())].to_vec());
        }
        let mine = start + rank * cfg.batch_size;
        (start + global <= order.len()).then(|| order[mine..mine + cfg.batch_size].to_vec())
    }

    /// Dataset indices in the order of `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        if self.cfg.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
            rng.set_stream(epoch.wrapping_add(1));
            order.shuffle(&mut rng);
        }
        order
    }

    /// Load one sample (public for tests and `preview`-like tools).
    pub fn load_sample(&self, epoch: u64, index: usize) -> Result<Vec<f32>, (String, String)> {
        load_one(&self.items, &self.pp, &self.cfg, self.cache.as_deref(), epoch, index)
    }

    /// Iterate the batches of `epoch`, starting at `start_batch` (for resuming).
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> EpochIter {
        let (tx, rx) = crossbeam_channel::bounded(self.cfg.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let order = self.epoch_order(epoch);
        let (items, pp, cfg, cache, pool, stats) = (
            self.items.clone(),
            self.pp.clone(),
            self.cfg.clone(),
            self.cache.clone(),
            self.pool.clone(),
            self.stats.clone(),
        );
        let stop2 = stop.clone();
        // Each rank meets its share of the bad samples.
        let max_bad = (cfg.max_bad_fraction * items.len() as f64 / cfg.shard.1.max(1) as f64)
            .floor() as usize;
        let handle = std::thread::spawn(move || {
            let shape = [pp.channels as usize, pp.image_size as usize, pp.image_size as usize];
            for bi in start_batch.. {
                let Some(chunk) = Loader::batch_indices(&cfg, &order, bi) else { return };
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let results: Vec<(usize, SampleResult)> = pool.install(|| {
                    chunk
                        .par_iter()
                        .map(|&i| (i, load_one(&items, &pp, &cfg, cache.as_deref(), epoch, i)))
                        .collect()
                });
                let mut b = Batch {
                    epoch,
                    batch_index: bi,
                    indices: vec![],
                    ids: vec![],
                    images: Vec::with_capacity(chunk.len() * pp.sample_len()),
                    texts: vec![],
                    labels: vec![],
                    sample_shape: shape,
                };
                for (i, r) in results {
                    match r {
                        Ok(x) => {
                            let it = &items[i];
                            b.indices.push(i);
                            b.ids.push(it.id.clone());
                            b.images.extend_from_slice(&x);
                            b.texts.push(it.text.clone());
                            b.labels.push(it.labels.clone());
                            stats.loaded.fetch_add(1, Ordering::Relaxed);
                        }
                        Err((path, reason)) => {
                            let first = stats.seen.lock().map(|mut s| s.insert(i)).unwrap_or(true);
                            if !first {
                                continue;
                            }
                            tracing::warn!("skipping bad sample {path}: {reason}");
                            let n = stats.bad.fetch_add(1, Ordering::Relaxed) + 1;
                            stats
                                .bad_samples
                                .lock()
                                .map(|mut v| v.push((path.clone(), reason.clone())))
                                .ok();
                            if n > max_bad {
                                let samples =
                                    stats.bad_samples.lock().map(|v| v.clone()).unwrap_or_default();
                                let _ = tx.send(Err(BadSampleBudget {
                                    count: n,
                                    total: items.len(),
                                    fraction: cfg.max_bad_fraction,
                                    samples,
                                }
                                .into()));
                                return;
                            }
                        }
                    }
                }
                if !b.is_empty() && tx.send(Ok(b)).is_err() {
                    return;
                }
            }
        });
        EpochIter { rx, stop, handle: Some(handle) }
    }
}

/// A preprocessed sample, or (path, reason) of a bad one.
type SampleResult = Result<Vec<f32>, (String, String)>;

fn load_one(
    items: &[Item],
    pp: &PreprocessConfig,
    cfg: &LoaderConfig,
    cache: Option<&Cache>,
    epoch: u64,
    index: usize,
) -> SampleResult {
    let it = &items[index];
    if it.images.is_empty() {
        return Err((it.id.clone(), "study has no image".into()));
    }
    if cfg.require_text && it.text.as_deref().is_none_or(|t| t.trim().is_empty()) {
        return Err((it.id.clone(), "empty report".into()));
    }
    let mut rng = sample_rng(cfg.seed, epoch, index as u64);
    let which =
        if cfg.train && it.images.len() > 1 { rng.random_range(0..it.images.len()) } else { 0 };
    let path = &it.images[which];
    let img = match cache.and_then(|c| c.get(index, which)) {
        Some(Ok(img)) => img,
        Some(Err(reason)) => return Err((path.display().to_string(), reason)),
        None => {
            let d = decode_file_scaled(path, Some(pp.resize_shorter))
                .map_err(|e| (path.display().to_string(), e.reason))?;
            d.image
        }
    };
    let out = crate::guard::catch_quiet(|| {
        if cfg.train {
            preprocess::preprocess(&img, pp, Some(&mut rng))
        } else {
            preprocess::preprocess_eval(&img, pp)
        }
    })
    .map_err(|msg| (path.display().to_string(), format!("preprocessing panicked: {msg}")))?;
    Ok(out)
}

/// Batches of one epoch, in order. Dropping it stops the producer.
pub struct EpochIter {
    rx: crossbeam_channel::Receiver<Result<Batch>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        self.rx.recv().ok()
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Drain so a producer blocked on a full channel can see the stop flag.
        while self.rx.try_recv().is_ok() {}
        if let Some(h) = self.handle.take() {
            while !h.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = h.join();
        }
    }
}

// ---------------- preprocessed cache ----------------

const MAGIC: &[u8; 8] = b"MVLPCCH1";

/// One memory-mapped file of resized (shorter side = `resize_shorter`) 16-bit images, every
/// image of every item. Layout: magic, u64 header length, JSON header, then per image
/// `(offset u64, width u32, height u32)` entries and the u16 pixels. A failed image has width 0
/// and its error text in the header.
pub struct Cache {
    map: memmap2::Mmap,
    header: CacheHeader,
    table_at: usize,
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheHeader {
    resize_shorter: u32,
    fingerprint: u64,
    /// image start index per item (len = items + 1)
    item_start: Vec<usize>,
    errors: BTreeMap<usize, String>,
}

fn fingerprint(items: &[Item]) -> u64 {
    let mut s = String::new();
    for it in items {
        for p in &it.images {
            s.push_str(&p.to_string_lossy());
            s.push('\n');
        }
    }
    crate::dataset::hash64(0, &s)
}

impl Cache {
    /// Decode and resize every image of `items` (in parallel) into `path`.
    pub fn build(items: &[Item], pp: &PreprocessConfig, path: &Path) -> Result<Cache> {
        let mut item_start = vec![0usize];
        let mut all: Vec<&Path> = Vec::new();
        for it in items {
            all.extend(it.images.iter().map(|p| p.as_path()));
            item_start.push(all.len());
        }
        let tmp = path.with_extension("partial");
        let f =
            File::create(&tmp).with_context(|| format!("cannot create cache {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut errors = BTreeMap::new();
        let mut table: Vec<(u64, u32, u32)> = Vec::with_capacity(all.len());
        let mut pixels_at = 0u64;
        // Pixels are written first to a side file position; the table goes before them, so
        // collect the table, then write header + table + pixels from a second temp file.
        let pix_tmp = path.with_extension("pixels.partial");
        let mut pw = BufWriter::with_capacity(
            1 << 20,
            File::create(&pix_tmp)
                .with_context(|| format!("cannot create {}", pix_tmp.display()))?,
        );
        for (ci, chunk) in all.chunks(256).enumerate() {
            let res: Vec<Result<GrayImage, String>> = chunk
                .par_iter()
                .map(|p| {
                    decode_file_scaled(p, Some(pp.resize_shorter))
                        .map(|d| preprocess::resize_shorter(&d.image, pp.resize_shorter))
                        .map_err(|e| e.to_string())
                })
                .collect();
            for (j, r) in res.into_iter().enumerate() {
                match r {
                    Ok(img) => {
                        table.push((pixels_at, img.width, img.height));
                        for v in &img.data {
                            pw.write_all(
                                &((v.clamp(0.0, 1.0) * 65535.0).round() as u16).to_le_bytes(),
                            )?;
                        }
                        pixels_at += img.data.len() as u64 * 2;
                    }
                    Err(e) => {
                        errors.insert(ci * 256 + j, e);
                        table.push((pixels_at, 0, 0));
                    }
                }
            }
        }
        pw.flush()?;
        drop(pw);
        let header = CacheHeader {
            resize_shorter: pp.resize_shorter,
            fingerprint: fingerprint(items),
            item_start,
            errors,
        };
        let hj = serde_json::to_vec(&header)?;
        w.write_all(MAGIC)?;
        w.write_all(&(hj.len() as u64).to_le_bytes())?;
        w.write_all(&hj)?;
        for (o, wd, ht) in &table {
            w.write_all(&o.to_le_bytes())?;
            w.write_all(&wd.to_le_bytes())?;
            w.write_all(&ht.to_le_bytes())?;
        }
        std::io::copy(&mut File::open(&pix_tmp)?, &mut w)?;
        w.flush()?;
        drop(w);
        std::fs::remove_file(&pix_tmp).ok();
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move cache into {}", path.display()))?;
        Cache::open(path)
    }

    pub fn open(path: &Path) -> Result<Cache> {
        let f =
            File::open(path).with_context(|| format!("cannot open cache {}", path.display()))?;
        // SAFETY: the cache file is written once (renamed into place) and only read afterwards.
        let map = unsafe { memmap2::Mmap::map(&f) }
            .with_context(|| format!("cannot map cache {}", path.display()))?;
        if map.len() < 16 || &map[..8] != MAGIC {
            bail!("{}: not a medvlp cache file", path.display());
        }
        let hl = u64::from_le_bytes(map[8..16].try_into().unwrap()) as usize;
        if 16 + hl > map.len() {
            bail!("{}: truncated cache header", path.display());
        }
        let header: CacheHeader = serde_json::from_slice(&map[16..16 + hl])
            .with_context(|| format!("{}: bad cache header", path.display()))?;
        let n = *header.item_start.last().unwrap_or(&0);
        let table_at = 16 + hl;
        if table_at + n * 16 > map.len() {
            bail!("{}: truncated cache table", path.display());
        }
        Ok(Cache { map, header, table_at, path: path.to_path_buf() })
    }

    fn check(&self, items: &[Item], pp: &PreprocessConfig) -> Result<()> {
        if self.header.resize_shorter != pp.resize_shorter
            || self.header.fingerprint != fingerprint(items)
        {
            bail!(
                "cache {} was built for other images or another resize_shorter; rebuild it",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Image `which` of item `index`: None when out of range.
    pub fn get(&self, index: usize, which: usize) -> Option<Result<GrayImage, String>> {
        let k = self.header.item_start.get(index)? + which;
        if k >= *self.header.item_start.get(index + 1)? {
            return None;
        }
        if let Some(e) = self.header.errors.get(&k) {
            return Some(Err(format!("(cached) {e}")));
        }
        let e = &self.map[self.table_at + k * 16..self.table_at + k * 16 + 16];
        let off = u64::from_le_bytes(e[..8].try_into().unwrap()) as usize;
        let (w, h) = (
            u32::from_le_bytes(e[8..12].try_into().unwrap()),
            u32::from_le_bytes(e[12..16].try_into().unwrap()),
        );
        let start = self.table_at + (*self.header.item_start.last().unwrap()) * 16 + off;
        let len = w as usize * h as usize * 2;
        let Some(bytes) = self.map.get(start..start + len) else {
            return Some(Err(format!("cache {} is truncated", self.path.display())));
        };
        let data = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as f32 * (1.0 / 65535.0))
            .collect();
        Some(Ok(GrayImage::new(w, h, data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_items(dir: &Path, n: usize, bad: &[usize]) -> Vec<Item> {
        (0..n)
            .map(|i| {
                let p = dir.join(format!("img{i}.png"));
                if bad.contains(&i) {
                    std::fs::write(&p, b"\x89PNG\r\n\x1a\nbroken").unwrap();
                } else {
                    let img = image::GrayImage::from_fn(40 + i as u32, 36, |x, y| {
                        image::Luma([((x * 5 + y * 3 + i as u32 * 17) % 256) as u8])
                    });
                    img.save(&p).unwrap();
                }
                Item {
                    id: format!("s{i}"),
                    images: vec![p],
                    text: Some(format!("report {i}")),
                    labels: BTreeMap::new(),
                }
            })
            .collect()
    }

    fn pp() -> PreprocessConfig {
        PreprocessConfig {
            image_size: 16,
            resize_shorter: 20,
            channels: 1,
            mean: vec![0.5],
            std: vec![0.25],
            ..Default::default()
        }
    }

    fn collect(l: &Loader, epoch: u64, start: usize) -> Vec<Batch> {
        l.epoch(epoch, start).collect::<Result<Vec<_>>>().unwrap()
    }

    #[test]
    fn deterministic_order_augmentation_and_resume() {
        let d = tempfile::tempdir().unwrap();
        let items = make_items(d.path(), 10, &[]);
        let cfg = LoaderConfig { batch_size: 3, seed: 5, threads: 2, ..Default::default() };
        let l = Loader::new(items.clone(), pp(), cfg.clone()).unwrap();
        let a = collect(&l, 0, 0);
        assert_eq!(a.len(), 4);
        assert_eq!(a.iter().map(|b| b.len()).sum::<usize>(), 10);
        assert_eq!(a[0].images.len(), 3 * 16 * 16);
        let l2 =
            Loader::new(items.clone(), pp(), LoaderConfig { threads: 1, ..cfg.clone() }).unwrap();
        let b = collect(&l2, 0, 0);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.indices, y.indices);
            assert_eq!(x.images, y.images, "same augmentation regardless of thread count");
        }
        let resumed = collect(&l2, 0, 2);
        assert_eq!(resumed[0].indices, a[2].indices);
        assert_eq!(resumed[0].images, a[2].images);
        let e1 = collect(&l, 1, 0);
        assert_ne!(
            e1.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>(),
            a.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>()
        );
        let mut all: Vec<usize> = e1.iter().flat_map(|b| b.indices.clone()).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    /// Data-parallel shards: for each world size, the ranks' batches are disjoint, each rank's
    /// share of a global batch is the matching slice of the one-process global batch, and together
    /// they cover the epoch up to the last incomplete global batch.
    #[test]
    fn shards_are_disjoint_and_cover_the_epoch() {
        let dir = std::env::temp_dir().join(format!("medvlp-loader-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let items = make_items(&dir, 23, &[]);
        for world in [2usize, 3, 4] {
            let whole = Loader::new(
                items.clone(),
                pp(),
                LoaderConfig { batch_size: 2 * world, seed: 5, threads: 1, ..Default::default() },
            )
            .unwrap();
            let mut seen = std::collections::BTreeSet::new();
            let mut per_rank = vec![];
            for rank in 0..world {
                let l = Loader::new(
                    items.clone(),
                    pp(),
                    LoaderConfig {
                        batch_size: 2,
                        seed: 5,
                        threads: 1,
                        shard: (rank, world),
                        ..Default::default()
                    },
                )
                .unwrap();
                assert_eq!(l.batches_per_epoch(), 23 / (2 * world));
                let bs = collect(&l, 1, 0);
                assert_eq!(bs.len(), l.batches_per_epoch());
                for b in &bs {
                    assert_eq!(b.len(), 2);
                    for &i in &b.indices {
                        assert!(seen.insert(i), "world {world}: sample {i} on two ranks");
                    }
                }
                per_rank.push(bs);
            }
            assert_eq!(seen.len(), (23 / (2 * world)) * 2 * world, "world {world}: coverage");
            // Rank r's batch k is the r-th slice of the one-process batch k of size 2 * world.
            for (k, g) in collect(&whole, 1, 0).iter().enumerate().take(per_rank[0].len()) {
                for (rank, bs) in per_rank.iter().enumerate() {
                    assert_eq!(bs[k].indices, g.indices[rank * 2..rank * 2 + 2].to_vec());
                }
            }
        }
    }

    #[test]
    fn bad_samples_skipped_counted_then_abort() {
        let d = tempfile::tempdir().unwrap();
        let mut items = make_items(d.path(), 20, &[3]);
        items[7].images[0] = d.path().join("missing.png");
        let cfg = LoaderConfig {
            batch_size: 4,
            max_bad_fraction: 0.1,
            train: false,
            shuffle: false,
            ..Default::default()
        };
        let l = Loader::new(items.clone(), pp(), cfg.clone()).unwrap();
        let batches = collect(&l, 0, 0);
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 18);
        assert_eq!(l.stats.bad.load(Ordering::Relaxed), 2);
        let bad = l.stats.bad_samples.lock().unwrap().clone();
        assert!(bad.iter().any(|(p, _)| p.ends_with("img3.png")));
        assert!(bad.iter().any(|(p, _)| p.ends_with("missing.png")));
        // Every epoch meets them again; they still count once.
        for epoch in 1..4 {
            assert_eq!(collect(&l, epoch, 0).iter().map(|b| b.len()).sum::<usize>(), 18);
        }
        assert_eq!(l.stats.bad.load(Ordering::Relaxed), 2);
        assert_eq!(l.stats.bad_samples.lock().unwrap().len(), 2);
        // 2 bad of 20 > 1%: abort with an error naming them
        let l = Loader::new(items, pp(), LoaderConfig { max_bad_fraction: 0.01, ..cfg }).unwrap();
        let res: Vec<Result<Batch>> = l.epoch(0, 0).collect();
        let err = res.into_iter().find_map(|r| r.err()).expect("aborts");
        let budget = err.downcast_ref::<BadSampleBudget>().expect("a BadSampleBudget error");
        assert_eq!((budget.count, budget.total), (1, 20));
        let err = err.to_string();
        assert!(err.contains("max_bad_fraction") && err.contains("img3.png"), "{err}");
    }

    #[test]
    fn empty_report_is_bad_when_text_required() {
        let d = tempfile::tempdir().unwrap();
        let mut items = make_items(d.path(), 4, &[]);
        items[1].text = Some("  ".into());
        let l = Loader::new(
            items,
            pp(),
            LoaderConfig { require_text: true, max_bad_fraction: 0.5, ..Default::default() },
        )
        .unwrap();
        let n: usize = collect(&l, 0, 0).iter().map(|b| b.len()).sum();
        assert_eq!(n, 3);
        assert_eq!(
            l.stats.bad_samples.lock().unwrap()[0],
            ("s1".to_string(), "empty report".to_string())
        );
    }

    #[test]
    fn cache_matches_direct_decoding() {
        let d = tempfile::tempdir().unwrap();
        let items = make_items(d.path(), 6, &[4]);
        let p = pp();
        let cache = Cache::build(&items, &p, &d.path().join("c.cache")).unwrap();
        let direct = Loader::new(
            items.clone(),
            p.clone(),
            LoaderConfig { train: false, max_bad_fraction: 0.5, ..Default::default() },
        )
        .unwrap();
        let cached = Loader::new(
            items.clone(),
            p.clone(),
            LoaderConfig { train: false, max_bad_fraction: 0.5, ..Default::default() },
        )
        .unwrap()
        .with_cache(Cache::open(&d.path().join("c.cache")).unwrap())
        .unwrap();
        drop(cache);
        for i in [0usize, 1, 5] {
            let a = direct.load_sample(0, i).unwrap();
            let b = cached.load_sample(0, i).unwrap();
            let maxdiff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(maxdiff < 1e-3, "16-bit cache rounding only: {maxdiff}");
        }
        assert!(cached.load_sample(0, 4).unwrap_err().1.contains("cached"));
        // a cache for other items is refused
        let other = make_items(&d.path().join("x").tap_mkdir(), 3, &[]);
        let l = Loader::new(other, p, LoaderConfig::default()).unwrap();
        assert!(l.with_cache(Cache::open(&d.path().join("c.cache")).unwrap()).is_err());
        std::fs::write(d.path().join("junk.cache"), b"nope").unwrap();
        assert!(Cache::open(&d.path().join("junk.cache")).is_err());
    }

    trait TapMkdir {
        fn tap_mkdir(self) -> PathBuf;
    }
    impl TapMkdir for PathBuf {
        fn tap_mkdir(self) -> PathBuf {
            std::fs::create_dir_all(&self).unwrap();
            self
        }
    }
}
