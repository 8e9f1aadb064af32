//! RSNA Pneumonia Detection: `stage_2_train_labels.csv` (one row per box, or one row with an
//! empty box when Target = 0), images `stage_2_train_images/{patientId}.dcm`. One study per
//! patientId with labels "Lung Opacity" = "Pneumonia" = Target. The view comes from a DICOM
//! header dump CSV (`*dicom_headers*.csv`, ViewPosition) when present, else from the DICOM file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Result};

use super::{at, col, csv_reader, find_file_by, ImageRef, Sink, Study};

/// ViewPosition read from a DICOM file's header only (stops before the pixel data).
pub fn dicom_view_position(path: &Path) -> Option<String> {
    use dicom_dictionary_std::tags;
    let obj =
        dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(path).ok()?;
    let v = obj.element_opt(tags::VIEW_POSITION).ok()??.to_str().ok()?.trim().to_string();
    (!v.is_empty()).then_some(v)
}

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    let Some(p) = find_file_by(&root, &|n: &str| {
        n == "stage_2_train_labels.csv" || n == "stage_1_train_labels.csv"
    }) else {
        bail!("{}: no stage_2_train_labels.csv found", root.display());
    };
    let mut views: HashMap<String, String> = HashMap::new();
    if let Some(hp) =
        find_file_by(&root, &|n: &str| n.contains("dicom_headers") && n.ends_with(".csv"))
    {
        let (mut r, h) = csv_reader(&hp)?;
        let (cid, cv) =
            (col(&h, &hp, &["PatientID", "patientId"])?, col(&h, &hp, &["ViewPosition"])?);
        for rec in r.records().flatten() {
            if let (Some(id), Some(v)) = (rec.get(cid), rec.get(cv)) {
                views.insert(id.trim().to_string(), v.trim().to_string());
            }
        }
    }
    let img_dir = if !root.join("stage_2_train_images").is_dir()
        && root.join("stage_1_train_images").is_dir()
    {
        "stage_1_train_images"
    } else {
        "stage_2_train_images"
    };
    let (mut r, h) = csv_reader(&p)?;
    let (cid, ct) = (col(&h, &p, &["patientId"])?, col(&h, &p, &["Target"])?);
    let mut order = Vec::new();
    let mut target: HashMap<String, i8> = HashMap::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let id = rec.get(cid).unwrap_or("").trim().to_string();
        let t = match rec.get(ct).map(str::trim) {
            Some("1") => 1,
            Some("0") => 0,
            _ => {
                sink.drop("bad Target value", at(&p, &rec));
                continue;
            }
        };
        if id.is_empty() {
            sink.drop("missing patientId", at(&p, &rec));
            continue;
        }
        match target.get_mut(&id) {
            Some(v) => *v = (*v).max(t),
            None => {
                order.push(id.clone());
                target.insert(id, t);
            }
        }
    }
    for id in order {
        let t = target[&id];
        let rel = format!("{img_dir}/{id}.dcm");
        let view = views.get(&id).cloned().or_else(|| dicom_view_position(&root.join(&rel)));
        let labels: BTreeMap<String, i8> =
            [("Lung Opacity".to_string(), t), ("Pneumonia".to_string(), t)].into();
        sink.emit(Study {
            id: id.clone(),
            patient_id: Some(id),
            images: vec![ImageRef { path: rel, view }],
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
    fn rsna_head500_groups_boxes() {
        let d = tempfile::tempdir().unwrap();
        if !copy_asset(
            "labels/rsna_stage_2_train_labels_head500.csv",
            d.path(),
            "stage_2_train_labels.csv",
        ) {
            return;
        }
        copy_asset(
            "labels/rsna_stage_2_train_dicom_headers_head200.csv",
            d.path(),
            "stage_2_train_dicom_headers.csv",
        );
        let text = std::fs::read_to_string(d.path().join("stage_2_train_labels.csv")).unwrap();
        let ids: std::collections::HashSet<&str> =
            text.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
        let positive: std::collections::HashSet<&str> = text
            .lines()
            .skip(1)
            .filter(|l| l.ends_with(",1"))
            .map(|l| l.split(',').next().unwrap())
            .collect();
        // one real DICOM: its view is read from the file
        let (s, m) = run(PrepareOptions::new("rsna", d.path(), d.path().join("r.jsonl")));
        assert_eq!(s.studies, ids.len());
        assert!(ids.len() < 500, "boxes grouped");
        let pos = m.iter().filter(|st| st.labels["Pneumonia"] == 1).count();
        assert_eq!(pos, positive.len());
        assert!(m[0].images[0].path.starts_with("stage_2_train_images/"));
        let with_view = m.iter().filter(|st| st.images[0].view.is_some()).count();
        assert!(
            with_view > 0 && with_view < m.len(),
            "views from the header dump for the ids it has"
        );
        assert!(m
            .iter()
            .filter_map(|st| st.images[0].view.as_deref())
            .all(|v| v == "PA" || v == "AP"));
        assert_eq!(s.labels["Lung Opacity"]["1"], positive.len());
    }

    #[test]
    fn rsna_view_from_dicom_file() {
        let d = tempfile::tempdir().unwrap();
        super::super::testutil::write(
            d.path(),
            "stage_2_train_labels.csv",
            b"patientId,x,y,width,height,Target\nrg1,,,,,0\nrg1x,1,2,3,4,1\n",
        );
        if !copy_asset("dicom/RG1_UNCR.dcm", d.path(), "stage_2_train_images/rg1.dcm") {
            return;
        }
        let (_, m) = run(PrepareOptions::new("rsna", d.path(), d.path().join("r.jsonl")));
        let expect = super::dicom_view_position(&d.path().join("stage_2_train_images/rg1.dcm"));
        assert_eq!(m[0].images[0].view, expect);
        assert_eq!(m[1].labels["Pneumonia"], 1);
        assert_eq!(m[1].images[0].view, None);
    }
}
