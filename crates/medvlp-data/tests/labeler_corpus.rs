//! Labeler quality on the report corpus (`tests/data/labeler_corpus.jsonl`): over 1,000 annotated
//! sentences and 200 whole reports written the way chest X-ray reports are (IU/OpenI with `XXXX`,
//! MIMIC-CXR with `___`, INDICATION/COMPARISON sections, numbered impressions, comparisons with
//! priors), covering every error class of the labeler issue (negation and normality before and
//! after a finding, history and etiology, descriptors that name no disease, nodule mimics,
//! synonyms, hedges about age or size rather than presence, request sections, conventions).
//! `tests/data/gen_labeler_corpus.py` says how it was written and how it is annotated.
//!
//! Scores the 13 findings the issue names: per-finding precision, recall and F1 of positive
//! labels (1; uncertain counts as not positive), and their macro F1, under both conventions
//! (`labels` holds the CheXpert-convention annotation, `strict` only what differs under the strict
//! one, `null` meaning not mentioned). Floors: macro F1 >= 0.90 and every finding >= 0.75.
//!
//! Run with `cargo test -p medvlp-data --release --test labeler_corpus -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};

use medvlp_data::text::{all_labels, label_report_as, Convention};

const FINDINGS: [&str; 13] = [
    "Cardiomegaly",
    "Pleural Effusion",
    "Atelectasis",
    "Edema",
    "Pneumothorax",
    "Pneumonia",
    "Consolidation",
    "Nodule",
    "Emphysema",
    "Fracture",
    "Granuloma",
    "Hernia",
    "Scoliosis",
];

/// Error classes of the issue, each of which the corpus must exercise.
const CLASSES: [(&str, usize); 14] = [
    ("neg_post", 50),
    ("neg_scope", 50),
    ("history", 30),
    ("descriptor", 50),
    ("nodule_mimic", 50),
    ("synonym", 30),
    ("hedge_axis", 30),
    ("section", 200),
    ("convention", 50),
    ("device_fracture", 10),
    ("mimic", 5),
    ("soft_tissue", 10),
    ("comparison", 100),
    ("plain", 300),
];

struct Case {
    id: String,
    kind: String,
    classes: Vec<String>,
    text: String,
    expected: [BTreeMap<String, i8>; 2],
}

fn cases() -> Vec<Case> {
    let raw = include_str!("data/labeler_corpus.jsonl");
    let known = all_labels();
    let mut ids = BTreeSet::new();
    raw.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let at = |what: &str| format!("labeler_corpus.jsonl line {}: {what}", i + 1);
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}", at(&e.to_string())));
            let id = v["id"].as_str().unwrap_or_else(|| panic!("{}", at("no id"))).to_string();
            assert!(ids.insert(id.clone()), "{}", at("duplicate id"));
            let labels: BTreeMap<String, i8> = serde_json::from_value(v["labels"].clone())
                .unwrap_or_else(|e| panic!("{}", at(&format!("labels: {e}"))));
            let mut strict = labels.clone();
            let diff = v["strict"].as_object().unwrap_or_else(|| panic!("{}", at("no strict")));
            for (k, x) in diff {
                match x.as_i64() {
                    Some(x) => strict.insert(k.clone(), x as i8),
                    None if x.is_null() => strict.remove(k),
                    None => panic!("{}", at(&format!("strict {k}: {x}"))),
                };
            }
            for m in [&labels, &strict] {
                for (k, x) in m {
                    assert!(known.contains(&k.as_str()), "{}", at(&format!("unknown label {k}")));
                    assert!([-1, 0, 1].contains(x), "{}", at(&format!("bad value {x}")));
                }
            }
            Case {
                id,
                kind: v["kind"].as_str().unwrap_or_default().to_string(),
                classes: v["classes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
                text: v["text"].as_str().unwrap_or_else(|| panic!("{}", at("no text"))).to_string(),
                expected: [labels, strict],
            }
        })
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Counts {
    tp: usize,
    fp: usize,
    fn_: usize,
}

impl Counts {
    fn p(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }
    fn r(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }
    fn f1(&self) -> f64 {
        2.0 * self.tp as f64 / (2 * self.tp + self.fp + self.fn_).max(1) as f64
    }
}

struct Score {
    per: Vec<(&'static str, Counts)>,
    macro_f1: f64,
    /// Cases whose 13 labels (1/0/-1/absent) all match.
    exact: usize,
    /// Errors on positives by class: class -> (false positives, false negatives).
    by_class: BTreeMap<String, (usize, usize)>,
    misses: Vec<String>,
}

fn score(cases: &[Case], convention: Convention) -> Score {
    let ci = convention as usize;
    let mut per: Vec<(&'static str, Counts)> =
        FINDINGS.iter().map(|f| (*f, Counts::default())).collect();
    let mut exact = 0;
    let mut by_class: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut misses = Vec::new();
    for c in cases {
        let got = label_report_as(&c.text, convention);
        let mut all = true;
        for (f, k) in per.iter_mut() {
            let exp = c.expected[ci].get(*f).copied();
            let g = got.get(*f).copied();
            all &= exp == g;
            let (e1, g1) = (exp == Some(1), g == Some(1));
            match (e1, g1) {
                (true, true) => k.tp += 1,
                (false, true) => k.fp += 1,
                (true, false) => k.fn_ += 1,
                _ => {}
            }
            if e1 != g1 {
                for cl in &c.classes {
                    let slot = by_class.entry(cl.clone()).or_default();
                    if g1 {
                        slot.0 += 1;
                    } else {
                        slot.1 += 1;
                    }
                }
                misses.push(format!(
                    "{} [{}] {f}: expected {exp:?}, got {g:?}: {:?}",
                    c.id,
                    c.classes.join(","),
                    c.text
                ));
            }
        }
        exact += all as usize;
    }
    let macro_f1 = per.iter().map(|(_, k)| k.f1()).sum::<f64>() / per.len() as f64;
    Score { per, macro_f1, exact, by_class, misses }
}

fn print(name: &str, s: &Score, n: usize) {
    println!("\n== {name} ({n} cases) ==");
    println!(
        "{:<18} | {:>4} {:>4} {:>4} | {:>6} {:>6} {:>6}",
        "finding", "tp", "fp", "fn", "P", "R", "F1"
    );
    for (f, k) in &s.per {
        println!(
            "{f:<18} | {:>4} {:>4} {:>4} | {:>6.3} {:>6.3} {:>6.3}",
            k.tp,
            k.fp,
            k.fn_,
            k.p(),
            k.r(),
            k.f1()
        );
    }
    println!("macro F1 over {} findings: {:.3}", FINDINGS.len(), s.macro_f1);
    println!("cases with all 13 labels right (1/0/-1/absent): {}/{n}", s.exact);
    if !s.by_class.is_empty() {
        println!(
            "positive-label errors by class (false positives, false negatives): {:?}",
            s.by_class
        );
    }
    println!("misses on positives:");
    for m in &s.misses {
        println!("  {m}");
    }
}

#[test]
fn corpus_is_large_and_covers_every_error_class() {
    let cases = cases();
    let sentences = cases.iter().filter(|c| c.kind == "sentence").count();
    let reports = cases.iter().filter(|c| c.kind == "report").count();
    println!("{sentences} sentences, {reports} reports");
    assert!(sentences >= 1000, "{sentences} sentences");
    assert!(reports >= 200, "{reports} reports");
    let texts: BTreeSet<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts.len(), cases.len(), "duplicate texts");
    for (class, min) in CLASSES {
        let n = cases.iter().filter(|c| c.classes.iter().any(|x| x == class)).count();
        assert!(n >= min, "class {class}: {n} cases, expected at least {min}");
    }
    for style in ["XXXX", "___"] {
        let n = cases.iter().filter(|c| c.kind == "report" && c.text.contains(style)).count();
        assert!(n >= 50, "{n} reports with {style}");
    }
    // Every finding has positives, and the conventions differ where the issue says they do.
    for f in FINDINGS {
        for ci in 0..2 {
            let n = cases.iter().filter(|c| c.expected[ci].get(f) == Some(&1)).count();
            assert!(n >= 25, "{f}: {n} positives under convention {ci}");
        }
    }
    let differ =
        |f: &str| cases.iter().filter(|c| c.expected[0].get(f) != c.expected[1].get(f)).count();
    assert!(differ("Edema") >= 30 && differ("Cardiomegaly") >= 15 && differ("Pneumonia") >= 10);
}

#[test]
fn per_finding_f1_under_both_conventions() {
    let cases = cases();
    let mut failures = Vec::new();
    for convention in Convention::ALL {
        let s = score(&cases, convention);
        print(&format!("medvlp labeler, --convention {convention}"), &s, cases.len());
        if s.macro_f1 < 0.90 {
            failures.push(format!("{convention}: macro F1 {:.3} < 0.90", s.macro_f1));
        }
        for (f, k) in &s.per {
            if k.f1() < 0.75 {
                failures.push(format!("{convention}: {f} F1 {:.3} < 0.75", k.f1()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
