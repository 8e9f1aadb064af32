//! Labeler quality on a hand-written test set (`tests/data/labeler_cases.jsonl`: report sentences
//! and short reports written for this project, each with its expected labels; a label not listed
//! is expected to be "not mentioned").
//!
//! Prints per-finding precision/recall for positive (1), negative (0) and uncertain (-1) labels,
//! for the real labeler and for a naive keyword + "no ..." baseline, and asserts floors and that
//! the real labeler beats the baseline by a wide margin.
//!
//! Run with `cargo test -p medvlp-data --release --test labeler_quality -- --nocapture`.

use std::collections::{BTreeMap, HashMap};

use medvlp_data::text::{all_labels, label_report, Lexicon};

struct Case {
    line: usize,
    text: String,
    labels: BTreeMap<String, i8>,
}

fn cases() -> Vec<Case> {
    let raw = include_str!("data/labeler_cases.jsonl");
    let known = all_labels();
    raw.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("labeler_cases.jsonl line {}: {e}", i + 1));
            let labels: BTreeMap<String, i8> = serde_json::from_value(v["labels"].clone())
                .unwrap_or_else(|e| panic!("labeler_cases.jsonl line {}: labels: {e}", i + 1));
            for (k, x) in &labels {
                assert!(known.contains(&k.as_str()), "line {}: unknown label {k}", i + 1);
                assert!([-1, 0, 1].contains(x), "line {}: bad value {x}", i + 1);
            }
            Case { line: i + 1, text: v["text"].as_str().expect("text").to_string(), labels }
        })
        .collect()
}

/// The naive baseline: any lexicon keyword of a finding or device is positive unless the word
/// right before it is "no"; no uncertainty, no scope, no composites.
struct Naive {
    terms: Vec<(String, Vec<String>)>,
}

impl Naive {
    fn new() -> Naive {
        let lex = Lexicon::builtin();
        let mut terms = Vec::new();
        for e in &lex.finding {
            for t in &e.terms {
                terms.push((t.to_ascii_lowercase(), e.labels.clone()));
            }
        }
        for e in &lex.device {
            for t in &e.terms {
                terms.push((t.to_ascii_lowercase(), vec!["Support Devices".to_string()]));
            }
        }
        Naive { terms }
    }

    fn label(&self, text: &str) -> BTreeMap<String, i8> {
        let lower = text.to_ascii_lowercase();
        let b = lower.as_bytes();
        let word = |c: u8| c.is_ascii_alphanumeric();
        let mut out: BTreeMap<String, i8> = BTreeMap::new();
        for (t, labels) in &self.terms {
            let mut from = 0;
            while let Some(p) = lower[from..].find(t.as_str()) {
                let s = from + p;
                let e = s + t.len();
                from = s + 1;
                let mut e2 = e;
                if e2 < b.len() && b[e2] == b's' {
                    e2 += 1;
                }
                if (s > 0 && word(b[s - 1])) || (e2 < b.len() && word(b[e2])) {
                    continue;
                }
                let negated =
                    lower[..s].trim_end().rsplit(|c: char| !c.is_ascii_alphanumeric()).next()
                        == Some("no");
                let v = if negated { 0 } else { 1 };
                for l in labels {
                    let slot = out.entry(l.clone()).or_insert(v);
                    *slot = (*slot).max(v);
                }
            }
        }
        let sick = out.iter().any(|(k, v)| {
            *v == 1
                && k != "Support Devices"
                && medvlp_data::text::CHEXPERT_14.contains(&k.as_str())
        });
        out.insert("No Finding".into(), if sick { 0 } else { 1 });
        out
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    tp: usize,
    fp: usize,
    fn_: usize,
}

impl Counts {
    fn p(&self) -> f64 {
        if self.tp + self.fp == 0 {
            f64::NAN
        } else {
            self.tp as f64 / (self.tp + self.fp) as f64
        }
    }
    fn r(&self) -> f64 {
        if self.tp + self.fn_ == 0 {
            f64::NAN
        } else {
            self.tp as f64 / (self.tp + self.fn_) as f64
        }
    }
    fn f1(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            f64::NAN
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }
    fn add(&mut self, o: Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }
}

const CLASSES: [i8; 3] = [1, 0, -1];

struct Report {
    /// label -> [pos, neg, unc]
    per_label: BTreeMap<String, [Counts; 3]>,
    micro: [Counts; 3],
    exact: usize,
    no_finding: (usize, usize),
    wrong: Vec<String>,
}

fn evaluate(cases: &[Case], f: &dyn Fn(&str) -> BTreeMap<String, i8>) -> Report {
    let labels: Vec<&str> = all_labels().into_iter().filter(|l| *l != "No Finding").collect();
    let mut per_label: BTreeMap<String, [Counts; 3]> = BTreeMap::new();
    let mut micro = [Counts::default(); 3];
    let mut exact = 0;
    let mut nf = (0, 0);
    let mut wrong = Vec::new();
    for c in cases {
        let pred = f(&c.text);
        let mut all_right = true;
        for l in &labels {
            let exp = c.labels.get(*l).copied();
            let got = pred.get(*l).copied();
            if exp != got {
                all_right = false;
                wrong.push(format!(
                    "line {}: {l}: expected {exp:?}, got {got:?}: {:?}",
                    c.line, c.text
                ));
            }
            let slot = per_label.entry(l.to_string()).or_default();
            for (ci, class) in CLASSES.iter().enumerate() {
                let k = Counts {
                    tp: (exp == Some(*class) && got == Some(*class)) as usize,
                    fp: (got == Some(*class) && exp != Some(*class)) as usize,
                    fn_: (exp == Some(*class) && got != Some(*class)) as usize,
                };
                slot[ci].add(k);
                micro[ci].add(k);
            }
        }
        if let Some(e) = c.labels.get("No Finding") {
            nf.1 += 1;
            if pred.get("No Finding") == Some(e) {
                nf.0 += 1;
            } else {
                all_right = false;
                wrong.push(format!(
                    "line {}: No Finding: expected {e}, got {:?}: {:?}",
                    c.line,
                    pred.get("No Finding"),
                    c.text
                ));
            }
        }
        exact += all_right as usize;
    }
    Report { per_label, micro, exact, no_finding: nf, wrong }
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "  -  ".into()
    } else {
        format!("{x:.3}")
    }
}

fn print(name: &str, r: &Report, n: usize) {
    println!("\n== {name} ({n} cases) ==");
    println!(
        "{:<30} | {:>4} {:>5} {:>5} | {:>4} {:>5} {:>5} | {:>4} {:>5} {:>5}",
        "label", "pos", "P", "R", "neg", "P", "R", "unc", "P", "R"
    );
    for (l, c) in &r.per_label {
        let sup = |k: &Counts| k.tp + k.fn_;
        if c.iter().all(|k| sup(k) == 0 && k.fp == 0) {
            continue;
        }
        println!(
            "{:<30} | {:>4} {:>5} {:>5} | {:>4} {:>5} {:>5} | {:>4} {:>5} {:>5}",
            l,
            sup(&c[0]),
            fmt(c[0].p()),
            fmt(c[0].r()),
            sup(&c[1]),
            fmt(c[1].p()),
            fmt(c[1].r()),
            sup(&c[2]),
            fmt(c[2].p()),
            fmt(c[2].r())
        );
    }
    for (ci, name) in ["positive", "negative", "uncertain"].iter().enumerate() {
        let m = r.micro[ci];
        println!("micro {name:<9}: P {} R {} F1 {}", fmt(m.p()), fmt(m.r()), fmt(m.f1()));
    }
    println!("No Finding accuracy: {}/{}", r.no_finding.0, r.no_finding.1);
    println!("cases fully correct: {}/{} ({:.1}%)", r.exact, n, 100.0 * r.exact as f64 / n as f64);
}

fn overall_f1(r: &Report) -> f64 {
    let mut all = Counts::default();
    for m in r.micro {
        all.add(m);
    }
    all.f1()
}

#[test]
fn labeler_beats_naive_baseline_with_floors() {
    let cases = cases();
    assert!(cases.len() >= 200, "test set has {} cases", cases.len());
    let real = evaluate(&cases, &|t| label_report(t));
    let naive_labeler = Naive::new();
    let naive = evaluate(&cases, &|t| naive_labeler.label(t));
    print("medvlp labeler", &real, cases.len());
    print("naive keyword + \"no\" baseline", &naive, cases.len());
    println!("\nmedvlp labeler misses:");
    for w in &real.wrong {
        println!("  {w}");
    }
    let (rf, nf) = (overall_f1(&real), overall_f1(&naive));
    println!("\noverall micro F1 (all classes): medvlp {rf:.3}, naive {nf:.3}");

    // Floors.
    let [pos, neg, unc] = real.micro;
    assert!(pos.p() >= 0.90 && pos.r() >= 0.90, "positive P {} R {}", pos.p(), pos.r());
    assert!(neg.p() >= 0.90 && neg.r() >= 0.85, "negative P {} R {}", neg.p(), neg.r());
    assert!(unc.p() >= 0.75 && unc.r() >= 0.75, "uncertain P {} R {}", unc.p(), unc.r());
    assert!(real.no_finding.0 as f64 >= 0.9 * real.no_finding.1 as f64);
    assert!(real.exact as f64 >= 0.8 * cases.len() as f64, "only {} cases fully right", real.exact);
    // Wide margin over the naive baseline, on precision of positives as much as overall.
    assert!(rf >= nf + 0.15, "overall F1 {rf:.3} vs naive {nf:.3}");
    assert!(
        pos.p() >= naive.micro[0].p() + 0.15,
        "positive precision {} vs naive {}",
        pos.p(),
        naive.micro[0].p()
    );
    let n = cases.len();
    assert!(
        n - naive.exact >= 4 * (n - real.exact),
        "cases with an error: {} vs naive {}",
        n - real.exact,
        n - naive.exact
    );
}

#[test]
fn every_test_label_is_covered() {
    // The set exercises every label the labeler emits, and every class for the CheXpert 5.
    let cases = cases();
    let mut seen: HashMap<(String, i8), usize> = HashMap::new();
    for c in &cases {
        for (k, v) in &c.labels {
            *seen.entry((k.clone(), *v)).or_default() += 1;
        }
    }
    for l in all_labels() {
        assert!(seen.keys().any(|(k, _)| k == l), "no case for {l}");
    }
    for l in medvlp_data::text::CHEXPERT_5 {
        for v in CLASSES {
            assert!(seen.contains_key(&(l.to_string(), v)), "no case for {l} = {v}");
        }
    }
}
