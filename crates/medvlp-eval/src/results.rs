//! Results records: `results.jsonl` (one JSON object per metric per line), a markdown summary
//! with one table per task, and [`markdown_table`], the workspace's one markdown table writer
//! (the summary here, `medvlp quickstart`'s and `medvlp compare`'s comparison tables).

use crate::retrieval::Direction;
use crate::stats::Estimate;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Evaluation task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Task {
    #[serde(rename = "zero-shot")]
    ZeroShot,
    #[serde(rename = "linear-probe")]
    LinearProbe,
    #[serde(rename = "finetune")]
    Finetune,
    #[serde(rename = "retrieval")]
    Retrieval,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::ZeroShot => "zero-shot",
            Task::LinearProbe => "linear-probe",
            Task::Finetune => "finetune",
            Task::Retrieval => "retrieval",
        }
    }
}

/// The protocol a result was made with (BenchX: results are only comparable under the same one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    /// Model directory or name.
    pub model: String,
    /// Hash of the model weights, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
    /// Dataset manifest path.
    pub manifest: String,
    /// Hash of the split / ID list used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_hash: Option<String>,
    pub split: String,
    /// Prompt file name -> sha256 (zero-shot).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompt_hashes: BTreeMap<String, String>,
    /// Report field used as text (e.g. "findings+impression").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    /// Image preprocessing (the data crate's config, serialised).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub preprocessing: serde_json::Value,
    /// Anything else (prompt mode, temperature, pool size, lambda, seeds, the exact prompts...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One line of `results.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub task: Task,
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub value: f64,
    /// `null` when no interval was computed.
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub split: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    pub protocol: Protocol,
}

impl ResultRecord {
    /// A record from an estimate; the split is taken from the protocol.
    pub fn new(task: Task, metric: impl Into<String>, est: &Estimate, protocol: &Protocol) -> Self {
        ResultRecord {
            task,
            metric: metric.into(),
            class: None,
            value: est.value,
            ci_low: est.ci.map(|c| c.low),
            ci_high: est.ci.map(|c| c.high),
            split: protocol.split.clone(),
            label_fraction: None,
            direction: None,
            protocol: protocol.clone(),
        }
    }
    pub fn class(mut self, class: impl Into<String>) -> Self {
        self.class = Some(class.into());
        self
    }
    pub fn label_fraction(mut self, f: f64) -> Self {
        self.label_fraction = Some(f);
        self
    }
    pub fn direction(mut self, d: Direction) -> Self {
        self.direction = Some(d);
        self
    }
}

/// Appends records to a JSONL file (created if missing), one object per line.
pub fn append_jsonl(path: &Path, records: &[ResultRecord]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open for writing", path.display()))?;
    let mut buf = String::new();
    for r in records {
        anyhow::ensure!(
            r.value.is_finite(),
            "{}: refusing to write non-finite {} value",
            path.display(),
            r.metric
        );
        buf.push_str(&serde_json::to_string(r)?);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes()).with_context(|| format!("{}: write failed", path.display()))
}

/// Reads a JSONL results file; errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<ResultRecord>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a result record", path.display(), i + 1))
        })
        .collect()
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 && v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

/// A markdown table: the header row, the `|---|` rule and one line per row, each line
/// `| a | b |` and newline-terminated. Cells are written as given (escape `|` in free text with
/// [`escape_cell`]); every row has the header's number of cells.
pub fn markdown_table<S: AsRef<str>>(header: &[S], rows: &[Vec<String>]) -> String {
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::from("|");
        for c in cells {
            l.push(' ');
            l.push_str(c);
            l.push_str(" |");
        }
        l.push('\n');
        l
    };
    let mut out = line(&mut header.iter().map(|h| h.as_ref()));
    out.push('|');
    out.push_str(&"---|".repeat(header.len()));
    out.push('\n');
    for r in rows {
        debug_assert_eq!(r.len(), header.len(), "markdown_table: ragged row {r:?}");
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

/// A table cell from free text: `|` escaped.
pub fn escape_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A markdown summary: one table per task (in task order), rows in record order.
pub fn markdown_summary(records: &[ResultRecord]) -> String {
    let mut tasks: Vec<Task> = records.iter().map(|r| r.task).collect();
    tasks.sort();
    tasks.dedup();
    let header = ["metric", "class", "direction", "labels", "split", "value", "95% CI"];
    let mut out = String::new();
    for t in tasks {
        let rows: Vec<Vec<String>> = records
            .iter()
            .filter(|r| r.task == t)
            .map(|r| {
                let ci = match (r.ci_low, r.ci_high) {
                    (Some(l), Some(h)) => format!("{} - {}", fmt(l), fmt(h)),
                    _ => String::new(),
                };
                vec![
                    escape_cell(
                        &match r.protocol.extra.get("prompt_mode").and_then(|m| m.as_str()) {
                            Some(m) => format!("{} ({m})", r.metric),
                            None => r.metric.clone(),
                        },
                    ),
                    escape_cell(r.class.as_deref().unwrap_or("")),
                    r.direction.map_or("", |d| d.as_str()).to_string(),
                    r.label_fraction.map_or(String::new(), |f| format!("{}%", f * 100.0)),
                    escape_cell(&r.split),
                    fmt(r.value),
                    ci,
                ]
            })
            .collect();
        out.push_str(&format!("## {}\n\n", t.as_str()));
        out.push_str(&markdown_table(&header, &rows));
        out.push('\n');
    }
    out
}

/// Writes [`markdown_summary`] with a title line.
pub fn write_markdown(path: &Path, title: &str, records: &[ResultRecord]) -> Result<()> {
    let text = format!("# {title}\n\n{}", markdown_summary(records));
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Ci;
    use medvlp_data::hash::sha256_hex;

    fn protocol() -> Protocol {
        let mut p = Protocol {
            model: "runs/xlip".into(),
            manifest: "data/synth/manifest.jsonl".into(),
            split: "test".into(),
            text_field: Some("findings+impression".into()),
            ..Default::default()
        };
        p.prompt_hashes.insert("chexpert5.toml".into(), sha256_hex(b"abc"));
        p.extra.insert("prompt_mode".into(), serde_json::json!("ensemble"));
        p
    }

    #[test]
    fn json_shape_and_roundtrip() {
        let est = Estimate {
            value: 0.8125,
            ci: Some(Ci { low: 0.75, high: 0.875, resamples_used: 1000 }),
        };
        let r = ResultRecord::new(Task::ZeroShot, "auroc", &est, &protocol()).class("Edema");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["task"], "zero-shot");
        assert_eq!(v["class"], "Edema");
        assert_eq!(v["ci_low"], 0.75);
        assert_eq!(v["split"], "test");
        assert!(v.get("direction").is_none() && v.get("label_fraction").is_none());
        assert_eq!(v["protocol"]["prompt_mode"], "ensemble");
        assert_eq!(
            v["protocol"]["prompt_hashes"]["chexpert5.toml"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let r2 = ResultRecord::new(
            Task::Retrieval,
            "recall@10",
            &Estimate { value: 0.3, ci: None },
            &protocol(),
        )
        .direction(Direction::ImageToText);
        let v2 = serde_json::to_value(&r2).unwrap();
        assert_eq!(v2["direction"], "image_to_text");
        assert!(v2["ci_low"].is_null());

        let dir = std::env::temp_dir().join(format!("medvlp-eval-results-{}", std::process::id()));
        let path = dir.join("results.jsonl");
        let _ = std::fs::remove_file(&path);
        append_jsonl(&path, std::slice::from_ref(&r)).unwrap();
        append_jsonl(&path, std::slice::from_ref(&r2)).unwrap();
        assert_eq!(read_jsonl(&path).unwrap(), vec![r.clone(), r2.clone()]);
        std::fs::write(&path, "{\"task\": 1}\n").unwrap();
        let e = format!("{:#}", read_jsonl(&path).unwrap_err());
        assert!(e.contains("results.jsonl:1"), "{e}");
        let bad = ResultRecord { value: f64::NAN, ..r.clone() };
        assert!(append_jsonl(&path, &[bad]).is_err());

        let md = markdown_summary(&[r2, r.clone().label_fraction(0.01)]);
        assert!(md.find("## zero-shot").unwrap() < md.find("## retrieval").unwrap());
        assert!(
            md.contains("| auroc (ensemble) | Edema |  | 1% | test | 0.8125 | 0.7500 - 0.8750 |"),
            "{md}"
        );
        assert!(
            md.contains("| recall@10 (ensemble) |  | image_to_text |  | test | 0.3000 |  |"),
            "{md}"
        );
        let head = "| metric | class | direction | labels | split | value | 95% CI |\n\
                    |---|---|---|---|---|---|---|\n";
        assert_eq!(
            md,
            format!(
                "## zero-shot\n\n{head}\
                 | auroc (ensemble) | Edema |  | 1% | test | 0.8125 | 0.7500 - 0.8750 |\n\n\
                 ## retrieval\n\n{head}\
                 | recall@10 (ensemble) |  | image_to_text |  | test | 0.3000 |  |\n\n"
            )
        );
        let odd = r.clone().class("a|b");
        assert!(markdown_summary(&[odd]).contains("| a\\|b |"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn markdown_table_layout() {
        let rows = vec![vec!["x".to_string(), String::new()], vec!["1".into(), "2".into()]];
        assert_eq!(
            markdown_table(&["a", "b"], &rows),
            "| a | b |\n|---|---|\n| x |  |\n| 1 | 2 |\n"
        );
        assert_eq!(markdown_table::<&str>(&["only"], &[]), "| only |\n|---|\n");
    }
}
