//! COVIDx CXR: space-separated label files without header, `patient_id filename label source`
//! (filenames may contain dots), 3-class (`normal | pneumonia | COVID-19`) or binary
//! (`positive | negative`). The split comes from the label file name (train/val/test), images
//! from the matching `train/`, `val/` or `test/` folder.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::{ImageRef, Sink, Split, Study};

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    let mut files: Vec<_> = std::fs::read_dir(&root)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut any = false;
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_lowercase();
        let (split, dir) = if name.contains("train") {
            (Split::Train, "train")
        } else if name.contains("val") {
            (Split::Validate, "val")
        } else if name.contains("test") {
            (Split::Test, "test")
        } else {
            continue;
        };
        any = true;
        sink.official_split = true;
        let text =
            std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let toks: Vec<&str> = line.split_whitespace().collect();
            if toks.is_empty() {
                continue;
            }
            let here = format!("{}:{}", f.display(), i + 1);
            if toks.len() < 3 {
                sink.drop("malformed COVIDx line", here);
                continue;
            }
            let (patient, file, label) = (toks[0], toks[1], toks[2]);
            let labels: BTreeMap<String, i8> = match label.to_ascii_lowercase().as_str() {
                "positive" => [("COVID-19".to_string(), 1)].into(),
                "negative" => [("COVID-19".to_string(), 0)].into(),
                l @ ("normal" | "pneumonia" | "covid-19") => [
                    ("COVID-19".to_string(), (l == "covid-19") as i8),
                    ("Pneumonia".to_string(), (l == "pneumonia") as i8),
                    ("Normal".to_string(), (l == "normal") as i8),
                ]
                .into(),
                _ => {
                    sink.drop("unknown COVIDx label", here);
                    continue;
                }
            };
            sink.emit(Study {
                id: format!("{dir}/{file}"),
                patient_id: Some(patient.to_string()),
                images: vec![ImageRef { path: format!("{dir}/{file}"), view: None }],
                labels,
                split: Some(split),
                ..Default::default()
            })?;
        }
    }
    if !any {
        bail!("{}: no COVIDx label file (*train*.txt / *test*.txt) found", root.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{run, write};
    use super::super::PrepareOptions;
    use super::*;

    #[test]
    fn covidx_three_class_and_binary() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "train_COVIDx9A.txt", b"419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png COVID-19 ricord\n3 a.b.c.jpeg normal rsna\n4 x.png pneumonia cohen\nbad line\n5 y.png weird src\n");
        write(
            d.path(),
            "test_COVIDx9B.txt",
            b"9 t.1.png positive bimcv\n10 t2.png negative rsna\n",
        );
        let (s, m) = run(PrepareOptions::new("covidx", d.path(), d.path().join("x.jsonl")));
        assert_eq!(m.len(), 5);
        let a = m.iter().find(|s| s.id.ends_with("46647-0.png")).unwrap();
        assert_eq!(a.images[0].path, "train/MIDRC-RICORD-1C-419639-003251-46647-0.png");
        assert_eq!(a.patient_id.as_deref(), Some("419639-003251"));
        assert_eq!((a.labels["COVID-19"], a.labels["Normal"]), (1, 0));
        let b = m.iter().find(|s| s.id == "train/a.b.c.jpeg").unwrap();
        assert_eq!(b.labels["Normal"], 1);
        let t = m.iter().find(|s| s.id == "test/t.1.png").unwrap();
        assert_eq!(t.split, Some(Split::Test));
        assert_eq!(t.labels.len(), 1);
        assert_eq!(s.dropped["malformed COVIDx line"], 1);
        assert!(s.dropped_examples["unknown COVIDx label"][0].ends_with("train_COVIDx9A.txt:5"));
    }
}
