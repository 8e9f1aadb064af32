//! Labelling a file of reports (the library side of `medvlp label`).
//!
//! Input: JSONL with an `id` (any JSON value; the line number when missing) and a `text` string
//! per line, or plain text with one report per line (id = line number). Output: one JSONL line
//! per report, `{"id": .., "labels": {..}, "entities": [..]}`, in input order. A bad line (invalid
//! JSON, no `text`, invalid UTF-8) is reported as `FILE:LINE: why`, counted and skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::extract::Extractor;
use super::labels::label_entities;
use super::Entity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// JSONL when the first non-empty line starts with `{`, else plain text.
    Auto,
    Jsonl,
    Text,
}

#[derive(Debug, Default)]
pub struct LabelStats {
    pub labelled: usize,
    pub skipped: usize,
    /// `FILE:LINE: why` for every skipped line.
    pub errors: Vec<String>,
}

#[derive(Serialize)]
struct OutLine<'a> {
    id: &'a serde_json::Value,
    labels: &'a BTreeMap<String, i8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entities: Option<&'a [Entity]>,
}

const CHUNK: usize = 16_384;

/// One input line: only `id` and `text` are read (a manifest line's other fields are skipped
/// without being built).
#[derive(serde::Deserialize)]
struct InLine {
    #[serde(default, deserialize_with = "keep_null")]
    id: Option<serde_json::Value>,
    #[serde(default)]
    text: Option<serde_json::Value>,
}

/// `"id": null` is an id (null), not a missing one.
fn keep_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    <serde_json::Value as serde::Deserialize>::deserialize(d).map(Some)
}

fn parse_line(
    bytes: &[u8],
    lineno: usize,
    jsonl: bool,
) -> Result<Option<(serde_json::Value, String)>, String> {
    let s = std::str::from_utf8(bytes).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    let s = s.trim_end_matches(['\n', '\r']);
    if s.trim().is_empty() {
        return Ok(None);
    }
    if !jsonl {
        return Ok(Some((serde_json::Value::from(lineno), s.to_string())));
    }
    if !s.trim_start().starts_with('{') {
        // Not an object: say why, as JSON or as a value of the wrong kind.
        serde_json::from_str::<serde_json::Value>(s).map_err(|e| format!("invalid JSON: {e}"))?;
        return Err("expected a JSON object with \"text\"".into());
    }
    let line: InLine = serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}"))?;
    let text = match line.text {
        Some(serde_json::Value::String(t)) => t,
        Some(_) => return Err("\"text\" is not a string".into()),
        None => return Err("missing \"text\"".into()),
    };
    Ok(Some((line.id.unwrap_or_else(|| serde_json::Value::from(lineno)), text)))
}

/// Labels every report of `input` into `output`; see the module docs.
pub fn label_file(
    extractor: &Extractor,
    input: &Path,
    output: &Path,
    format: InputFormat,
    with_entities: bool,
) -> Result<LabelStats> {
    let name = input.display().to_string();
    let f = File::open(input).with_context(|| format!("opening {name}"))?;
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let jsonl = match format {
        InputFormat::Jsonl => true,
        InputFormat::Text => false,
        InputFormat::Auto => {
            let buf = reader.fill_buf().with_context(|| format!("reading {name}"))?;
            buf.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        }
    };
    let out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut stats = LabelStats::default();
    let mut lineno = 0usize;
    let mut eof = false;
    // One buffer holds a chunk's lines (no allocation per line); `lines` has their ranges.
    let mut block: Vec<u8> = Vec::new();
    let mut lines: Vec<(usize, usize, usize)> = Vec::with_capacity(CHUNK);
    while !eof {
        block.clear();
        lines.clear();
        while lines.len() < CHUNK {
            let start = block.len();
            let n =
                reader.read_until(b'\n', &mut block).with_context(|| format!("reading {name}"))?;
            if n == 0 {
                eof = true;
                break;
            }
            lineno += 1;
            lines.push((lineno, start, block.len()));
        }
        let results: Vec<Result<Option<Vec<u8>>, String>> = lines
            .par_iter()
            .map(|&(ln, start, end)| {
                let Some((id, text)) = parse_line(&block[start..end], ln, jsonl)? else {
                    return Ok(None);
                };
                let ents = extractor.extract(&text);
                let labels = if text.trim().is_empty() {
                    BTreeMap::new()
                } else {
                    label_entities(extractor, &ents)
                };
                let line = OutLine {
                    id: &id,
                    labels: &labels,
                    entities: with_entities.then_some(&ents[..]),
                };
                // Sized for the line so that serialising does not grow the buffer step by step.
                let mut buf =
                    Vec::with_capacity(64 + text.len() * if with_entities { 6 } else { 1 });
                serde_json::to_writer(&mut buf, &line)
                    .map(|()| Some(buf))
                    .map_err(|e| format!("serialising output: {e}"))
            })
            .collect();
        for (&(ln, _, _), r) in lines.iter().zip(results) {
            match r {
                Ok(Some(s)) => {
                    w.write_all(&s)?;
                    w.write_all(b"\n")?;
                    stats.labelled += 1;
                }
                Ok(None) => {}
                Err(why) => {
                    stats.skipped += 1;
                    stats.errors.push(format!("{name}:{ln}: {why}"));
                }
            }
        }
    }
    w.flush().with_context(|| format!("writing {}", output.display()))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::Convention;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("medvlp-labelfile-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn jsonl_with_bad_lines() {
        let input = tmp("in.jsonl");
        let mut data = b"{\"id\": \"a\", \"text\": \"No pneumothorax. Small left effusion.\"}\n\nnot json\n{\"id\": 7}\n".to_vec();
        data.extend_from_slice(
            b"{\"id\": 8, \"text\": \"caf\xff\"}\n{\"text\": \"Mild cardiomegaly.\"}",
        );
        std::fs::write(&input, data).unwrap();
        let output = tmp("out.jsonl");
        let st =
            label_file(Extractor::builtin(), &input, &output, InputFormat::Auto, true).unwrap();
        assert_eq!((st.labelled, st.skipped), (2, 3), "{:?}", st.errors);
        assert!(
            st.errors[0].ends_with("in.jsonl:3: invalid JSON: expected ident at line 1 column 2"),
            "{}",
            st.errors[0]
        );
        assert!(st.errors[1].contains(":4: missing \"text\""));
        assert!(st.errors[2].contains(":5: not valid UTF-8"));
        let out = std::fs::read_to_string(&output).unwrap();
        let lines: Vec<serde_json::Value> =
            out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["id"], "a");
        assert_eq!(lines[0]["labels"]["Pneumothorax"], 0);
        assert_eq!(lines[0]["labels"]["Pleural Effusion"], 1);
        let e = lines[0]["entities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["concept"] == "pneumothorax")
            .unwrap();
        assert_eq!(
            (e["start"].as_u64(), e["end"].as_u64(), e["type"].as_str()),
            (Some(3), Some(15), Some("finding"))
        );
        assert_eq!(e["assertion"], "absent");
        assert_eq!(lines[1]["id"], 6, "missing id falls back to the line number");
        assert_eq!(lines[1]["labels"]["Cardiomegaly"], 1);
    }

    #[test]
    fn ids_kinds_of_bad_lines_and_conventions() {
        let input = tmp("kinds.jsonl");
        std::fs::write(
            &input,
            "{\"id\": null, \"text\": \"Mild vascular congestion.\", \"labels\": {\"x\": [1, 2]}}\n[1]\n{\"text\": 3}\n",
        )
        .unwrap();
        for (convention, edema) in [(Convention::Chexpert, Some(1)), (Convention::Strict, None)] {
            let output = tmp(&format!("kinds-{convention}.jsonl"));
            let x = Extractor::builtin_for(convention);
            let st = label_file(x, &input, &output, InputFormat::Auto, false).unwrap();
            assert_eq!((st.labelled, st.skipped), (1, 2), "{:?}", st.errors);
            assert!(
                st.errors[0].ends_with(":2: expected a JSON object with \"text\""),
                "{:?}",
                st.errors
            );
            assert!(st.errors[1].ends_with(":3: \"text\" is not a string"), "{:?}", st.errors);
            let out = std::fs::read_to_string(&output).unwrap();
            let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            assert!(line["id"].is_null(), "an explicit null id stays null: {line}");
            assert_eq!(line["labels"].get("Edema").and_then(|v| v.as_i64()), edema);
        }
    }

    #[test]
    fn plain_text_one_report_per_line() {
        let input = tmp("in.txt");
        std::fs::write(&input, "Possible pneumonia.\r\nNo acute cardiopulmonary process.\n")
            .unwrap();
        let output = tmp("out-text.jsonl");
        let st =
            label_file(Extractor::builtin(), &input, &output, InputFormat::Auto, false).unwrap();
        assert_eq!((st.labelled, st.skipped), (2, 0));
        let out = std::fs::read_to_string(&output).unwrap();
        let lines: Vec<serde_json::Value> =
            out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["id"], 1);
        assert_eq!(lines[0]["labels"]["Pneumonia"], -1);
        assert!(lines[0].get("entities").is_none());
        assert_eq!(lines[1]["labels"]["No Finding"], 1);
        assert!(label_file(
            Extractor::builtin(),
            &tmp("missing.txt"),
            &output,
            InputFormat::Auto,
            false
        )
        .unwrap_err()
        .to_string()
        .contains("missing.txt"));
    }
}
