//! Benchmark helpers (`medvlp bench data`): decode + preprocess throughput and the `prepare`
//! scale test on a generated MIMIC-CXR-sized tree. Speed targets live here, never in tests.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::image::decode_file_scaled;
use crate::image::preprocess::{preprocess_eval, PreprocessConfig};

/// A chest-film-like grayscale test image (smooth anatomy-ish shapes plus noise) as JPEG.
pub fn synthetic_jpeg(width: u32, height: u32, quality: u8) -> Result<Vec<u8>> {
    let mut state = 0x1234_5678u32;
    let img = image::GrayImage::from_fn(width, height, |x, y| {
        let (u, v) = (x as f32 / width as f32 - 0.5, y as f32 / height as f32 - 0.5);
        let lung = |cx: f32| ((u - cx).powi(2) / 0.03 + (v + 0.05).powi(2) / 0.12).min(1.0);
        let body = 0.75 - 0.45 * (1.0 - lung(-0.2)) - 0.45 * (1.0 - lung(0.2));
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state % 21) as f32 / 255.0;
        image::Luma([((body + noise).clamp(0.0, 1.0) * 255.0) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(&img)?;
    Ok(out)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    pub what: String,
    pub threads: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// Decode + eval-preprocess `path` `n` times on `threads` threads.
pub fn decode_throughput(
    path: &Path,
    what: &str,
    cfg: &PreprocessConfig,
    n: usize,
    threads: usize,
) -> Result<Throughput> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    // warm-up (page cache, allocator)
    let d = decode_file_scaled(path, Some(cfg.resize_shorter))?;
    let x = preprocess_eval(&d.image, cfg);
    anyhow::ensure!(x.len() == cfg.sample_len());
    let t = Instant::now();
    let ok: Result<Vec<usize>> = pool.install(|| {
        (0..n)
            .into_par_iter()
            .map(|_| {
                let d = decode_file_scaled(path, Some(cfg.resize_shorter))?;
                Ok(preprocess_eval(&d.image, cfg).len())
            })
            .collect()
    });
    ok?;
    let s = t.elapsed().as_secs_f64();
    Ok(Throughput { what: what.into(), threads, images: n, seconds: s, images_per_s: n as f64 / s })
}

/// Write a MIMIC-CXR-JPG-shaped tree under `root`: metadata/split/chexpert CSVs (gzipped) and
/// one report per study, `n_studies` studies over `n_studies * 65379 / 227827` patients and
/// about 1.655 images per study (377,110 / 227,827). Image files are not written.
pub fn generate_mimic_tree(root: &Path, n_studies: usize) -> Result<(usize, usize)> {
    use flate2::write::GzEncoder;
    let gz = |name: &str| -> Result<std::io::BufWriter<GzEncoder<std::fs::File>>> {
        let f = std::fs::File::create(root.join(name)).with_context(|| format!("create {name}"))?;
        Ok(std::io::BufWriter::new(GzEncoder::new(f, flate2::Compression::fast())))
    };
    std::fs::create_dir_all(root)?;
    let mut meta = gz("mimic-cxr-2.0.0-metadata.csv.gz")?;
    let mut split = gz("mimic-cxr-2.0.0-split.csv.gz")?;
    let mut chex = gz("mimic-cxr-2.0.0-chexpert.csv.gz")?;
    writeln!(meta, "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning")?;
    writeln!(split, "dicom_id,study_id,subject_id,split")?;
    writeln!(chex, "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices")?;
    let n_pat = (n_studies * 65_379 / 227_827).max(1);
    let mut images = 0usize;
    let vals = ["", "1.0", "0.0", "-1.0", "", ""];
    let mut r = 0x9e37_79b9u64;
    let mut next = || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r
    };
    for i in 0..n_studies {
        let subject = 10_000_000 + (i % n_pat) as u32 * 7;
        let study = 50_000_000 + i as u32;
        let sp = match crate::dataset::unit_hash(1, &subject.to_string()) {
            u if u < 0.01 => "test",
            u if u < 0.02 => "validate",
            _ => "train",
        };
        // 377110 / 227827 = 1.655 images per study
        let n_img = if next() % 1000 < 655 { 2 } else { 1 };
        for k in 0..n_img {
            let dicom = format!(
                "{:08x}-{:08x}-{:08x}-{:08x}-{:08x}",
                next() as u32,
                study,
                k,
                subject,
                next() as u32
            );
            let view = if k == 0 {
                if next() % 2 == 0 {
                    "PA"
                } else {
                    "AP"
                }
            } else {
                "LATERAL"
            };
            writeln!(meta, "{dicom},{subject},{study},CHEST (PA AND LAT),{view},3056,2544,21800506,213014.531,Chest (PA and Lat),postero-anterior,Erect")?;
            writeln!(split, "{dicom},{study},{subject},{sp}")?;
            images += 1;
        }
        let labels: Vec<&str> = (0..14).map(|_| vals[(next() % 6) as usize]).collect();
        writeln!(chex, "{subject},{study},{}", labels.join(","))?;
        let s = subject.to_string();
        let dir = root.join(format!("files/p{}/p{s}", &s[..2]));
        if i < n_pat {
            std::fs::create_dir_all(&dir)?;
        }
        let report = if next() % 3 == 0 {
            // a third of MIMIC reports have no FINDINGS
            format!("                                 FINAL REPORT\n EXAMINATION:  CHEST (PORTABLE AP)\n \n INDICATION:  ___-year-old with dyspnea, study {study}.\n \n COMPARISON:  ___\n \n IMPRESSION: \n \n Compared to the prior study there is no significant interval change. Lines and tubes are in standard position.\n")
        } else {
            format!("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___F with cough, study {study}.\n \n TECHNIQUE:  Chest PA and lateral\n \n COMPARISON:  ___\n \n FINDINGS: \n \n The lungs are clear without focal consolidation, effusion, or pneumothorax.  The\n cardiomediastinal silhouette is within normal limits.  No acute osseous\n abnormalities.\n \n IMPRESSION: \n \n No acute cardiopulmonary process.\n")
        };
        std::fs::write(dir.join(format!("s{study}.txt")), report)?;
    }
    for mut w in [meta, split, chex] {
        w.flush()?;
        w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?.finish()?;
    }
    Ok((n_studies, images))
}

/// Peak resident memory of this process in MiB (Linux; None elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Current resident memory in MiB (Linux).
pub fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_mimic_tree_prepares() {
        let d = tempfile::tempdir().unwrap();
        let (studies, images) = generate_mimic_tree(d.path(), 300).unwrap();
        let out = d.path().join("m.jsonl");
        let s =
            crate::dataset::prepare(crate::dataset::PrepareOptions::new("mimic", d.path(), &out))
                .unwrap();
        assert_eq!(s.studies, studies);
        assert_eq!(s.images, images);
        assert!(images > 400 && images < 560, "{images}");
        let j = synthetic_jpeg(250, 200, 90).unwrap();
        let p = d.path().join("x.jpg");
        std::fs::write(&p, j).unwrap();
        let t = decode_throughput(&p, "x", &PreprocessConfig::default(), 4, 1).unwrap();
        assert_eq!(t.images, 4);
    }
}
