//! SIIM-ACR Pneumothorax: `train-rle.csv` (`ImageId`, ` EncodedPixels` with a leading space;
//! `-1` = none; several rows per image for several regions), DICOMs found by file name
//! anywhere under the root (`{Study}/{Series}/{SOPInstanceUID}.dcm`). Label "Pneumothorax".
//! [`rle_decode`] decodes the relative, column-major RLE into a row-major mask.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};

use super::{at, col, csv_reader, find_file_by, index_files, ImageRef, Sink, Study};

/// Decode SIIM RLE ("start length" pairs, start relative to the end of the previous run,
/// column-major) into a row-major `height x width` mask of 0/1.
pub fn rle_decode(rle: &str, width: usize, height: usize) -> Result<Vec<u8>, String> {
    let n = width * height;
    let mut colmajor = vec![0u8; n];
    let rle = rle.trim();
    if rle == "-1" || rle.is_empty() {
        return Ok(vec![0u8; n]);
    }
    let nums: Vec<usize> = rle
        .split_whitespace()
        .map(|t| t.parse::<usize>().map_err(|_| format!("bad RLE token {t:?}")))
        .collect::<Result<_, _>>()?;
    if nums.len() & 1 == 1 {
        return Err("RLE has an odd number of values".into());
    }
    let mut pos = 0usize;
    for pair in nums.chunks_exact(2) {
        pos += pair[0];
        let end = pos + pair[1];
        if end > n {
            return Err(format!("RLE run {pos}..{end} exceeds {n} pixels"));
        }
        colmajor[pos..end].iter_mut().for_each(|v| *v = 1);
        pos = end;
    }
    // column-major (x * height + y) -> row-major (y * width + x)
    let mut out = vec![0u8; n];
    for x in 0..width {
        for y in 0..height {
            out[y * width + x] = colmajor[x * height + y];
        }
    }
    Ok(out)
}

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    let Some(p) = find_file_by(&root, &|n: &str| n == "train-rle.csv" || n == "stage_2_train.csv")
    else {
        bail!("{}: no train-rle.csv found", root.display());
    };
    let files = index_files(&root, &[".dcm"]);
    let (mut r, h) = csv_reader(&p)?;
    let (ci, ce) = (col(&h, &p, &["ImageId"])?, col(&h, &p, &["EncodedPixels"])?);
    let mut order = Vec::new();
    let mut pos: HashMap<String, i8> = HashMap::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let id = rec.get(ci).unwrap_or("").trim().to_string();
        let enc = rec.get(ce).unwrap_or("").trim();
        if id.is_empty() {
            sink.drop("missing ImageId", at(&p, &rec));
            continue;
        }
        if let Err(e) = rle_decode(enc, 1024, 1024) {
            sink.drop("malformed RLE", format!("{}: {e}", at(&p, &rec)));
            continue;
        }
        let v = (enc != "-1") as i8;
        match pos.get_mut(&id) {
            Some(x) => *x = (*x).max(v),
            None => {
                order.push(id.clone());
                pos.insert(id, v);
            }
        }
    }
    for id in order {
        let Some(path) = files.get(&format!("{id}.dcm")) else {
            sink.drop("image file not found", &id);
            continue;
        };
        let labels: BTreeMap<String, i8> = [("Pneumothorax".to_string(), pos[&id])].into();
        sink.emit(Study {
            id: id.clone(),
            images: vec![ImageRef { path: path.clone(), view: None }],
            labels,
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
    fn rle_relative_column_major() {
        // 4x3 (w x h). Column-major index = x*3 + y. Runs: [1,3) then skip 2 -> [5,6).
        let m = rle_decode("1 2 2 1", 4, 3).unwrap();
        let mut expect = vec![0u8; 12];
        for cm in [1usize, 2, 5] {
            let (x, y) = (cm / 3, cm % 3);
            expect[y * 4 + x] = 1;
        }
        assert_eq!(m, expect);
        assert_eq!(rle_decode("-1", 4, 3).unwrap(), vec![0; 12]);
        assert!(rle_decode("10 5", 4, 3).is_err());
        assert!(rle_decode("1 x", 4, 3).is_err());
        assert!(rle_decode("1", 4, 3).is_err());
    }

    #[test]
    fn siim_head200_real_rle_and_dicom_index() {
        let d = tempfile::tempdir().unwrap();
        if !copy_asset("labels/siim_train_rle_head200.csv", d.path(), "train-rle.csv") {
            return;
        }
        let text = std::fs::read_to_string(d.path().join("train-rle.csv")).unwrap();
        let mut areas = 0usize;
        for l in text.lines().skip(1) {
            let (_, enc) = l.split_once(',').unwrap();
            let m = rle_decode(enc, 1024, 1024).unwrap();
            areas += m.iter().map(|&v| v as usize).sum::<usize>();
        }
        assert!(areas > 0);
        let ids: Vec<&str> = text.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
        write(d.path(), &format!("dicom-images-train/1.2.3/4.5.6/{}.dcm", ids[0]), b"x");
        write(d.path(), &format!("dicom-images-train/1.2.9/4.5.9/{}.dcm", ids[1]), b"x");
        let (s, m) = run(PrepareOptions::new("siim", d.path(), d.path().join("s.jsonl")));
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].labels["Pneumothorax"], 0);
        assert_eq!(m[1].labels["Pneumothorax"], 1);
        assert_eq!(m[1].images[0].path, format!("dicom-images-train/1.2.9/4.5.9/{}.dcm", ids[1]));
        assert!(s.dropped["image file not found"] > 100);
    }
}
