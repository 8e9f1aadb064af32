//! Preprocessing: decoded [`GrayImage`] -> CHW `Vec<f32>` tensor data, driven by
//! [`PreprocessConfig`] (stored as the `preprocess` block of a model's config.json).
//!
//! Pipeline: resize the shorter side to `resize_shorter` (antialiased), optional histogram
//! equalisation, crop to `image_size` (center, or random-resized in training), training-only
//! small affine and brightness/contrast/gamma jitter, then `(x - mean) / std` per channel with
//! the gray plane replicated to `channels`. Horizontal flip only when `augment.hflip` is set
//! (reports say left and right). Augmentation is a pure function of the RNG, which
//! [`sample_rng`] derives from (seed, epoch, index).

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::GrayImage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CropMode {
    #[default]
    Center,
    RandomResized,
}

/// Training augmentations (ignored at evaluation time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Random-resized-crop area fraction range (of the resized image), used when crop = random_resized.
    pub rrc_scale: [f32; 2],
    /// Random-resized-crop aspect-ratio range (w/h), sampled log-uniformly.
    pub rrc_ratio: [f32; 2],
    /// Max rotation, degrees (uniform in +-).
    pub rotation_deg: f32,
    /// Max translation as a fraction of the output size (uniform in +-, per axis).
    pub translate: f32,
    /// Zoom range of the affine (1 = none).
    pub scale: [f32; 2],
    /// Additive brightness jitter, uniform in +-.
    pub brightness: f32,
    /// Contrast factor jitter: factor uniform in [1 - c, 1 + c].
    pub contrast: f32,
    /// Gamma jitter: gamma = exp(uniform(+-g)).
    pub gamma: f32,
    /// Horizontal flip with probability 0.5. Off by default: chest X-rays have a laterality.
    pub hflip: bool,
}

impl AugmentConfig {
    /// Range checks (also run as part of `PreprocessConfig::validate`).
    pub fn validate(&self) -> Result<()> {
        let a = self;
        if !(0.0 < a.rrc_scale[0] && a.rrc_scale[0] <= a.rrc_scale[1] && a.rrc_scale[1] <= 1.0) {
            bail!(
                "preprocess.augment.rrc_scale must satisfy 0 < lo <= hi <= 1, got {:?}",
                a.rrc_scale
            );
        }
        if !(0.0 < a.rrc_ratio[0] && a.rrc_ratio[0] <= a.rrc_ratio[1]) {
            bail!("preprocess.augment.rrc_ratio must satisfy 0 < lo <= hi, got {:?}", a.rrc_ratio);
        }
        if !(0.0 < a.scale[0] && a.scale[0] <= a.scale[1]) {
            bail!("preprocess.augment.scale must satisfy 0 < lo <= hi, got {:?}", a.scale);
        }
        Ok(())
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            rrc_scale: [0.6, 1.0],
            rrc_ratio: [0.75, 4.0 / 3.0],
            rotation_deg: 10.0,
            translate: 0.0625,
            scale: [0.9, 1.1],
            brightness: 0.1,
            contrast: 0.1,
            gamma: 0.1,
            hflip: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Output side (square).
    pub image_size: u32,
    /// Shorter side after the first resize; must be >= image_size.
    pub resize_shorter: u32,
    /// Crop used in training (evaluation always uses a center crop).
    pub crop: CropMode,
    /// 1 or 3 (gray replicated).
    pub channels: u32,
    /// Per-channel mean/std on the [0, 1] scale; length 1 (broadcast) or `channels`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub hist_eq: bool,
    pub augment: AugmentConfig,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            image_size: 224,
            resize_shorter: 256,
            crop: CropMode::RandomResized,
            channels: 3,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            hist_eq: false,
            augment: AugmentConfig::default(),
        }
    }
}

impl PreprocessConfig {
    pub fn validate(&self) -> Result<()> {
        if self.image_size == 0 || self.image_size > 4096 {
            bail!("preprocess.image_size must be in 1..=4096, got {}", self.image_size);
        }
        if self.resize_shorter < self.image_size {
            bail!(
                "preprocess.resize_shorter ({}) must be >= image_size ({})",
                self.resize_shorter,
                self.image_size
            );
        }
        if self.channels != 1 && self.channels != 3 {
            bail!("preprocess.channels must be 1 or 3, got {}", self.channels);
        }
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != self.channels as usize {
                bail!("preprocess.{name} must have 1 or {} values, got {}", self.channels, v.len());
            }
        }
        if self.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            bail!("preprocess.std values must be > 0");
        }
        self.augment.validate()
    }

    /// Load from a file: a model `config.json` (its `preprocess` block), or a JSON/TOML file
    /// that is the block itself (TOML may also hold a `[preprocess]` table). Validated.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
            let t: toml::Value = toml::from_str(&text)
                .with_context(|| format!("{}: invalid TOML", path.display()))?;
            serde_json::to_value(t)?
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", path.display()))?
        };
        let block = value.get("preprocess").cloned().unwrap_or(value);
        let cfg: PreprocessConfig = serde_json::from_value(block)
            .with_context(|| format!("{}: invalid preprocess config", path.display()))?;
        cfg.validate().with_context(|| path.display().to_string())?;
        Ok(cfg)
    }

    /// Number of f32 values of one preprocessed sample.
    pub fn sample_len(&self) -> usize {
        (self.channels * self.image_size * self.image_size) as usize
    }
}

/// The per-sample RNG: a pure function of (seed, epoch, index), so a resumed run sees the same
/// augmentations.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    rng.set_word_pos((index as u128) << 20);
    // Word position alone would make neighbouring indices share keystream blocks past 2^20 words;
    // reseed from the first draw so each sample has its own key.
    ChaCha8Rng::seed_from_u64(rng.random::<u64>())
}

/// Resize so that the shorter side is `shorter` (aspect kept). Antialiased: an integer box
/// reduction first (cheap, exact averaging), then a triangle filter for the remainder.
pub fn resize_shorter(img: &GrayImage, shorter: u32) -> GrayImage {
    let (w, h) = (img.width, img.height);
    let s = shorter as f64 / w.min(h) as f64;
    let (nw, nh) = (((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1));
    resize_to(img, nw, nh)
}

/// Resize to exactly `nw` x `nh`.
pub fn resize_to(img: &GrayImage, nw: u32, nh: u32) -> GrayImage {
    if (nw, nh) == (img.width, img.height) {
        return img.clone();
    }
    let f = (img.width as f64 / nw as f64).min(img.height as f64 / nh as f64);
    // Keep at least 2x the target before the filter so the triangle filter still antialiases.
    let k = (f / 2.0).floor() as u32;
    let reduced;
    let src = if k >= 2 {
        reduced = box_reduce(img, k);
        &reduced
    } else {
        img
    };
    let buf = image::ImageBuffer::<image::Luma<f32>, &[f32]>::from_raw(
        src.width,
        src.height,
        &src.data[..],
    )
    .expect("buffer size checked by GrayImage");
    let out = image::imageops::resize(&buf, nw, nh, image::imageops::FilterType::Triangle);
    GrayImage::new(nw, nh, out.into_raw())
}

/// Average each k x k block (the last partial blocks are averaged over what exists).
fn box_reduce(img: &GrayImage, k: u32) -> GrayImage {
    let (w, h) = (img.width as usize, img.height as usize);
    let k = k as usize;
    let (nw, nh) = (w.div_ceil(k), h.div_ceil(k));
    let mut out = vec![0f32; nw * nh];
    let mut rowsum = vec![0f32; nw];
    for by in 0..nh {
        rowsum.iter_mut().for_each(|v| *v = 0.0);
        let y1 = ((by + 1) * k).min(h);
        for y in by * k..y1 {
            let row = &img.data[y * w..(y + 1) * w];
            for (bx, chunk) in row.chunks(k).enumerate() {
                rowsum[bx] += chunk.iter().sum::<f32>();
            }
        }
        let rows = (y1 - by * k) as f32;
        for bx in 0..nw {
            let cols = (((bx + 1) * k).min(w) - bx * k) as f32;
            out[by * nw + bx] = rowsum[bx] / (rows * cols);
        }
    }
    GrayImage::new(nw as u32, nh as u32, out)
}

/// Histogram equalisation on [0, 1] values (1024 bins).
pub fn equalize_hist(img: &mut GrayImage) {
    const BINS: usize = 1024;
    let mut hist = [0u32; BINS];
    let bin = |v: f32| ((v.clamp(0.0, 1.0) * (BINS - 1) as f32).round() as usize).min(BINS - 1);
    for &v in &img.data {
        hist[bin(v)] += 1;
    }
    let n = img.data.len() as f64;
    let mut cdf = [0f32; BINS];
    let mut acc = 0u64;
    let first = hist.iter().position(|&c| c > 0).map(|i| hist[i] as f64).unwrap_or(0.0);
    for i in 0..BINS {
        acc += hist[i] as u64;
        cdf[i] = if n > first {
            ((acc as f64 - first) / (n - first)).clamp(0.0, 1.0) as f32
        } else {
            0.0
        };
    }
    for v in img.data.iter_mut() {
        *v = cdf[bin(*v)];
    }
}

#[inline]
fn bilinear(img: &GrayImage, x: f32, y: f32) -> f32 {
    let (w, h) = (img.width as i64, img.height as i64);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let px = |xx: i64, yy: i64| -> f32 {
        if xx < 0 || yy < 0 || xx >= w || yy >= h {
            0.0
        } else {
            img.data[(yy * w + xx) as usize]
        }
    };
    if fx == 0.0 && fy == 0.0 {
        return px(x0, y0);
    }
    let a = px(x0, y0) * (1.0 - fx) + px(x0 + 1, y0) * fx;
    let b = px(x0, y0 + 1) * (1.0 - fx) + px(x0 + 1, y0 + 1) * fx;
    a * (1.0 - fy) + b * fy
}

/// The geometric + intensity steps, before normalisation: what the model sees, on [0, 1].
/// `rng = None` means evaluation (center crop, no augmentation).
pub fn preprocess_gray<R: Rng>(
    img: &GrayImage,
    cfg: &PreprocessConfig,
    mut rng: Option<&mut R>,
) -> GrayImage {
    let s = cfg.image_size as usize;
    let mut base = resize_shorter(img, cfg.resize_shorter);
    if cfg.hist_eq {
        equalize_hist(&mut base);
    }
    let (bw, bh) = (base.width as f32, base.height as f32);
    let a = &cfg.augment;
    // Source crop rectangle (x0, y0, cw, ch) in `base` pixels.
    let mut crop = ((bw - s as f32) / 2.0, (bh - s as f32) / 2.0, s as f32, s as f32);
    crop = (crop.0.floor(), crop.1.floor(), crop.2, crop.3);
    let (mut rot, mut tx, mut ty, mut zoom, mut flip) = (0f32, 0f32, 0f32, 1f32, false);
    let (mut gamma, mut contrast, mut bright) = (1f32, 1f32, 0f32);
    if let Some(rng) = rng.as_deref_mut() {
        if cfg.crop == CropMode::RandomResized {
            let area = bw * bh;
            for _ in 0..10 {
                let target = area * rng.random_range(a.rrc_scale[0]..=a.rrc_scale[1]);
                let (lr0, lr1) = (a.rrc_ratio[0].ln(), a.rrc_ratio[1].ln());
                let ratio = rng.random_range(lr0..=lr1).exp();
                let (cw, ch) = ((target * ratio).sqrt(), (target / ratio).sqrt());
                if cw <= bw && ch <= bh {
                    let x0 = rng.random_range(0.0..=(bw - cw));
                    let y0 = rng.random_range(0.0..=(bh - ch));
                    crop = (x0, y0, cw, ch);
                    break;
                }
            }
        }
        rot = rng.random_range(-a.rotation_deg..=a.rotation_deg).to_radians();
        tx = rng.random_range(-a.translate..=a.translate) * s as f32;
        ty = rng.random_range(-a.translate..=a.translate) * s as f32;
        zoom = rng.random_range(a.scale[0]..=a.scale[1]);
        flip = a.hflip && rng.random_bool(0.5);
        gamma = rng.random_range(-a.gamma..=a.gamma).exp();
        contrast = rng.random_range((1.0 - a.contrast)..=(1.0 + a.contrast));
        bright = rng.random_range(-a.brightness..=a.brightness);
    }
    let (x0, y0, cw, ch) = crop;
    let (sx, sy) = (cw / s as f32, ch / s as f32);
    let (cx, cy) = (s as f32 / 2.0, s as f32 / 2.0);
    let (cos, sin) = (rot.cos(), rot.sin());
    let mut out = vec![0f32; s * s];
    for v in 0..s {
        for u in 0..s {
            // Inverse affine in output space: undo translation, rotation and zoom about the centre.
            let (mut ox, oy) = (u as f32 + 0.5 - cx - tx, v as f32 + 0.5 - cy - ty);
            if flip {
                ox = -ox;
            }
            let rx = (cos * ox + sin * oy) / zoom + cx;
            let ry = (-sin * ox + cos * oy) / zoom + cy;
            out[v * s + u] = bilinear(&base, x0 + rx * sx - 0.5, y0 + ry * sy - 0.5);
        }
    }
    if rng.is_some() {
        let mean = out.iter().sum::<f32>() / out.len() as f32;
        for p in out.iter_mut() {
            let g = p.max(0.0).powf(gamma);
            *p = ((g - mean) * contrast + mean + bright).clamp(0.0, 1.0);
        }
    }
    GrayImage::new(s as u32, s as u32, out)
}

/// Full pipeline to CHW `f32` (channels x image_size x image_size).
pub fn preprocess<R: Rng>(
    img: &GrayImage,
    cfg: &PreprocessConfig,
    rng: Option<&mut R>,
) -> Vec<f32> {
    let g = preprocess_gray(img, cfg, rng);
    normalize(&g, cfg)
}

/// `(x - mean) / std`, gray replicated to `cfg.channels`.
pub fn normalize(g: &GrayImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let c = cfg.channels as usize;
    let mut out = Vec::with_capacity(c * g.data.len());
    for ch in 0..c {
        let m = cfg.mean[ch.min(cfg.mean.len() - 1)];
        let inv = 1.0 / cfg.std[ch.min(cfg.std.len() - 1)];
        out.extend(g.data.iter().map(|v| (v - m) * inv));
    }
    out
}

/// Evaluation preprocessing (no RNG).
pub fn preprocess_eval(img: &GrayImage, cfg: &PreprocessConfig) -> Vec<f32> {
    preprocess::<ChaCha8Rng>(img, cfg, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: u32, h: u32) -> GrayImage {
        GrayImage::new(w, h, (0..w * h).map(|i| ((i % w) as f32) / (w - 1) as f32).collect())
    }

    #[test]
    fn config_defaults_roundtrip_and_validate() {
        let c: PreprocessConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, PreprocessConfig::default());
        assert!(!c.augment.hflip, "no horizontal flip by default");
        c.validate().unwrap();
        let c: PreprocessConfig =
            serde_json::from_str(r#"{"image_size": 64, "resize_shorter": 72, "crop": "center", "channels": 1, "mean": [0.5], "std": [0.25], "augment": {"rotation_deg": 5}}"#).unwrap();
        assert_eq!(c.crop, CropMode::Center);
        assert_eq!(c.augment.rotation_deg, 5.0);
        assert_eq!(c.augment.gamma, AugmentConfig::default().gamma);
        let back: PreprocessConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<PreprocessConfig>(r#"{"crop": "random"}"#).is_err());
        let bad = PreprocessConfig { channels: 2, ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = PreprocessConfig { resize_shorter: 100, ..Default::default() };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn config_from_model_json_and_toml() {
        let d = tempfile::tempdir().unwrap();
        let j = d.path().join("config.json");
        std::fs::write(&j, r#"{"model": "x", "preprocess": {"image_size": 128, "resize_shorter": 144, "hist_eq": true}}"#).unwrap();
        let c = PreprocessConfig::from_file(&j).unwrap();
        assert_eq!((c.image_size, c.resize_shorter, c.hist_eq), (128, 144, true));
        let t = d.path().join("p.toml");
        std::fs::write(&t, "[preprocess]\nchannels = 1\nmean = [0.5]\nstd = [0.5]\n[preprocess.augment]\nrotation_deg = 3.0\n").unwrap();
        let c = PreprocessConfig::from_file(&t).unwrap();
        assert_eq!((c.channels, c.augment.rotation_deg), (1, 3.0));
        std::fs::write(&t, "channels = 1\n").unwrap();
        let e = PreprocessConfig::from_file(&t).unwrap_err();
        assert!(format!("{e:#}").contains("p.toml") && format!("{e:#}").contains("mean"), "{e:#}");
        std::fs::write(&j, "{ not json").unwrap();
        assert!(
            format!("{:#}", PreprocessConfig::from_file(&j).unwrap_err()).contains("config.json")
        );
    }

    #[test]
    fn eval_output_shape_normalisation_and_orientation() {
        let cfg = PreprocessConfig { image_size: 32, resize_shorter: 40, ..Default::default() };
        let img = ramp(300, 200);
        let g = preprocess_gray::<ChaCha8Rng>(&img, &cfg, None);
        assert_eq!((g.width, g.height), (32, 32));
        // left stays dark, right bright (no flip), center crop keeps the middle of the ramp.
        assert!(g.get(0, 16) < g.get(31, 16));
        assert!((g.region_mean(0.0, 0.0, 1.0, 1.0) - 0.5).abs() < 0.02);
        let x = preprocess_eval(&img, &cfg);
        assert_eq!(x.len(), 3 * 32 * 32);
        let expect = (g.get(5, 7) - 0.456) / 0.224;
        assert!((x[32 * 32 + 7 * 32 + 5] - expect).abs() < 1e-5);
    }

    #[test]
    fn resize_averages_rather_than_aliases() {
        // 1-pixel checkerboard: a proper downscale gives ~0.5 everywhere.
        let (w, h) = (1000u32, 800u32);
        let img =
            GrayImage::new(w, h, (0..w * h).map(|i| (((i % w) + (i / w)) % 2) as f32).collect());
        let r = resize_shorter(&img, 100);
        assert_eq!((r.width, r.height), (125, 100));
        assert!(r.data.iter().all(|v| (v - 0.5).abs() < 0.05));
    }

    #[test]
    fn augmentation_is_deterministic_per_sample_and_varies_across_samples() {
        let cfg = PreprocessConfig { image_size: 48, resize_shorter: 56, ..Default::default() };
        let img = ramp(120, 100);
        let a = preprocess(&img, &cfg, Some(&mut sample_rng(7, 1, 3)));
        let b = preprocess(&img, &cfg, Some(&mut sample_rng(7, 1, 3)));
        assert_eq!(a, b);
        let c = preprocess(&img, &cfg, Some(&mut sample_rng(7, 1, 4)));
        let d = preprocess(&img, &cfg, Some(&mut sample_rng(7, 2, 3)));
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(a.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn no_flip_unless_asked() {
        // Left half dark, right half bright: without hflip the right stays brighter in every draw.
        let img = GrayImage::new(
            200,
            200,
            (0..200 * 200).map(|i| if i % 200 < 100 { 0.1 } else { 0.9 }).collect(),
        );
        let mut cfg = PreprocessConfig {
            image_size: 64,
            resize_shorter: 64,
            channels: 1,
            ..Default::default()
        };
        let mut flips = 0;
        for i in 0..40 {
            let g = preprocess_gray(&img, &cfg, Some(&mut sample_rng(1, 0, i)));
            assert!(g.region_mean(0.0, 0.3, 0.3, 0.7) < g.region_mean(0.7, 0.3, 1.0, 0.7));
        }
        cfg.augment.hflip = true;
        for i in 0..40 {
            let g = preprocess_gray(&img, &cfg, Some(&mut sample_rng(1, 0, i)));
            if g.region_mean(0.0, 0.3, 0.3, 0.7) > g.region_mean(0.7, 0.3, 1.0, 0.7) {
                flips += 1;
            }
        }
        assert!((8..=32).contains(&flips), "flips {flips}/40");
    }

    #[test]
    fn hist_eq_spreads_values() {
        let mut img =
            GrayImage::new(100, 1, (0..100).map(|i| 0.4 + 0.1 * i as f32 / 99.0).collect());
        equalize_hist(&mut img);
        assert!(img.data[0] < 0.05 && img.data[99] > 0.95);
        assert!(img.data.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn rg1_after_preprocessing_lungs_darker_than_mediastinum() {
        let Some(p) = crate::assets::asset_path("dicom/RG1_UNCR.dcm") else { return };
        let d = crate::image::decode_file(&p).unwrap();
        let cfg = PreprocessConfig { resize_shorter: 224, ..Default::default() };
        let g = preprocess_gray::<ChaCha8Rng>(&d.image, &cfg, None);
        let lung_r = g.region_mean(0.18, 0.30, 0.35, 0.55);
        let lung_l = g.region_mean(0.65, 0.30, 0.82, 0.55);
        let med = g.region_mean(0.45, 0.25, 0.55, 0.6);
        assert!(
            lung_r + 0.05 < med && lung_l + 0.05 < med,
            "lungs {lung_r} {lung_l} mediastinum {med}"
        );
    }
}
