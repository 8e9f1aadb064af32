//! CheXpert v1.0 / -small: `train.csv` and `valid.csv` (official split), one row per image,
//! grouped into studies by `patientNNNNN/studyN`. The `CheXpert-v1.0(-small)/` prefix of `Path`
//! is resolved against where the CSV lies. Uncertain labels follow the uncertainty policy.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Result};

use crate::text::labels::CHEXPERT_14;

use super::{at, col, csv_reader, find_file_by, parse_label, ImageRef, Sink, Split, Study};

/// Path relative to the dataset root from a CSV `Path` value and the CSV's folder.
fn rel_image_path(root: &Path, csv_dir: &Path, p: &str) -> String {
    let p = p.trim().replace('\\', "/");
    let stripped = match p.split_once('/') {
        Some((first, rest)) if first.starts_with("CheXpert-v1.0") => rest.to_string(),
        _ => p.clone(),
    };
    let dir = csv_dir.strip_prefix(root).unwrap_or(Path::new(""));
    let joined = dir.join(&stripped);
    joined.to_string_lossy().replace('\\', "/")
}

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    let mut found = false;
    for (name, split) in [("train.csv", Split::Train), ("valid.csv", Split::Validate)] {
        let Some(p) = find_file_by(&root, &|n: &str| n == name) else { continue };
        found = true;
        read_csv(sink, &root, &p, split)?;
    }
    if !found {
        bail!("{}: no CheXpert train.csv or valid.csv found", root.display());
    }
    sink.official_split = true;
    Ok(())
}

pub fn read_csv(sink: &mut Sink, root: &Path, p: &Path, split: Split) -> Result<()> {
    let (mut r, h) = csv_reader(p)?;
    let cp = col(&h, p, &["Path"])?;
    let cfl = col(&h, p, &["Frontal/Lateral"])?;
    let capa = col(&h, p, &["AP/PA"])?;
    let obs: Vec<(usize, &str)> =
        CHEXPERT_14.iter().filter_map(|o| h.iter().position(|x| x == o).map(|i| (i, *o))).collect();
    if obs.is_empty() {
        bail!("{}: none of the 14 CheXpert observation columns found", p.display());
    }
    let csv_dir = p.parent().unwrap_or(root).to_path_buf();
    let mut order: Vec<String> = Vec::new();
    let mut studies: HashMap<String, Study> = HashMap::new();
    'rows: for rec in r.records() {
        let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let path = rel_image_path(root, &csv_dir, rec.get(cp).unwrap_or(""));
        // .../patientNNNNN/studyN/viewN_frontal.jpg
        let parts: Vec<&str> = path.rsplitn(3, '/').collect();
        if parts.len() < 3 || !parts[2].contains("patient") || !parts[1].starts_with("study") {
            sink.drop("malformed CheXpert path", at(p, &rec));
            continue;
        }
        let patient = parts[2].rsplit('/').next().unwrap_or(parts[2]).to_string();
        let study_id = format!("{patient}/{}", parts[1]);
        let mut labels = BTreeMap::new();
        for &(i, name) in &obs {
            match parse_label(rec.get(i).unwrap_or("")) {
                Ok(Some(v)) => {
                    labels.insert(name.to_string(), v);
                }
                Ok(None) => {}
                Err(e) => {
                    sink.drop("bad label value", format!("{}: {e}", at(p, &rec)));
                    continue 'rows;
                }
            }
        }
        let fl = rec.get(cfl).unwrap_or("").trim();
        let apa = rec.get(capa).unwrap_or("").trim();
        let view = if fl.eq_ignore_ascii_case("lateral") {
            "LATERAL".to_string()
        } else if !apa.is_empty() {
            apa.to_string()
        } else {
            "FRONTAL".to_string()
        };
        let s = studies.entry(study_id.clone()).or_insert_with(|| {
            order.push(study_id.clone());
            Study {
                id: format!("{}/{study_id}", split_dir(&path)),
                patient_id: Some(patient.clone()),
                split: Some(split),
                ..Default::default()
            }
        });
        // Labels are per image row; a study keeps the first value seen for each observation.
        for (k, v) in labels {
            s.labels.entry(k).or_insert(v);
        }
        s.images.push(ImageRef { path, view: Some(view) });
    }
    for id in order {
        if let Some(s) = studies.remove(&id) {
            sink.emit(s)?;
        }
    }
    Ok(())
}

fn split_dir(path: &str) -> &str {
    if path.contains("valid/") {
        "valid"
    } else if path.contains("test/") {
        "test"
    } else {
        "train"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{copy_asset, run, write};
    use super::super::{PrepareOptions, UncertaintyPolicy, ViewFilter};
    use super::*;

    #[test]
    fn chexpert_head500_with_policies() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        if !copy_asset("labels/chexpert_train_head500.csv", &root, "CheXpert-v1.0-small/train.csv")
        {
            return;
        }
        write(&root, "CheXpert-v1.0-small/valid.csv", b"Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices\nCheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n");
        let o = PrepareOptions::new("chexpert", &root, d.path().join("c.jsonl"));
        let (s, m) = run(o.clone());
        assert_eq!(s.images, 501);
        assert!(s.studies < 501 && s.studies > 300, "{}", s.studies);
        assert!(s.official_split);
        let first = &m[0];
        assert_eq!(first.id, "train/patient00001/study1");
        assert_eq!(
            first.images[0].path,
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
        );
        assert_eq!(first.images[0].view.as_deref(), Some("AP"));
        assert_eq!(first.labels["No Finding"], 1);
        assert_eq!(first.labels["Pneumothorax"], 0);
        assert_eq!(first.labels["Support Devices"], 1);
        let p2 = &m[1];
        assert_eq!(p2.labels["Cardiomegaly"], -1);
        assert_eq!(p2.labels["Lung Opacity"], 1);
        assert!(!p2.labels.contains_key("Lung Lesion"));
        let v = m.iter().find(|s| s.split == Some(Split::Validate)).unwrap();
        assert_eq!(v.patient_id.as_deref(), Some("patient64541"));
        assert!(s.labels["Cardiomegaly"]["-1"] > 0);
        // policies
        let mut o1 = o.clone();
        o1.uncertainty = UncertaintyPolicy::Ones;
        let (s1, m1) = run(o1);
        assert_eq!(m1[1].labels["Cardiomegaly"], 1);
        assert!(!s1.labels["Cardiomegaly"].contains_key("-1"));
        let mut oi = o.clone();
        oi.uncertainty = UncertaintyPolicy::Ignore;
        let (_, mi) = run(oi);
        assert!(!mi[1].labels.contains_key("Cardiomegaly"));
        let mut oz = o.clone();
        oz.uncertainty = UncertaintyPolicy::Zeros;
        let (_, mz) = run(oz);
        assert_eq!(mz[1].labels["Cardiomegaly"], 0);
        // frontal only: every image kept is frontal
        let mut of = o;
        of.views = ViewFilter::Frontal;
        let (sf, mf) = run(of);
        assert!(sf.images < 501);
        assert!(mf.iter().flat_map(|s| &s.images).all(|i| i.view.as_deref() != Some("LATERAL")));
    }

    #[test]
    fn chexpert_csv_at_root_resolves_prefix() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "train.csv", b"Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly\nCheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,\nCheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,,1.0\nbad/path.jpg,F,1,Frontal,AP,,\nCheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,F,1,Frontal,AP,,7\n");
        let (s, m) = run(PrepareOptions::new("chexpert", d.path(), d.path().join("o/c.jsonl")));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].images[0].path, "train/patient00001/study1/view1_frontal.jpg");
        assert_eq!(m[0].images[1].view.as_deref(), Some("LATERAL"));
        assert_eq!(m[0].labels["Cardiomegaly"], 1);
        assert_eq!(s.dropped["malformed CheXpert path"], 1);
        assert!(s.dropped_examples["bad label value"][0].contains("train.csv:5"));
    }
}
