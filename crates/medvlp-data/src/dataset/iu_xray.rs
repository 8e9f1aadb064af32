//! IU X-ray / OpenI: report XML files (`ecgen-radiology/*.xml`, or the `.tgz` that holds them)
//! joined to images `{parentImage@id}.png` found anywhere under the root. Sections come from
//! `AbstractText@Label` (COMPARISON, INDICATION, FINDINGS, IMPRESSION); `XXXX` stays as text.
//! IU has no patient ids: the report id stands in. The XML gives no reliable view, so images have
//! none (a view filter other than `all` drops them; say `--views all`).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

use super::{index_files, ImageRef, Sink, Study};

/// Parse one report XML into a study (images resolved through `images`: stem -> relative path).
pub fn parse_report(xml: &str, images: &HashMap<String, String>) -> Result<Study, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("invalid XML: {e}"))?;
    let id = doc
        .descendants()
        .find(|n| n.has_tag_name("uId"))
        .and_then(|n| n.attribute("id"))
        .ok_or("no uId@id")?
        .to_string();
    let mut sections = BTreeMap::new();
    for n in doc.descendants().filter(|n| n.has_tag_name("AbstractText")) {
        if let Some(label) = n.attribute("Label") {
            let text: String =
                n.descendants().filter(|d| d.is_text()).filter_map(|d| d.text()).collect();
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if !text.is_empty() {
                sections.insert(label.to_lowercase(), text);
            }
        }
    }
    let mut imgs = Vec::new();
    for n in doc.descendants().filter(|n| n.has_tag_name("parentImage")) {
        if let Some(im) = n.attribute("id") {
            let path = images.get(im).cloned().unwrap_or_else(|| format!("images/{im}.png"));
            imgs.push(ImageRef { path, view: None });
        }
    }
    Ok(Study { id: id.clone(), patient_id: Some(id), images: imgs, sections, ..Default::default() })
}

pub fn run(sink: &mut Sink) -> Result<()> {
    let root = sink.options().root.clone();
    sink.has_reports = true;
    let mut images: HashMap<String, String> = HashMap::new();
    for (name, rel) in index_files(&root, &[".png", ".dcm"]) {
        let stem = name.rsplit_once('.').map(|(s, _)| s.to_string()).unwrap_or(name);
        images.insert(stem, rel);
    }
    let mut xmls: Vec<_> = index_files(&root, &[".xml"]).into_values().collect();
    xmls.sort();
    let mut reports: Vec<(String, String)> = Vec::new();
    for rel in xmls {
        let p = root.join(&rel);
        match std::fs::read(&p) {
            Ok(b) => reports.push((rel, String::from_utf8_lossy(&b).into_owned())),
            Err(e) => sink.drop("unreadable report XML", format!("{}: {e}", p.display())),
        }
    }
    let mut tgzs: Vec<_> = index_files(&root, &[".tgz", ".tar.gz"]).into_values().collect();
    tgzs.sort();
    for rel in tgzs {
        read_tgz(&root.join(&rel), &mut reports, sink)?;
    }
    if reports.is_empty() {
        anyhow::bail!("{}: no IU X-ray report XML (*.xml or *.tgz) found", root.display());
    }
    for (where_, xml) in reports {
        match parse_report(&xml, &images) {
            Ok(s) if s.images.is_empty() => sink.drop("report without images", where_),
            Ok(s) => sink.emit(s)?,
            Err(e) => sink.drop("malformed report XML", format!("{where_}: {e}")),
        }
    }
    Ok(())
}

fn read_tgz(path: &Path, out: &mut Vec<(String, String)>, sink: &mut Sink) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let entries = ar.entries().with_context(|| format!("{}: not a tar.gz", path.display()))?;
    for e in entries {
        let mut e = match e {
            Ok(e) => e,
            Err(err) => {
                sink.drop("corrupt archive entry", format!("{}: {err}", path.display()));
                break;
            }
        };
        let name = e.path().map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
        if !name.ends_with(".xml") {
            continue;
        }
        let mut s = String::new();
        match e.read_to_string(&mut s) {
            Ok(_) => out.push((format!("{}!{name}", path.display()), s)),
            Err(err) => {
                sink.drop("unreadable report XML", format!("{}!{name}: {err}", path.display()))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{run, write};
    use super::super::PrepareOptions;

    fn xml(uid: &str, findings: &str, impression: &str, images: &[&str]) -> String {
        let imgs: String = images.iter().map(|i| format!("<parentImage id=\"{i}\"><figureId>F1</figureId><caption>Xray Chest PA and Lateral</caption></parentImage>")).collect();
        format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><eCitation><meta type=\"rr\"/><uId id=\"{uid}\"/><pmcId id=\"1\"/><MedlineCitation><Article><Abstract><AbstractText Label=\"COMPARISON\">None.</AbstractText><AbstractText Label=\"INDICATION\">XXXX-year-old male, chest pain.</AbstractText><AbstractText Label=\"FINDINGS\">{findings}</AbstractText><AbstractText Label=\"IMPRESSION\">{impression}</AbstractText></Abstract></Article></MedlineCitation><MeSH><major>normal</major></MeSH>{imgs}</eCitation>")
    }

    #[test]
    fn iu_xml_dir_and_tgz() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(root, "ecgen-radiology/1.xml", xml("CXR1", "The cardiac silhouette and mediastinum size are within normal limits. Pulmonary XXXX are normal.", "Normal chest x-XXXX.", &["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]).as_bytes());
        write(
            root,
            "ecgen-radiology/2.xml",
            xml("CXR2", "", "", &["CXR2_IM-0652-1001"]).as_bytes(),
        );
        write(root, "ecgen-radiology/3.xml", xml("CXR3", "", "No acute disease.", &[]).as_bytes());
        write(root, "ecgen-radiology/4.xml", b"<eCitation><uId id=");
        write(root, "NLMCXR_png/CXR1_1_IM-0001-3001.png", b"x");
        // a .tgz holding one more report
        let mut buf = Vec::new();
        {
            let gz = flate2::write::GzEncoder::new(&mut buf, flate2::Compression::fast());
            let mut t = tar::Builder::new(gz);
            let body = xml("CXR5", "Heart size normal.", "", &["CXR5_IM-2050-1001"]);
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_cksum();
            t.append_data(&mut h, "ecgen-radiology/5.xml", body.as_bytes()).unwrap();
            t.into_inner().unwrap().finish().unwrap();
        }
        write(root, "archive/NLMCXR_reports.tgz", &buf);
        let (s, m) = run(PrepareOptions::new("iu-xray", root, root.join("out/iu.jsonl")));
        assert_eq!(m.len(), 2, "{m:?}");
        let a = m.iter().find(|s| s.id == "CXR1").unwrap();
        assert_eq!(a.images[0].path, "NLMCXR_png/CXR1_1_IM-0001-3001.png");
        assert_eq!(a.images[1].path, "images/CXR1_1_IM-0001-4001.png");
        assert!(a.sections["findings"].contains("Pulmonary XXXX are normal."));
        assert_eq!(a.sections["indication"], "XXXX-year-old male, chest pain.");
        assert!(a.text.as_deref().unwrap().ends_with("\n\nNormal chest x-XXXX."));
        assert!(m
            .iter()
            .any(|s| s.id == "CXR5" && s.text.as_deref() == Some("Heart size normal.")));
        assert_eq!(s.dropped["no findings or impression"], 1);
        assert_eq!(s.dropped["report without images"], 1);
        assert_eq!(s.dropped["malformed report XML"], 1);
    }
}
