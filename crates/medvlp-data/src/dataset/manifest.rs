//! The manifest: JSONL, one study per line, shared by every dataset adapter and the synthetic
//! benchmark. Field names are a contract (see the `Study` docs); all but `id` are optional.
//!
//! ```json
//! {"id": "s50414267", "patient_id": "p10000032",
//!  "images": [{"path": "files/p10/p10000032/s50414267/02aa...jpg", "view": "PA"}],
//!  "sections": {"findings": "...", "impression": "..."}, "text": "findings + impression",
//!  "labels": {"Cardiomegaly": 1, "Edema": -1}, "split": "train"}
//! ```
//! Labels: 1 positive, 0 negative, -1 uncertain, absent key = not mentioned.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validate,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validate => "validate",
            Split::Test => "test",
        }
    }
    /// Accepts the spellings the datasets use ("val", "valid", "validation", ...).
    pub fn parse(s: &str) -> Option<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Split::Train),
            "validate" | "valid" | "val" | "validation" | "dev" => Some(Split::Validate),
            "test" | "testing" => Some(Split::Test),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Relative to the manifest's image root (the `--root` given to `prepare`), or absolute.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Study {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRef>,
    /// Report sections by normalised name (findings, impression, indication, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sections: BTreeMap<String, String>,
    /// Training text: findings + impression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, i8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

impl Study {
    /// findings + impression (each trimmed, joined by a blank line), or None when both are empty.
    pub fn findings_impression(&self) -> Option<String> {
        let parts: Vec<&str> = ["findings", "impression"]
            .iter()
            .filter_map(|k| self.sections.get(*k).map(|s| s.trim()).filter(|s| !s.is_empty()))
            .collect();
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    fn check(&self) -> Result<()> {
        if self.id.trim().is_empty() {
            bail!("empty \"id\"");
        }
        for (k, v) in &self.labels {
            if !matches!(v, -1..=1) {
                bail!("label {k:?} has value {v}; expected 1, 0 or -1");
            }
        }
        Ok(())
    }
}

/// Streaming reader with line-numbered errors. Blank lines are skipped.
pub struct ManifestReader<R> {
    path: PathBuf,
    lines: std::io::Lines<R>,
    line_no: usize,
}

impl ManifestReader<BufReader<File>> {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f =
            File::open(path).with_context(|| format!("cannot open manifest {}", path.display()))?;
        Ok(Self::new(BufReader::new(f), path))
    }
}

impl<R: BufRead> ManifestReader<R> {
    pub fn new(reader: R, path: impl AsRef<Path>) -> Self {
        ManifestReader { path: path.as_ref().to_path_buf(), lines: reader.lines(), line_no: 0 }
    }
}

impl<R: BufRead> Iterator for ManifestReader<R> {
    type Item = Result<Study>;
    fn next(&mut self) -> Option<Result<Study>> {
        loop {
            let line = self.lines.next()?;
            self.line_no += 1;
            let at = || format!("{}:{}", self.path.display(), self.line_no);
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    return Some(
                        Err(anyhow::Error::new(e).context(format!("{}: read error", at()))),
                    )
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let study: Study = match serde_json::from_str(&line) {
                Ok(s) => s,
                Err(e) => {
                    return Some(Err(anyhow::anyhow!("{}: invalid manifest line: {e}", at())))
                }
            };
            if let Err(e) = study.check() {
                return Some(Err(anyhow::anyhow!("{}: {e}", at())));
            }
            return Some(Ok(study));
        }
    }
}

/// Read a whole manifest (fails on the first bad line, naming it).
pub fn read_manifest(path: impl AsRef<Path>) -> Result<Vec<Study>> {
    ManifestReader::open(path)?.collect()
}

/// Buffered JSONL writer.
pub struct ManifestWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl ManifestWriter {
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let f = File::create(path)
            .with_context(|| format!("cannot create manifest {}", path.display()))?;
        Ok(ManifestWriter { path: path.to_path_buf(), out: BufWriter::with_capacity(1 << 20, f) })
    }
    pub fn write(&mut self, s: &Study) -> Result<()> {
        serde_json::to_writer(&mut self.out, s)?;
        self.out.write_all(b"\n").with_context(|| format!("writing {}", self.path.display()))
    }
    pub fn finish(mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut s = Study { id: "s1".into(), patient_id: Some("p1".into()), ..Default::default() };
        s.images.push(ImageRef { path: "a/b.jpg".into(), view: Some("PA".into()) });
        s.sections.insert("findings".into(), "Clear lungs.".into());
        s.sections.insert("impression".into(), "No acute process.".into());
        s.text = s.findings_impression();
        s.labels.insert("Cardiomegaly".into(), -1);
        s.split = Some(Split::Validate);
        let mut w = ManifestWriter::create(&p).unwrap();
        w.write(&s).unwrap();
        w.write(&Study { id: "only-id".into(), ..Default::default() }).unwrap();
        w.finish().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["images"][0]["view"], "PA");
        assert_eq!(v["split"], "validate");
        assert_eq!(v["labels"]["Cardiomegaly"], -1);
        assert_eq!(v["text"], "Clear lungs.\n\nNo acute process.");
        assert_eq!(text.lines().nth(1).unwrap(), r#"{"id":"only-id"}"#);
        let back = read_manifest(&p).unwrap();
        assert_eq!(back[0], s);
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn errors_carry_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.jsonl");
        std::fs::write(&p, "{\"id\":\"a\"}\n\n{\"id\":\"b\",\"labels\":{\"X\":2}}\n").unwrap();
        let e = read_manifest(&p).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:3") && e.contains("\"X\""), "{e}");
        std::fs::write(&p, "{\"id\":\"a\"}\n{\"patient_id\":\"x\"}\n").unwrap();
        let e = read_manifest(&p).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2"), "{e}");
        std::fs::write(&p, "{\"id\":\"a\",\"split\":\"holdout\"}\n").unwrap();
        assert!(read_manifest(&p).unwrap_err().to_string().contains("bad.jsonl:1"));
        assert!(read_manifest(dir.path().join("nope.jsonl"))
            .unwrap_err()
            .to_string()
            .contains("nope.jsonl"));
    }

    #[test]
    fn split_spellings() {
        assert_eq!(Split::parse("val"), Some(Split::Validate));
        assert_eq!(Split::parse(" TEST "), Some(Split::Test));
        assert_eq!(Split::parse("x"), None);
    }
}
