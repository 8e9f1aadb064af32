//! PadChest: the labels CSV (`ImageID, ImageDir, StudyID, PatientID, Projection, Report, Labels`,
//! ...). Studies group images by StudyID; the stemmed Spanish `Report` becomes the findings text;
//! `Labels` is a Python list string (e.g. `['normal', 'pleural effusion']`) and its labels are
//! set to 1 (PadChest has no explicit negatives). Images `{ImageDir}/{ImageID}`.

use std::collections::HashMap;

use anyhow::{bail, Result};

use super::{at, col, csv_reader, find_file_by, ImageRef, Sink, Study};

/// Parse a Python list-of-strings literal; None when it is not one.
pub fn parse_py_list(s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let q = rest.chars().next()?;
        if q != '\'' && q != '"' {
            return None;
        }
        let end = rest[1..].find(q)? + 1;
        let item = rest[1..end].trim();
        if !item.is_empty() {
            out.push(item.to_string());
        }
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(out)
}

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    sink.has_reports = true;
    let Some(p) = find_file_by(&root, &|n: &str| {
        n.starts_with("PADCHEST") && (n.ends_with(".csv") || n.ends_with(".csv.gz"))
    }) else {
        bail!("{}: no PADCHEST_*.csv found", root.display());
    };
    let (mut r, h) = csv_reader(&p)?;
    let (cimg, cdir, cst, cpat) = (
        col(&h, &p, &["ImageID"])?,
        col(&h, &p, &["ImageDir"])?,
        col(&h, &p, &["StudyID"])?,
        col(&h, &p, &["PatientID"])?,
    );
    let (cproj, crep, clab) =
        (col(&h, &p, &["Projection"])?, col(&h, &p, &["Report"])?, col(&h, &p, &["Labels"])?);
    let mut order = Vec::new();
    let mut studies: HashMap<String, Study> = HashMap::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let g = |c: usize| rec.get(c).unwrap_or("").trim().to_string();
        let (img, study) = (g(cimg), g(cst));
        if img.is_empty() || study.is_empty() {
            sink.drop("missing ImageID or StudyID", at(&p, &rec));
            continue;
        }
        let labels = match parse_py_list(&g(clab)) {
            Some(l) => l,
            None => {
                sink.drop("unparseable Labels (image kept without labels)", at(&p, &rec));
                Vec::new()
            }
        };
        let s = studies.entry(study.clone()).or_insert_with(|| {
            order.push(study.clone());
            let mut st =
                Study { id: study.clone(), patient_id: Some(g(cpat)), ..Default::default() };
            st.sections.insert("findings".into(), g(crep));
            st
        });
        for l in labels {
            s.labels.insert(l, 1);
        }
        let dir = g(cdir);
        let path = if dir.is_empty() { img } else { format!("{dir}/{img}") };
        let view = Some(g(cproj)).filter(|v| !v.is_empty());
        s.images.push(ImageRef { path, view });
    }
    for id in order {
        if let Some(s) = studies.remove(&id) {
            sink.emit(s)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{copy_asset, run};
    use super::super::{PrepareOptions, ViewFilter};
    use super::*;

    #[test]
    fn py_list() {
        assert_eq!(parse_py_list("['normal']").unwrap(), vec!["normal"]);
        assert_eq!(parse_py_list("['a b', \"c\", '']").unwrap(), vec!["a b", "c"]);
        assert_eq!(parse_py_list("[]").unwrap(), Vec::<String>::new());
        assert!(parse_py_list("nan").is_none());
        assert!(parse_py_list("['x").is_none());
    }

    #[test]
    fn padchest_head100() {
        let d = tempfile::tempdir().unwrap();
        if !copy_asset(
            "labels/padchest_labels_head100.csv",
            d.path(),
            "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
        ) {
            return;
        }
        let mut o = PrepareOptions::new("padchest", d.path(), d.path().join("p.jsonl"));
        let (s, m) = run(o.clone());
        assert!(
            s.images > 50 && s.studies <= s.images && s.studies > 30,
            "{} images {} studies",
            s.images,
            s.studies
        );
        let a = &m[0];
        assert_eq!(a.id, "20536686640136348236148679891455886468");
        assert_eq!(a.images[0].path, "0/20536686640136348236148679891455886468_k6ga29.png");
        assert_eq!(a.images[0].view.as_deref(), Some("PA"));
        assert_eq!(a.labels["normal"], 1);
        assert_eq!(a.text.as_deref(), Some("sin hallazg patolog edad pacient ."));
        o.views = ViewFilter::Frontal;
        let (sf, _) = run(o);
        assert!(sf.images < s.images, "laterals (L) filtered");
    }
}
