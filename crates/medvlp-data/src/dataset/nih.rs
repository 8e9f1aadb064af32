//! NIH ChestX-ray14: `Data_Entry_2017*.csv` (the bracketed header names contain commas, so columns
//! are found by name and the bracket halves are ignored), one image per study, 14 labels + No
//! Finding (complete: absent = 0). Official split from `train_val_list.txt` / `test_list.txt`
//! when present (validate carved from train_val by patient hash).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};

use super::{
    at, col, csv_reader, find_file_by, index_files, unit_hash, ImageRef, Sink, Split, Study,
};

pub const LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
];

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    let Some(p) =
        find_file_by(&root, &|n: &str| n.starts_with("Data_Entry_2017") && n.ends_with(".csv"))
    else {
        bail!("{}: no Data_Entry_2017*.csv found", root.display());
    };
    let mut official: HashMap<String, Split> = HashMap::new();
    for (name, split) in [("train_val_list.txt", Split::Train), ("test_list.txt", Split::Test)] {
        if let Some(f) = find_file_by(&root, &|n: &str| n == name) {
            let text =
                std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                official.insert(l.to_string(), split);
            }
        }
    }
    sink.official_split = !official.is_empty();
    let files = index_files(&root, &[".png"]);
    let (mut r, h) = csv_reader(&p)?;
    let (ci, cl, cpid) = (
        col(&h, &p, &["Image Index"])?,
        col(&h, &p, &["Finding Labels"])?,
        col(&h, &p, &["Patient ID"])?,
    );
    let cv = col(&h, &p, &["View Position"]).ok();
    let (seed, val_frac) = (sink.options().seed, sink.options().val_frac);
    for rec in r.records() {
        let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let img = rec.get(ci).unwrap_or("").trim();
        let pid = rec.get(cpid).unwrap_or("").trim();
        if img.is_empty() || pid.is_empty() {
            sink.drop("missing Image Index or Patient ID", at(&p, &rec));
            continue;
        }
        let found: Vec<&str> =
            rec.get(cl).unwrap_or("").split('|').map(str::trim).filter(|s| !s.is_empty()).collect();
        if let Some(bad) = found.iter().find(|f| **f != "No Finding" && !LABELS.contains(f)) {
            sink.drop("unknown finding label", format!("{}: {bad:?}", at(&p, &rec)));
            continue;
        }
        let mut labels: BTreeMap<String, i8> =
            LABELS.iter().map(|l| (l.to_string(), found.contains(l) as i8)).collect();
        labels.insert("No Finding".into(), found.contains(&"No Finding") as i8);
        let patient = format!("{:0>8}", pid);
        let split = if sink.official_split {
            match official.get(img) {
                Some(Split::Train) if unit_hash(seed, &patient) < val_frac => Some(Split::Validate),
                Some(s) => Some(*s),
                None => {
                    sink.drop("image not in train_val_list/test_list", at(&p, &rec));
                    continue;
                }
            }
        } else {
            None
        };
        let path = files.get(img).cloned().unwrap_or_else(|| format!("images/{img}"));
        let view =
            cv.and_then(|c| rec.get(c)).map(str::trim).filter(|v| !v.is_empty()).map(String::from);
        sink.emit(Study {
            id: img.trim_end_matches(".png").to_string(),
            patient_id: Some(patient),
            images: vec![ImageRef { path, view }],
            labels,
            split,
            ..Default::default()
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{copy_asset, run, write};
    use super::super::PrepareOptions;
    use super::*;

    #[test]
    fn nih_head500_bracketed_header() {
        let d = tempfile::tempdir().unwrap();
        if !copy_asset(
            "labels/nih_Data_Entry_2017_v2020_head500.csv",
            d.path(),
            "Data_Entry_2017_v2020.csv",
        ) {
            return;
        }
        write(d.path(), "images_001/images/00000001_000.png", b"x");
        let (s, m) = run(PrepareOptions::new("nih", d.path(), d.path().join("n.jsonl")));
        assert_eq!(s.studies, 500);
        assert!(!s.official_split);
        let a = &m[0];
        assert_eq!(a.id, "00000001_000");
        assert_eq!(a.patient_id.as_deref(), Some("00000001"));
        assert_eq!(a.images[0].path, "images_001/images/00000001_000.png");
        assert_eq!(a.images[0].view.as_deref(), Some("PA"));
        assert_eq!(a.labels["Cardiomegaly"], 1);
        assert_eq!(a.labels["Emphysema"], 0);
        assert_eq!(m[1].labels["Emphysema"], 1);
        assert_eq!(m[1].images[0].path, "images/00000001_001.png");
        // patient-level split: all studies of one patient share a split
        let mut by_p: HashMap<&str, Split> = HashMap::new();
        for st in &m {
            let e = by_p.entry(st.patient_id.as_deref().unwrap()).or_insert(st.split.unwrap());
            assert_eq!(*e, st.split.unwrap());
        }
        // with official lists
        write(d.path(), "train_val_list.txt", b"00000001_000.png\n00000001_001.png\n");
        write(d.path(), "test_list.txt", b"00000001_002.png\n");
        let (s, m) = run(PrepareOptions::new("nih", d.path(), d.path().join("n2.jsonl")));
        assert!(s.official_split);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].split, Some(Split::Test));
        assert_eq!(s.dropped["image not in train_val_list/test_list"], 497);
    }
}
