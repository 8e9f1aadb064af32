//! Writes a synthetic dataset directory:
//!
//! ```text
//! DIR/images/sNNNNNNN.png   paired and image-only studies
//! DIR/manifest.jsonl        paired studies (standard manifest: images, sections, text, labels, split)
//! DIR/image_only.jsonl      image + labels, no report
//! DIR/text_only.jsonl       report + labels, no image
//! DIR/ground_truth.jsonl    every study: labels, finding attributes, anatomy, acquisition, how the report states each finding
//! DIR/synth.json            generation parameters, counts, prevalences
//! ```
//!
//! Images are rendered and encoded in parallel (rayon); every file depends only on the config,
//! so the output is byte-identical whatever the thread count.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::findings::SYNTH_LABELS;
use crate::phantom::Geometry;
use crate::{
    plan, render_study, report_study, Part, Report, StudyPlan, SynthConfig, SYNTH_VERSION,
};
use medvlp_data::dataset::manifest::{ImageRef, ManifestWriter, Study};

#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub out_dir: PathBuf,
    pub paired: usize,
    pub image_only: usize,
    pub text_only: usize,
    pub patients: usize,
    pub images: usize,
    /// Wall time of the whole generation.
    pub seconds: f64,
    pub images_per_s: f64,
    /// Label prevalence over the paired part.
    pub prevalence: BTreeMap<String, f64>,
    /// Studies per split (paired part).
    pub splits: BTreeMap<String, usize>,
}

/// Encodes display intensities (0..1) as an 8- or 16-bit grayscale PNG.
pub fn encode_png(img: &[f32], size: u32, bits: u8) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(img.len());
    let enc = PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
    if bits == 16 {
        let mut bytes = Vec::with_capacity(img.len() * 2);
        for &x in img {
            bytes.extend_from_slice(&((x.clamp(0.0, 1.0) * 65535.0 + 0.5) as u16).to_ne_bytes());
        }
        enc.write_image(&bytes, size, size, ExtendedColorType::L16)?;
    } else {
        let bytes: Vec<u8> = img.iter().map(|&x| (x.clamp(0.0, 1.0) * 255.0 + 0.5) as u8).collect();
        enc.write_image(&bytes, size, size, ExtendedColorType::L8)?;
    }
    Ok(out)
}

/// The manifest row of a study (images and/or report as its part has them).
pub fn study_row(p: &StudyPlan, report: Option<&Report>) -> Study {
    let mut s = Study {
        id: p.id.clone(),
        patient_id: Some(p.patient_id.clone()),
        labels: p.labels(),
        split: Some(p.split),
        ..Default::default()
    };
    if p.has_image() {
        s.images.push(ImageRef {
            path: p.image_path(),
            view: Some(p.acquisition.view.as_str().to_string()),
        });
    }
    if let Some(r) = report.filter(|_| p.has_report()) {
        s.sections.insert("indication".into(), r.indication.clone());
        s.sections.insert("comparison".into(), r.comparison.clone());
        s.sections.insert("findings".into(), r.findings.clone());
        s.sections.insert("impression".into(), r.impression.clone());
        s.text = s.findings_impression();
    }
    s
}

/// The ground-truth row of a study: labels plus every attribute the image was rendered from.
pub fn ground_truth_row(
    cfg: &SynthConfig,
    plans: &[StudyPlan],
    p: &StudyPlan,
    report: Option<&Report>,
) -> serde_json::Value {
    let g = Geometry::new(&p.anatomy, &p.acquisition, &p.findings);
    json!({
        "id": p.id,
        "patient_id": p.patient_id,
        "part": p.part,
        "split": p.split,
        "visit": p.visit,
        "prior_id": p.prior.map(|i| plans[i].id.clone()),
        "view": p.acquisition.view,
        "difficulty": cfg.difficulty,
        "labels": p.labels(),
        "findings": p.findings,
        "context": p.context,
        "cardiothoracic_ratio_rendered": (g.ctr * 1000.0).round() / 1000.0,
        "acquisition": p.acquisition,
        "anatomy": p.anatomy,
        "report_mentions": report.map(|r| &r.mentions),
    })
}

fn prevalence<'a>(plans: impl Iterator<Item = &'a StudyPlan>) -> BTreeMap<String, f64> {
    let mut n = 0usize;
    let mut pos: BTreeMap<String, usize> =
        SYNTH_LABELS.iter().map(|l| (l.to_string(), 0)).collect();
    for p in plans {
        n += 1;
        for (k, v) in p.labels() {
            if v == 1 {
                *pos.entry(k).or_default() += 1;
            }
        }
    }
    pos.into_iter()
        .map(|(k, c)| (k, if n == 0 { 0.0 } else { (c as f64 / n as f64 * 1e4).round() / 1e4 }))
        .collect()
}

fn write_jsonl(path: &Path, rows: impl Iterator<Item = Study>) -> Result<()> {
    let mut w = ManifestWriter::create(path)?;
    for s in rows {
        w.write(&s)?;
    }
    w.finish()
}

/// Generates the whole dataset under `out_dir` (created if needed; existing files of the same
/// names are overwritten, and generated images of an earlier run that this one does not write are
/// removed, so the directory always matches the config). Returns counts, prevalences and timing.
pub fn generate(cfg: &SynthConfig, out_dir: &Path) -> Result<SynthSummary> {
    let t0 = Instant::now();
    cfg.validate()?;
    let plans = plan(cfg)?;
    let img_dir = out_dir.join("images");
    std::fs::create_dir_all(&img_dir)
        .with_context(|| format!("cannot create output directory {}", img_dir.display()))?;
    // Fail early (and clearly) on an unwritable directory.
    let probe = out_dir.join(".synth-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("output directory {} is not writable", out_dir.display()))?;
    let _ = std::fs::remove_file(&probe);

    // Images of an earlier, larger run into the same directory would linger: remove the
    // generator's own files (sNNNNNNN.png) that this run does not write.
    let keep: std::collections::HashSet<String> =
        plans.iter().filter(|p| p.has_image()).map(|p| format!("{}.png", p.id)).collect();
    for e in
        std::fs::read_dir(&img_dir).with_context(|| format!("cannot read {}", img_dir.display()))?
    {
        let name = e?.file_name().to_string_lossy().to_string();
        let ours = name.len() == 12
            && name.starts_with('s')
            && name.ends_with(".png")
            && name[1..8].bytes().all(|b| b.is_ascii_digit());
        if ours && !keep.contains(&name) {
            let p = img_dir.join(&name);
            std::fs::remove_file(&p)
                .with_context(|| format!("cannot remove stale {}", p.display()))?;
        }
    }

    let reports: Vec<Option<Report>> =
        plans.par_iter().map(|p| p.has_report().then(|| report_study(cfg, &plans, p))).collect();

    let n_images = plans.iter().filter(|p| p.has_image()).count();
    plans.par_iter().filter(|p| p.has_image()).try_for_each(|p| -> Result<()> {
        let img = render_study(cfg, p);
        let png = encode_png(&img, cfg.size, cfg.bits)?;
        let path = out_dir.join(p.image_path());
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))
    })?;

    let part_rows = |part: Part| {
        plans
            .iter()
            .zip(&reports)
            .filter(move |(p, _)| p.part == part)
            .map(|(p, r)| study_row(p, r.as_ref()))
    };
    write_jsonl(&out_dir.join("manifest.jsonl"), part_rows(Part::Paired))?;
    write_jsonl(&out_dir.join("image_only.jsonl"), part_rows(Part::ImageOnly))?;
    write_jsonl(&out_dir.join("text_only.jsonl"), part_rows(Part::TextOnly))?;

    let gt_path = out_dir.join("ground_truth.jsonl");
    let f = std::fs::File::create(&gt_path)
        .with_context(|| format!("cannot create {}", gt_path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for (p, r) in plans.iter().zip(&reports) {
        serde_json::to_writer(&mut w, &ground_truth_row(cfg, &plans, p, r.as_ref()))?;
        w.write_all(b"\n").with_context(|| format!("writing {}", gt_path.display()))?;
    }
    w.flush().with_context(|| format!("writing {}", gt_path.display()))?;

    let patients =
        plans.iter().map(|p| &p.patient_id).collect::<std::collections::BTreeSet<_>>().len();
    let mut splits: BTreeMap<String, usize> = BTreeMap::new();
    for p in plans.iter().filter(|p| p.part == Part::Paired) {
        *splits.entry(p.split.as_str().to_string()).or_default() += 1;
    }
    let prev_paired = prevalence(plans.iter().filter(|p| p.part == Part::Paired));
    let meta = json!({
        "generator": "medvlp synth",
        "version": SYNTH_VERSION,
        "config": cfg,
        "labels": SYNTH_LABELS,
        "label_values": "1 = rendered in the image, 0 = not (ground truth from the image parameters, never from the report)",
        "laterality": "sides are the patient's; images are displayed as PA films, so the patient's left is the image's right (columns > width/2)",
        "files": {
            "manifest": "manifest.jsonl",
            "image_only": "image_only.jsonl",
            "text_only": "text_only.jsonl",
            "ground_truth": "ground_truth.jsonl",
            "images": "images/",
        },
        "counts": {"paired": cfg.n, "image_only": cfg.image_only, "text_only": cfg.text_only, "patients": patients, "images": n_images},
        "splits_paired": splits,
        "prevalence": {
            "paired": prev_paired,
            "image_only": prevalence(plans.iter().filter(|p| p.part == Part::ImageOnly)),
            "text_only": prevalence(plans.iter().filter(|p| p.part == Part::TextOnly)),
        },
    });
    let meta_path = out_dir.join("synth.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)? + "\n")
        .with_context(|| format!("cannot write {}", meta_path.display()))?;

    let seconds = t0.elapsed().as_secs_f64();
    Ok(SynthSummary {
        out_dir: out_dir.to_path_buf(),
        paired: cfg.n,
        image_only: cfg.image_only,
        text_only: cfg.text_only,
        patients,
        images: n_images,
        seconds,
        images_per_s: n_images as f64 / seconds.max(1e-9),
        prevalence: prev_paired,
        splits,
    })
}
