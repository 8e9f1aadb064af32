//! MIMIC-CXR-JPG (+ reports from MIMIC-CXR). Expects under the root:
//! `mimic-cxr-2.0.0-metadata.csv[.gz]`, optionally `-split`, `-chexpert` (or `-negbio` with
//! `negbio`) CSVs, images at `files/pXX/pXXXXXXXX/sXXXXXXXX/{dicom_id}.jpg`, reports at
//! `files/pXX/pXXXXXXXX/sXXXXXXXX.txt` (under the root or `mimic-cxr-reports/`, or inside
//! `mimic-cxr-reports.zip` as PhysioNet distributes them).
//! Studies are emitted in (subject, study) order; reports are read and sectioned in parallel
//! chunks so that memory stays bounded by the tables, not the text.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::sections::parse_sections;
use super::{
    at, col, csv_reader, find_file, find_file_by, parse_label, ImageRef, Sink, Split, Study,
};

type Key = (u32, u32); // (subject_id, study_id)

fn find(root: &Path, stem: &str) -> Option<PathBuf> {
    find_file(root, &[&format!("{stem}.csv")]).or_else(|| {
        find_file_by(root, &|n: &str| {
            n.starts_with(stem) && (n.ends_with(".csv") || n.ends_with(".csv.gz"))
        })
    })
}

fn parse_id(s: &str) -> Option<u32> {
    s.trim().trim_start_matches(['p', 's']).parse().ok()
}

/// Relative path of a report: `files/p10/p10000032/s50414267.txt`.
pub fn report_rel_path(subject: u32, study: u32) -> String {
    let s = subject.to_string();
    format!("files/p{}/p{s}/s{study}.txt", &s[..2.min(s.len())])
}

/// The reports zip: entry names indexed by their `files/...` suffix.
struct ReportZip {
    path: PathBuf,
    archive: zip::ZipArchive<std::fs::File>,
    index: HashMap<String, String>,
}

impl ReportZip {
    fn open(path: &Path) -> Result<Self> {
        let f =
            std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let archive = zip::ZipArchive::new(f)
            .map_err(|e| anyhow::anyhow!("{}: not a readable zip archive: {e}", path.display()))?;
        let index = archive
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.to_string()))
            .filter(|n| n.ends_with(".txt"))
            .filter_map(|n| n.find("files/").map(|i| (n[i..].to_string(), n.to_string())))
            .collect();
        Ok(Self { path: path.to_path_buf(), archive, index })
    }

    /// The report at `rel` (`files/...txt`): `None` when the archive has no such entry.
    fn read(&mut self, rel: &str) -> Option<Result<String, String>> {
        use std::io::Read;
        let name = self.index.get(rel)?.clone();
        let mut text = String::new();
        let r = match self.archive.by_name(&name) {
            Ok(mut f) => f
                .read_to_string(&mut text)
                .map(|_| text)
                .map_err(|e| format!("{}:{name}: {e}", self.path.display())),
            Err(e) => Err(format!("{}:{name}: {e}", self.path.display())),
        };
        Some(r)
    }
}

pub fn image_rel_path(subject: u32, study: u32, dicom: &str) -> String {
    let s = subject.to_string();
    format!("files/p{}/p{s}/s{study}/{dicom}.jpg", &s[..2.min(s.len())])
}

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    sink.has_reports = true;
    let Some(meta_path) = find(&root, "mimic-cxr-2.0.0-metadata") else {
        bail!("{}: no mimic-cxr-2.0.0-metadata.csv(.gz) found", root.display());
    };
    let label_stem =
        if sink.options().negbio { "mimic-cxr-2.0.0-negbio" } else { "mimic-cxr-2.0.0-chexpert" };

    // split: per study (patient-disjoint in the official file)
    let mut split: HashMap<Key, Split> = HashMap::new();
    if let Some(p) = find(&root, "mimic-cxr-2.0.0-split") {
        let (mut r, h) = csv_reader(&p)?;
        let (cs, cst, csp) =
            (col(&h, &p, &["subject_id"])?, col(&h, &p, &["study_id"])?, col(&h, &p, &["split"])?);
        for rec in r.records() {
            let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            match (
                rec.get(cs).and_then(parse_id),
                rec.get(cst).and_then(parse_id),
                rec.get(csp).and_then(Split::parse),
            ) {
                (Some(a), Some(b), Some(s)) => {
                    split.insert((a, b), s);
                }
                _ => sink.drop("malformed split row", at(&p, &rec)),
            }
        }
        sink.official_split = true;
    }

    // labels per study
    let mut labels: HashMap<Key, BTreeMap<String, i8>> = HashMap::new();
    if let Some(p) = find(&root, label_stem) {
        let (mut r, h) = csv_reader(&p)?;
        let (cs, cst) = (col(&h, &p, &["subject_id"])?, col(&h, &p, &["study_id"])?);
        'rows: for rec in r.records() {
            let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let (Some(a), Some(b)) =
                (rec.get(cs).and_then(parse_id), rec.get(cst).and_then(parse_id))
            else {
                sink.drop("malformed label row", at(&p, &rec));
                continue;
            };
            let mut m = BTreeMap::new();
            for (i, name) in h.iter().enumerate() {
                if i == cs || i == cst {
                    continue;
                }
                match parse_label(rec.get(i).unwrap_or("")) {
                    Ok(Some(v)) => {
                        m.insert(name.clone(), v);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        sink.drop("malformed label row", format!("{}: {e}", at(&p, &rec)));
                        continue 'rows;
                    }
                }
            }
            labels.insert((a, b), m);
        }
    }

    // images per study from the metadata
    let mut images: BTreeMap<Key, Vec<ImageRef>> = BTreeMap::new();
    {
        let p = &meta_path;
        let (mut r, h) = csv_reader(p)?;
        let (cd, cs, cst) =
            (col(&h, p, &["dicom_id"])?, col(&h, p, &["subject_id"])?, col(&h, p, &["study_id"])?);
        let cv = col(&h, p, &["ViewPosition"]).ok();
        for rec in r.records() {
            let rec = rec.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let dicom = rec.get(cd).unwrap_or("").trim();
            match (rec.get(cs).and_then(parse_id), rec.get(cst).and_then(parse_id)) {
                (Some(a), Some(b)) if !dicom.is_empty() && a >= 10 => {
                    let view = cv
                        .and_then(|c| rec.get(c))
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(String::from);
                    images
                        .entry((a, b))
                        .or_default()
                        .push(ImageRef { path: image_rel_path(a, b, dicom), view });
                }
                _ => sink.drop("malformed metadata row", at(p, &rec)),
            }
        }
    }

    let report_roots: Vec<PathBuf> = [root.clone(), root.join("mimic-cxr-reports")]
        .into_iter()
        .filter(|r| r.join("files").is_dir())
        .collect();
    let mut zip = match [root.join("mimic-cxr-reports.zip")].into_iter().find(|p| p.is_file()) {
        Some(p) => Some(ReportZip::open(&p)?),
        None => None,
    };
    let keys: Vec<Key> = images.keys().copied().collect();
    for chunk in keys.chunks(4096) {
        // Read and section in parallel, emit in order.
        let parsed: Vec<Result<BTreeMap<String, String>, String>> = chunk
            .par_iter()
            .map(|&(a, b)| {
                let rel = report_rel_path(a, b);
                for r in &report_roots {
                    let p = r.join(&rel);
                    match std::fs::read(&p) {
                        Ok(bytes) => return Ok(parse_sections(&String::from_utf8_lossy(&bytes))),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(format!("{}: {e}", p.display())),
                    }
                }
                Err(rel)
            })
            .collect();
        for (&(a, b), sections) in chunk.iter().zip(parsed) {
            // Reports not on disk come from the zip (read sequentially: one archive handle).
            let from_zip =
                |rel: &str, zip: &mut Option<ReportZip>| zip.as_mut().and_then(|z| z.read(rel));
            let sections = match sections {
                Ok(s) => s,
                Err(where_) => match from_zip(&report_rel_path(a, b), &mut zip) {
                    Some(Ok(text)) => parse_sections(&text),
                    Some(Err(e)) => {
                        sink.drop("report unreadable in the zip", e);
                        continue;
                    }
                    None => {
                        sink.drop("report file missing or unreadable", where_);
                        continue;
                    }
                },
            };
            let study = Study {
                id: format!("s{b}"),
                patient_id: Some(format!("p{a}")),
                images: images.remove(&(a, b)).unwrap_or_default(),
                sections,
                text: None,
                labels: labels.remove(&(a, b)).unwrap_or_default(),
                split: split.get(&(a, b)).copied(),
            };
            sink.emit(study)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{run, write};
    use super::super::PrepareOptions;
    use super::*;

    const REPORT: &str = "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___M with cough\n \n FINDINGS: \n \n Heart size is mildly enlarged. No effusion.\n \n IMPRESSION: \n \n Mild cardiomegaly.\n";

    #[test]
    fn reports_from_the_zip() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("mimic");
        write(&root, "mimic-cxr-2.0.0-metadata.csv", b"dicom_id,subject_id,study_id,ViewPosition\nd1,10000032,50414267,PA\nd2,10000032,53189527,AP\n");
        let f = std::fs::File::create(root.join("mimic-cxr-reports.zip")).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opt = zip::write::SimpleFileOptions::default();
        z.start_file("mimic-cxr-reports/files/p10/p10000032/s50414267.txt", opt).unwrap();
        std::io::Write::write_all(&mut z, REPORT.as_bytes()).unwrap();
        z.finish().unwrap();
        let (s, m) = run(PrepareOptions::new("mimic", &root, d.path().join("out/m.jsonl")));
        assert_eq!(m.len(), 1, "{s:?}");
        assert_eq!(
            m[0].text.as_deref(),
            Some("Heart size is mildly enlarged. No effusion.\n\nMild cardiomegaly.")
        );
        // The second study has no report anywhere: dropped and counted.
        assert_eq!(s.dropped["report file missing or unreadable"], 1);
    }

    #[test]
    fn mimic_tree_to_manifest() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("mimic");
        let dic = [
            "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
            "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962",
            "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab",
            "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714",
        ];
        write(&root, "mimic-cxr-2.0.0-metadata.csv", format!(
            "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n{},10000032,50414267,CHEST (PA AND LAT),PA,3056,2544\n{},10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544\n{},10000032,53189527,CHEST (PORTABLE AP),AP,3056,2544\n{},10000764,57375967,CHEST,,3056,2544\nbroken,,,,,\n",
            dic[0], dic[1], dic[2], dic[3]).as_bytes());
        write(&root, "mimic-cxr-2.0.0-split.csv", b"dicom_id,study_id,subject_id,split\nx,50414267,10000032,train\ny,53189527,10000032,train\nz,57375967,10000764,test\n");
        write(&root, "mimic-cxr-2.0.0-chexpert.csv", b"subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices\n10000032,50414267,,1.0,,,,,,,,0.0,,,,\n10000032,53189527,,,,-1.0,,,,,,,,,,\n");
        write(&root, "files/p10/p10000032/s50414267.txt", REPORT.as_bytes());
        // no FINDINGS / IMPRESSION headers at all -> dropped and counted
        write(&root, "files/p10/p10000032/s53189527.txt", b"                                 FINAL REPORT\n INDICATION:  ___\n \n Portable chest.\n");
        // s57375967 has no report file -> dropped
        let mut o = PrepareOptions::new("mimic", &root, d.path().join("out/m.jsonl"));
        o.seed = 1;
        let (s, m) = run(o.clone());
        assert_eq!(m.len(), 1);
        let st = &m[0];
        assert_eq!(st.id, "s50414267");
        assert_eq!(st.patient_id.as_deref(), Some("p10000032"));
        assert_eq!(st.images.len(), 2);
        assert_eq!(st.images[0].path, format!("files/p10/p10000032/s50414267/{}.jpg", dic[0]));
        assert_eq!(
            st.text.as_deref(),
            Some("Heart size is mildly enlarged. No effusion.\n\nMild cardiomegaly.")
        );
        assert_eq!(st.sections["indication"], "___M with cough");
        assert_eq!(st.labels["Cardiomegaly"], 1);
        assert_eq!(st.labels["Pleural Effusion"], 0);
        assert!(!st.labels.contains_key("Edema"));
        assert_eq!(st.split, Some(Split::Train));
        assert!(s.official_split);
        assert_eq!(s.dropped["no findings or impression"], 1);
        assert_eq!(s.dropped["report file missing or unreadable"], 1);
        assert_eq!(s.dropped["malformed metadata row"], 1);
        assert!(d.path().join("out/m.summary.json").is_file());
        let f1 = std::fs::read_to_string(d.path().join("out/m.train_1pct.txt")).unwrap();
        assert_eq!(f1, "s50414267\n");
        // frontal filter drops the lateral image
        o.views = super::super::ViewFilter::Frontal;
        let (_, m) = run(o);
        assert_eq!(m[0].images.len(), 1);
        assert_eq!(m[0].images[0].view.as_deref(), Some("PA"));
    }
}
