//! Report sectioner for MIMIC-CXR style free text, after MIT-LCP `section_parser.py`:
//! split on `\n ([A-Z ()/,-]+):\s`, text before the first header is `preamble`, header names are
//! normalised (conclusion -> impression, clinical history -> history, view-like headers such as
//! "CHEST, PA AND LATERAL" -> findings, ...), empty findings/impression are dropped, and when
//! neither exists the last paragraph (after "\n \n") becomes `last_paragraph`. A repeated section
//! keeps its last occurrence, as the official code does. Whitespace is collapsed; `___`
//! placeholders are ordinary text.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;

fn header_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\n ([A-Z ()/,-]+):\s").expect("valid regex"))
}

fn findings_like_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|two views|frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|frontal semi-upright|ribs|pa and lat",
        )
        .expect("valid regex")
    })
}

/// Normalised section name.
pub fn normalize_section_name(name: &str) -> String {
    let n = name.trim().to_lowercase();
    let mapped = match n.as_str() {
        "comparisons" | "comparison exam" | "comparison film" | "reference exam" => "comparison",
        "clinical history" | "clinical information" | "patient history" => "history",
        "reason for examination" | "reason for exam" | "clinical indication" => "indication",
        "exam" | "type of examination" => "examination",
        "conclusion" | "findings and impression" | "findings/impression" | "impressions" => {
            "impression"
        }
        "finding" => "findings",
        "recommendation(s)" => "recommendations",
        _ if findings_like_re().is_match(&n) => "findings",
        _ => return n,
    };
    mapped.to_string()
}

fn clean(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sections of one report by normalised name.
pub fn parse_sections(text: &str) -> BTreeMap<String, String> {
    let text = text.replace("\r\n", "\n");
    let re = header_re();
    let mut raw: Vec<(String, &str)> = Vec::new();
    match re.captures_at(&text, 0) {
        None => raw.push(("full report".into(), &text[..])),
        Some(first) => {
            raw.push(("preamble".into(), &text[..first.get(1).unwrap().start()]));
            let mut cur = Some(first);
            while let Some(c) = cur {
                let name = c.get(1).unwrap().as_str().to_string();
                let start = c.get(0).unwrap().end();
                // Like the official code: search for the next header only after the next newline.
                let skip = text[start..].find('\n').unwrap_or(0);
                cur = re.captures_at(&text, start + skip);
                let end = cur.as_ref().map(|n| n.get(0).unwrap().start()).unwrap_or(text.len());
                raw.push((normalize_section_name(&name), &text[start..end.max(start)]));
            }
        }
    }
    raw.retain(|(n, s)| !((n == "impression" || n == "findings") && s.trim().is_empty()));
    let mut out = BTreeMap::new();
    let has_main = raw.iter().any(|(n, _)| n == "impression" || n == "findings");
    let last = raw.last().map(|(_, s)| *s).unwrap_or("");
    for (n, s) in &raw {
        let c = clean(s);
        if !c.is_empty() {
            out.insert(n.clone(), c);
        }
    }
    if !has_main {
        if let Some(pos) = last.find("\n \n") {
            let lp = clean(&last[pos + 3..]);
            if !lp.is_empty() {
                out.insert("last_paragraph".into(), lp);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___F with new onset ascites  // eval for infection\n \n TECHNIQUE:  Chest PA and lateral\n \n COMPARISON:  None.\n \n FINDINGS: \n \n There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral\n nodular opacities that most likely represent nipple shadows. The\n cardiomediastinal silhouette is normal.\n \n IMPRESSION: \n \n No acute cardiopulmonary process.\n";

    #[test]
    fn standard_report() {
        let s = parse_sections(FULL);
        assert!(s["findings"].starts_with("There is no focal consolidation"));
        assert!(s["findings"].ends_with("silhouette is normal."));
        assert_eq!(s["impression"], "No acute cardiopulmonary process.");
        assert_eq!(s["indication"], "___F with new onset ascites // eval for infection");
        assert_eq!(s["comparison"], "None.");
        assert_eq!(s["examination"], "CHEST (PA AND LAT)");
        assert!(!s.contains_key("last_paragraph"));
        assert!(s["preamble"].contains("FINAL REPORT"));
    }

    #[test]
    fn missing_findings_and_name_normalisation() {
        let t = "                                 FINAL REPORT\n HISTORY:  ___-year-old with chest pain.\n \n COMPARISONS:  ___.\n \n CONCLUSION:  \n Mild cardiomegaly, unchanged since ___.\n";
        let s = parse_sections(t);
        assert!(!s.contains_key("findings"));
        assert_eq!(s["impression"], "Mild cardiomegaly, unchanged since ___.");
        assert_eq!(s["comparison"], "___.");
        assert_eq!(s["history"], "___-year-old with chest pain.");
    }

    #[test]
    fn view_header_becomes_findings_and_empty_impression_dropped() {
        let t = " FINAL REPORT\n CHEST, PA AND LATERAL:  \n Lungs are clear. Heart size normal.\n \n IMPRESSION:  \n \n";
        let s = parse_sections(t);
        assert_eq!(s["findings"], "Lungs are clear. Heart size normal.");
        assert!(!s.contains_key("impression"));
    }

    #[test]
    fn last_paragraph_fallback() {
        let t = "                                 FINAL REPORT\n INDICATION:  Intubated patient.\n \n Portable AP chest radiograph was obtained.\n \n ET tube terminates 4 cm above the carina. No pneumothorax.\n";
        let s = parse_sections(t);
        assert!(!s.contains_key("findings") && !s.contains_key("impression"));
        assert!(s["last_paragraph"].contains("ET tube terminates 4 cm above the carina."), "{s:?}");
        // no headers at all
        let s = parse_sections("Lungs clear.\n \n No effusion.");
        assert_eq!(s["full report"], "Lungs clear. No effusion.");
        assert_eq!(s["last_paragraph"], "No effusion.");
        assert!(parse_sections("").is_empty());
    }

    #[test]
    fn repeated_section_keeps_the_last() {
        let t =
            " FINAL REPORT\n FINDINGS:  first draft.\n IMPRESSION:  a.\n FINDINGS:  final text.\n";
        let s = parse_sections(t);
        assert_eq!(s["findings"], "final text.");
        assert_eq!(s["impression"], "a.");
    }
}
