//! Generic adapter: a CSV or JSONL file (relative to the root, or absolute) with one study per
//! row; columns named by flags. `path` may hold several images separated by `;`. The text column
//! is sectioned like a MIMIC report when it has FINDINGS:/IMPRESSION: headers, else it is the
//! findings. Label cells use 1/0/-1/blank (JSONL: numbers, or strings of them).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::sections::parse_sections;
use super::{at, col, csv_reader, open_maybe_gz, parse_label, ImageRef, Sink, Split, Study};

#[derive(Debug, Clone)]
pub struct GenericColumns {
    pub file: Option<PathBuf>,
    pub id: Option<String>,
    pub path: String,
    pub text: Option<String>,
    pub labels: Vec<String>,
    pub patient: Option<String>,
    pub split: Option<String>,
    pub view: Option<String>,
}

impl Default for GenericColumns {
    fn default() -> Self {
        GenericColumns {
            file: None,
            id: None,
            path: "path".into(),
            text: None,
            labels: vec![],
            patient: None,
            split: None,
            view: None,
        }
    }
}

fn sections_of(text: &str) -> BTreeMap<String, String> {
    let t = text.trim();
    if t.is_empty() {
        return BTreeMap::new();
    }
    let up = t.to_ascii_uppercase();
    if up.contains("FINDINGS:") || up.contains("IMPRESSION:") {
        let s = parse_sections(&format!("\n {}", t.replace('\n', "\n ")));
        if s.contains_key("findings") || s.contains_key("impression") {
            return s;
        }
    }
    [("findings".to_string(), t.split_whitespace().collect::<Vec<_>>().join(" "))].into()
}

struct Row {
    id: Option<String>,
    paths: String,
    text: Option<String>,
    labels: Vec<(String, String)>,
    patient: Option<String>,
    split: Option<String>,
    view: Option<String>,
}

fn emit(sink: &mut Sink, row: Row, n: usize, here: String) -> Result<()> {
    let mut labels = BTreeMap::new();
    for (k, v) in &row.labels {
        match parse_label(v) {
            Ok(Some(x)) => {
                labels.insert(k.clone(), x);
            }
            Ok(None) => {}
            Err(e) => {
                sink.drop("bad label value", format!("{here}: {e}"));
                return Ok(());
            }
        }
    }
    let images: Vec<ImageRef> = row
        .paths
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| ImageRef { path: p.to_string(), view: row.view.clone().filter(|v| !v.is_empty()) })
        .collect();
    if images.is_empty() {
        sink.drop("no image path", here);
        return Ok(());
    }
    let split = match row.split.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => match Split::parse(s) {
            Some(x) => Some(x),
            None => {
                sink.drop("unknown split value", format!("{here}: {s:?}"));
                return Ok(());
            }
        },
        None => None,
    };
    if split.is_some() {
        sink.official_split = true;
    }
    sink.emit(Study {
        id: row.id.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| format!("row{n}")),
        patient_id: row.patient.filter(|s| !s.trim().is_empty()),
        images,
        sections: row.text.as_deref().map(sections_of).unwrap_or_default(),
        labels,
        split,
        ..Default::default()
    })
}

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    let c = sink.options().generic.clone();
    let Some(file) = c.file.clone() else { bail!("generic dataset needs --file (CSV or JSONL)") };
    let file = if file.is_absolute() { file } else { root.join(file) };
    sink.has_reports = c.text.is_some();
    let name = file.to_string_lossy().to_lowercase();
    if name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") || name.ends_with(".ndjson") {
        let r = std::io::BufReader::new(open_maybe_gz(&file)?);
        for (i, line) in r.lines().enumerate() {
            let here = format!("{}:{}", file.display(), i + 1);
            let line = line.with_context(|| here.clone())?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => {
                    sink.drop("invalid JSON line", format!("{here}: {e}"));
                    continue;
                }
            };
            let s = |k: &Option<String>| -> Option<String> {
                k.as_ref().and_then(|k| v.get(k)).map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::Array(a) => {
                        a.iter().filter_map(|e| e.as_str()).collect::<Vec<_>>().join(";")
                    }
                    other => other.to_string(),
                })
            };
            let row = Row {
                id: s(&c.id),
                paths: s(&Some(c.path.clone())).unwrap_or_default(),
                text: s(&c.text),
                labels: c
                    .labels
                    .iter()
                    .map(|l| (l.clone(), s(&Some(l.clone())).unwrap_or_default()))
                    .collect(),
                patient: s(&c.patient),
                split: s(&c.split),
                view: s(&c.view),
            };
            emit(sink, row, i + 1, here)?;
        }
    } else {
        let (mut r, h) = csv_reader(&file)?;
        let idx = |n: &Option<String>| -> Result<Option<usize>> {
            n.as_ref().map(|n| col(&h, &file, &[n.as_str()])).transpose()
        };
        let (ci, ct, cp, cs, cv) =
            (idx(&c.id)?, idx(&c.text)?, idx(&c.patient)?, idx(&c.split)?, idx(&c.view)?);
        let cpath = col(&h, &file, &[c.path.as_str()])?;
        let cl: Vec<(String, usize)> = c
            .labels
            .iter()
            .map(|l| Ok((l.clone(), col(&h, &file, &[l.as_str()])?)))
            .collect::<Result<_>>()?;
        for (n, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let g = |i: Option<usize>| i.map(|i| rec.get(i).unwrap_or("").to_string());
            let row = Row {
                id: g(ci),
                paths: rec.get(cpath).unwrap_or("").to_string(),
                text: g(ct),
                labels: cl
                    .iter()
                    .map(|(l, i)| (l.clone(), rec.get(*i).unwrap_or("").to_string()))
                    .collect(),
                patient: g(cp),
                split: g(cs),
                view: g(cv),
            };
            emit(sink, row, n + 1, at(&file, &rec))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{run, write};
    use super::super::PrepareOptions;
    use super::*;

    #[test]
    fn generic_csv_and_jsonl() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "data.csv", b"uid,img,report,Edema,pid,set\na,x/1.png;x/2.png,\"FINDINGS: Lungs clear.\nIMPRESSION: Normal.\",1,p1,train\nb,x/3.png,Mild edema.,-1.0,p2,test\nc,x/4.png,,0,p3,train\nd,x/5.png,Text.,7,p4,train\n");
        let mut o = PrepareOptions::new("generic", d.path(), d.path().join("g.jsonl"));
        o.generic = GenericColumns {
            file: Some("data.csv".into()),
            id: Some("uid".into()),
            path: "img".into(),
            text: Some("report".into()),
            labels: vec!["Edema".into()],
            patient: Some("pid".into()),
            split: Some("set".into()),
            view: None,
        };
        let (s, m) = run(o.clone());
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].images.len(), 2);
        assert_eq!(m[0].text.as_deref(), Some("Lungs clear.\n\nNormal."));
        assert_eq!(m[1].labels["Edema"], -1);
        assert_eq!(m[1].sections["findings"], "Mild edema.");
        assert_eq!(m[1].split, Some(Split::Test));
        assert_eq!(s.dropped["no findings or impression"], 1);
        assert!(s.dropped_examples["bad label value"][0].contains("data.csv:6"));
        write(d.path(), "data.jsonl", b"{\"uid\":\"a\",\"img\":[\"y/1.png\"],\"report\":\"Clear.\",\"Edema\":0}\nnot json\n{\"uid\":\"b\",\"img\":\"y/2.png\",\"report\":\"Effusion.\",\"Edema\":\"1\"}\n");
        o.generic.file = Some("data.jsonl".into());
        o.generic.patient = None;
        o.generic.split = None;
        let (s, m) = run(o);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].images[0].path, "y/1.png");
        assert_eq!(m[1].labels["Edema"], 1);
        assert_eq!(s.dropped["invalid JSON line"], 1);
        assert!(!s.official_split);
    }
}
