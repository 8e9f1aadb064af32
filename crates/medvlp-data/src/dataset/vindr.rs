//! VinDr-CXR (VinBigData): `train.csv` with one row per (image, radiologist, finding box).
//! A class is positive (1) when any radiologist marked it, else 0; "No finding" is 1 only when
//! no radiologist marked a finding. Images `train/{image_id}.dicom`.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};

use super::{at, col, csv_reader, find_file_by, ImageRef, Sink, Study};

pub const CLASSES: [&str; 15] = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
];

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    let Some(p) = find_file_by(&root, &|n: &str| n == "train.csv") else {
        bail!("{}: no VinDr train.csv found", root.display());
    };
    let (mut r, h) = csv_reader(&p)?;
    let (ci, cn) = (col(&h, &p, &["image_id"])?, col(&h, &p, &["class_name"])?);
    let mut order = Vec::new();
    let mut found: HashMap<String, Vec<&'static str>> = HashMap::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let id = rec.get(ci).unwrap_or("").trim().to_string();
        let name = rec.get(cn).unwrap_or("").trim();
        let Some(class) = CLASSES.iter().find(|c| c.eq_ignore_ascii_case(name)) else {
            sink.drop("unknown class_name", at(&p, &rec));
            continue;
        };
        if id.is_empty() {
            sink.drop("missing image_id", at(&p, &rec));
            continue;
        }
        let e = found.entry(id.clone()).or_insert_with(|| {
            order.push(id);
            Vec::new()
        });
        e.push(class);
    }
    for id in order {
        let f = &found[&id];
        let any_finding = f.iter().any(|c| *c != "No finding");
        let labels: BTreeMap<String, i8> = CLASSES
            .iter()
            .map(|c| {
                (
                    c.to_string(),
                    if *c == "No finding" { (!any_finding) as i8 } else { f.contains(c) as i8 },
                )
            })
            .collect();
        sink.emit(Study {
            id: id.clone(),
            images: vec![ImageRef { path: format!("train/{id}.dicom"), view: None }],
            labels,
            ..Default::default()
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{copy_asset, run};
    use super::super::PrepareOptions;

    #[test]
    fn vindr_head500() {
        let d = tempfile::tempdir().unwrap();
        if !copy_asset("labels/vinbigdata_train_head500.csv", d.path(), "train.csv") {
            return;
        }
        let text = std::fs::read_to_string(d.path().join("train.csv")).unwrap();
        let ids: std::collections::HashSet<&str> =
            text.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
        let (s, m) = run(PrepareOptions::new("vindr", d.path(), d.path().join("v.jsonl")));
        assert_eq!(s.studies, ids.len());
        let first = &m[0];
        assert_eq!(first.id, "50a418190bc3fb1ef1633bf9678929b3");
        assert_eq!(first.images[0].path, "train/50a418190bc3fb1ef1633bf9678929b3.dicom");
        for st in &m {
            let any = st.labels.iter().any(|(k, v)| k != "No finding" && *v == 1);
            assert_eq!(st.labels["No finding"] == 1, !any, "{}", st.id);
        }
        assert!(s.labels["Aortic enlargement"]["1"] > 0);
    }
}
