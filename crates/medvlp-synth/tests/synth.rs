//! Evidence that the synthetic benchmark (`medvlp_synth`) is a real benchmark:
//! determinism, consistency between image parameters, labels and report text, reports that never
//! contradict their image, a linear image baseline above chance on every finding, and the text
//! labeler recovering the generated labels from the reports.
//!
//! Run with `--nocapture` to see the per-finding numbers.

use std::collections::BTreeMap;
use std::path::Path;

use medvlp_data::text::labels::label_report;
use medvlp_synth::findings::{close_hierarchy, Findings, Side, SYNTH_LABELS};
use medvlp_synth::phantom::{image_side, region_mean};
use medvlp_synth::report::Mention;
use medvlp_synth::{
    generate, phantom, plan, render_study, report_study, study_rng, Difficulty, Part, StudyPlan,
    SynthConfig,
};
use rayon::prelude::*;

fn cfg(n: usize, size: u32) -> SynthConfig {
    SynthConfig { n, image_only: 0, text_only: 0, size, seed: 7, ..SynthConfig::default() }
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        let rel = e.strip_prefix(dir).unwrap().to_string_lossy().to_string();
        out.insert(rel, std::fs::read(&e).unwrap());
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v.sort();
    v
}

#[test]
fn deterministic_across_thread_counts_and_seed_sensitive() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SynthConfig {
        n: 24,
        image_only: 6,
        text_only: 6,
        size: 64,
        seed: 11,
        label_noise: 0.1,
        ..SynthConfig::default()
    };
    let run = |threads: usize, c: &SynthConfig, name: &str| {
        let dir = tmp.path().join(name);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| generate(c, &dir)).unwrap();
        files(&dir)
    };
    let a = run(1, &c, "a");
    let b = run(2, &c, "b");
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{k} differs between 1 and 2 threads");
    }
    // 24 + 6 images, 5 metadata files.
    assert_eq!(a.keys().filter(|k| k.starts_with("images/")).count(), 30);
    for f in [
        "manifest.jsonl",
        "image_only.jsonl",
        "text_only.jsonl",
        "ground_truth.jsonl",
        "synth.json",
    ] {
        assert!(a.contains_key(f), "{f} missing");
    }
    // Regenerating a smaller set into a used directory leaves exactly the smaller set.
    let small = SynthConfig { n: 5, image_only: 0, text_only: 0, ..c.clone() };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| generate(&small, &tmp.path().join("b"))).unwrap();
    pool.install(|| generate(&small, &tmp.path().join("f"))).unwrap();
    assert_eq!(files(&tmp.path().join("b")), files(&tmp.path().join("f")));
    let c2 = SynthConfig { seed: 12, ..c.clone() };
    let d = run(2, &c2, "d");
    assert_ne!(a["manifest.jsonl"], d["manifest.jsonl"]);
    let differing =
        a.iter().filter(|(k, v)| k.starts_with("images/") && d.get(*k) != Some(v)).count();
    assert_eq!(differing, 30, "every image should change with the seed");

    // Manifest contract: paired rows have an image and a report; unpaired parts lack one.
    let m = medvlp_data::dataset::read_manifest(tmp.path().join("a/manifest.jsonl")).unwrap();
    assert_eq!(m.len(), 24);
    assert!(m.iter().all(|s| s.images.len() == 1
        && s.text.is_some()
        && s.labels.len() == SYNTH_LABELS.len()
        && s.split.is_some()));
    let io = medvlp_data::dataset::read_manifest(tmp.path().join("a/image_only.jsonl")).unwrap();
    assert!(io.iter().all(|s| s.images.len() == 1 && s.text.is_none() && s.sections.is_empty()));
    let to = medvlp_data::dataset::read_manifest(tmp.path().join("a/text_only.jsonl")).unwrap();
    assert!(to.iter().all(|s| s.images.is_empty() && s.text.is_some()));
    // 16-bit PNGs decode to 16-bit grayscale.
    let c16 = SynthConfig {
        n: 2,
        image_only: 0,
        text_only: 0,
        size: 64,
        bits: 16,
        ..SynthConfig::default()
    };
    generate(&c16, &tmp.path().join("e")).unwrap();
    let img = image::open(tmp.path().join("e/images/s0000000.png")).unwrap();
    assert_eq!(img.color(), image::ColorType::L16);
    assert_eq!((img.width(), img.height()), (64, 64));
}

#[test]
fn splits_are_by_patient_and_some_patients_have_two_studies() {
    let plans =
        plan(&SynthConfig { n: 2000, image_only: 200, text_only: 200, ..cfg(0, 64) }).unwrap();
    let mut split_of: BTreeMap<&str, _> = BTreeMap::new();
    let mut studies: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &plans {
        let s = split_of.entry(p.patient_id.as_str()).or_insert(p.split);
        assert_eq!(*s, p.split, "patient {} in two splits", p.patient_id);
        *studies.entry(p.patient_id.as_str()).or_default() += 1;
        if let Some(i) = p.prior {
            assert_eq!(plans[i].patient_id, p.patient_id);
        }
    }
    let two = studies.values().filter(|&&n| n == 2).count();
    assert!(two > 100, "follow-up studies: {two}");
    let paired: Vec<_> = plans.iter().filter(|p| p.part == Part::Paired).collect();
    let frac = |s: &str| {
        paired.iter().filter(|p| p.split.as_str() == s).count() as f64 / paired.len() as f64
    };
    println!(
        "splits: train {:.3} validate {:.3} test {:.3}",
        frac("train"),
        frac("validate"),
        frac("test")
    );
    assert!((frac("train") - 0.8).abs() < 0.05 && (frac("test") - 0.1).abs() < 0.04);
}

#[test]
fn prevalence_of_the_competition_findings_is_in_range() {
    for d in [Difficulty::Easy, Difficulty::Standard, Difficulty::Hard] {
        let plans = plan(&SynthConfig { difficulty: d, ..cfg(4000, 64) }).unwrap();
        let mut line = format!("{:>8}:", d.as_str());
        for l in SYNTH_LABELS {
            let p = plans.iter().filter(|p| p.labels()[l] == 1).count() as f64 / plans.len() as f64;
            line += &format!(" {l}={p:.3}");
            if medvlp_data::text::CHEXPERT_5.contains(&l) {
                assert!((0.1..=0.3).contains(&p), "{l} prevalence {p} at {d:?}");
            }
            if l != "No Finding" {
                assert!(p >= 0.02, "{l} too rare: {p}");
            }
        }
        println!("{line}");
    }
}

fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let b: Vec<char> = text.chars().collect();
    for (i, &c) in b.iter().enumerate() {
        let end =
            c == '\n' || c == ';' || (c == '.' && b.get(i + 1).is_none_or(|n| n.is_whitespace()));
        if end {
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_ascii_lowercase());
            }
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_ascii_lowercase());
    }
    out
}

fn has_word(s: &str, w: &str) -> bool {
    s.split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
        .any(|x| x == w || x.strip_suffix("-sided") == Some(w))
}

/// The lateralised findings of a study: (kind, report terms, side).
fn lateral(f: &Findings) -> Vec<(&'static str, &'static [&'static str], Side)> {
    let mut v = Vec::new();
    if let Some(e) = &f.effusion {
        v.push(("effusion", &["effusion", "costophrenic"][..], e.side));
    }
    if let Some(p) = &f.pneumothorax {
        v.push(("pneumothorax", &["pneumothorax"][..], p.side));
    }
    if let Some(c) = &f.consolidation {
        v.push(("consolidation", &["consolidation", "pneumonia"][..], c.lobe.side()));
    }
    if let Some(a) = &f.atelectasis {
        v.push(("atelectasis", &["atelectasis", "collapse of"][..], a.side));
    }
    if let Some(x) = &f.fracture {
        v.push(("fracture", &["fracture"][..], x.side));
    }
    v
}

#[test]
fn labels_attributes_and_report_text_agree() {
    let c = cfg(3000, 64);
    let plans = plan(&c).unwrap();
    let mut checked = BTreeMap::<&str, usize>::new();
    for p in &plans {
        let f = &p.findings;
        let l = p.labels();
        // Labels follow the attributes.
        assert_eq!(l["Lung Lesion"] == 1, f.nodule.is_some() || f.mass.is_some());
        assert_eq!(l["Pneumonia"] == 1, f.consolidation.as_ref().is_some_and(|c| c.pneumonia));
        assert_eq!(
            l["Lung Opacity"] == 1,
            f.consolidation.is_some() || f.atelectasis.is_some() || f.edema.is_some()
        );
        assert_eq!(l["Support Devices"] == 1, f.devices.any());
        let sick = [
            "Atelectasis",
            "Cardiomegaly",
            "Consolidation",
            "Edema",
            "Pleural Effusion",
            "Pneumothorax",
            "Fracture",
            "Lung Lesion",
        ]
        .iter()
        .any(|k| l[*k] == 1);
        assert_eq!(l["No Finding"] == 1, !sick);
        if let Some(m) = &f.mass {
            assert!(m.size_cm >= 3.0);
        }
        if let Some(n) = &f.nodule {
            assert!(n.size_cm < 3.0);
        }
        if let Some(cm) = &f.cardiomegaly {
            assert!(cm.ctr > 0.5, "cardiomegaly with ctr {}", cm.ctr);
        }

        let r = report_study(&c, &plans, p);
        let text = format!("{}\n{}", r.findings, r.impression);
        let sents = sentences(&text);
        // Sides: every sentence naming a lateralised finding names its side and never the other.
        for (kind, terms, side) in lateral(f) {
            if r.mentions.get(kind) == Some(&Mention::NoiseOmitted) {
                continue;
            }
            let about: Vec<&String> =
                sents.iter().filter(|s| terms.iter().any(|t| s.contains(t))).collect();
            assert!(!about.is_empty(), "{kind} not mentioned in {text:?}");
            for s in about {
                let (own, other): (&[&str], &[&str]) = match side {
                    Side::Left => (&["left", "lingula", "lingular"], &["right"]),
                    Side::Right => (&["right"], &["left"]),
                    Side::Bilateral => (&["bilateral", "bilaterally", "bibasilar", "both"], &[]),
                };
                let own_ok = own.iter().any(|w| has_word(s, w))
                    || kind == "effusion" && side == Side::Bilateral && s.contains("effusions");
                assert!(own_ok, "{kind} ({side:?}) sentence without its side: {s:?}\n{text}");
                for w in other {
                    assert!(
                        !has_word(s, w),
                        "{kind} ({side:?}) sentence names the other side: {s:?}\n{text}"
                    );
                }
            }
            *checked.entry(kind).or_default() += 1;
        }
        // Effusion size words.
        if let Some(e) = &f.effusion {
            let words: [&[&str]; 3] =
                [&["small", "trace"], &["moderate", "moderate-sized"], &["large", "sizable"]];
            for s in sents.iter().filter(|s| s.contains("effusion")) {
                for (i, ws) in words.iter().enumerate() {
                    if i != e.size.index() {
                        assert!(!ws.iter().any(|w| has_word(s, w)), "size {:?} but {s:?}", e.size);
                    }
                }
            }
        }
        // Numbers: the stated cardiothoracic ratio is the rendered one.
        if let Some(cm) = &f.cardiomegaly {
            if let Some(pos) = text.find("ratio") {
                let num: String = text[pos..]
                    .chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                assert_eq!(num.trim_end_matches('.'), format!("{:.2}", cm.ctr), "{text}");
            }
        }
        // Findings absent from the image are never described as present.
        if f.effusion.is_none() {
            assert!(
                !sents.iter().any(|s| s.contains("effusion")
                    && !s.starts_with("no ")
                    && !s.contains(" no ")
                    && !s.contains("resolution")),
                "{text}"
            );
        }
    }
    println!("laterality checked: {checked:?}");
    assert!(checked.values().all(|&n| n > 20), "{checked:?}");
}

#[test]
fn one_finding_set_maps_to_many_reports() {
    let c = cfg(2000, 64);
    let plans = plan(&c).unwrap();
    let normal: Vec<&StudyPlan> = plans
        .iter()
        .filter(|p| {
            p.labels()["No Finding"] == 1
                && !p.findings.devices.any()
                && p.findings.granuloma.is_none()
        })
        .collect();
    let texts: std::collections::BTreeSet<String> =
        normal.iter().map(|p| report_study(&c, &plans, p).findings).collect();
    println!("{} normal studies, {} distinct FINDINGS texts", normal.len(), texts.len());
    assert!(texts.len() as f64 > 0.5 * normal.len() as f64);
    // The same findings re-reported with other report seeds give different texts.
    let p = plans
        .iter()
        .find(|p| p.findings.effusion.is_some() && p.findings.cardiomegaly.is_some())
        .unwrap();
    let variants: std::collections::BTreeSet<String> = (0..30)
        .map(|s| {
            let c2 = SynthConfig { seed: s, ..c.clone() };
            report_study(&c2, &plans, p).findings
        })
        .collect();
    assert!(variants.len() >= 25, "{variants:?}");
}

/// Image with and without one finding (same patient, same noise): where does the difference lie?
fn side_of_difference(c: &SynthConfig, p: &StudyPlan, strip: impl Fn(&mut Findings)) -> (f32, f32) {
    let a = render_study(c, p);
    let mut q = p.clone();
    strip(&mut q.findings);
    let b = render_study(c, &q);
    let s = c.size as usize;
    let (mut l, mut r) = (0.0, 0.0);
    for y in 0..s {
        for x in 0..s {
            let d = (a[y * s + x] - b[y * s + x]).abs();
            if x < s / 2 {
                l += d;
            } else {
                r += d;
            }
        }
    }
    (l, r)
}

#[test]
fn reports_never_contradict_their_image() {
    let c = cfg(1500, 96);
    let plans = plan(&c).unwrap();
    // 1. Region means: a unilateral moderate/large effusion makes that side's lower lateral zone
    //    brighter; the patient's LEFT is the image's RIGHT.
    let mut n = 0;
    let mut ok = 0;
    for p in plans.iter().filter(|p| {
        p.findings
            .effusion
            .as_ref()
            .is_some_and(|e| e.side != Side::Bilateral && e.size.index() >= 1)
            && p.findings.atelectasis.is_none()
            && p.findings.consolidation.is_none()
    }) {
        let img = render_study(&c, p);
        let left_img = region_mean(&img, 96, 0.12, 0.3, 0.55, 0.7);
        let right_img = region_mean(&img, 96, 0.7, 0.88, 0.55, 0.7);
        let side = p.findings.effusion.as_ref().unwrap().side;
        let report = report_study(&c, &plans, p);
        let says_left = sentences(&format!("{}\n{}", report.findings, report.impression))
            .iter()
            .any(|s| s.contains("effusion") && has_word(s, "left"));
        assert_eq!(says_left, side == Side::Left);
        n += 1;
        if (side == Side::Left) == (right_img > left_img) {
            ok += 1;
        }
    }
    println!("effusion region means on the reported side: {ok}/{n}");
    assert!(n >= 20 && ok as f64 >= 0.95 * n as f64, "{ok}/{n}");

    // 2. Counterfactual renders: every lateralised finding changes the image on its side.
    let mut stats: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in plans.iter().take(800) {
        let f = &p.findings;
        let mut check = |kind: &'static str, side: Side, strip: &dyn Fn(&mut Findings)| {
            if side == Side::Bilateral {
                return;
            }
            let (l, r) = side_of_difference(&c, p, strip);
            let e = stats.entry(kind).or_default();
            e.0 += 1;
            if (image_side(side) == 0) == (l > r) {
                e.1 += 1;
            }
            assert!(l + r > 0.5, "{kind} of {} is invisible (total difference {})", p.id, l + r);
        };
        if let Some(x) = &f.effusion {
            check("effusion", x.side, &|f| f.effusion = None);
        }
        if let Some(x) = &f.pneumothorax {
            check("pneumothorax", x.side, &|f| f.pneumothorax = None);
        }
        if let Some(x) = &f.consolidation {
            check("consolidation", x.lobe.side(), &|f| f.consolidation = None);
        }
        if let Some(x) = &f.nodule {
            check("nodule", x.lobe.side(), &|f| f.nodule = None);
        }
        if let Some(x) = &f.mass {
            check("mass", x.lobe.side(), &|f| f.mass = None);
        }
        if let Some(x) = &f.fracture {
            check("fracture", x.side, &|f| f.fracture = None);
        }
        if let Some(x) = &f.devices.pacemaker {
            check("pacemaker", x.side, &|f| f.devices.pacemaker = None);
        }
        if let Some(x) = &f.atelectasis {
            if x.kind == medvlp_synth::findings::AtelectasisKind::PlateLike {
                check("atelectasis", x.side, &|f| f.atelectasis = None);
            }
        }
    }
    println!("counterfactual side agreement: {stats:?}");
    for (k, (n, ok)) in &stats {
        assert!(*n >= 5, "{k}: only {n} cases");
        assert_eq!(ok, n, "{k}: image difference on the wrong side in {} of {n}", n - ok);
    }

    // 3. Cardiomegaly: the stated ratio is what is drawn (heart wider than half the thorax).
    let an = &plans[0].anatomy;
    let mut f = Findings::default();
    let acq = plans
        .iter()
        .find(|p| p.acquisition.view == medvlp_synth::findings::View::Pa)
        .unwrap()
        .acquisition
        .clone();
    let g0 = phantom::Geometry::new(an, &acq, &f);
    f.cardiomegaly = Some(medvlp_synth::findings::Cardiomegaly {
        ctr: 0.62,
        severity: medvlp_synth::findings::Severity::Moderate,
        conspicuity: 1.0,
    });
    let g1 = phantom::Geometry::new(an, &acq, &f);
    assert!((g1.heart_r.0 * 2.0 / (2.0 * g1.tw) - 0.62).abs() < 1e-4);
    assert!(g1.heart_r.0 > g0.heart_r.0 * 1.2);
    let _ = study_rng(0, 0, 0);
}

// ---------------------------------------------------------------- supervised baseline

/// Simple image features: 16x16 average pooling; per cell of a 4x4 grid the maximum, minimum
/// and mean magnitude of a difference-of-boxes band-pass image (3x3 mean minus 9x9 mean: blobs,
/// lines, gaps); and the fraction of very bright pixels (metal, calcium).
fn features(img: &[f32], s: usize) -> Vec<f32> {
    let mut f = Vec::with_capacity(256 + 49);
    let cell = s / 16;
    for gy in 0..16 {
        for gx in 0..16 {
            let mut sum = 0.0;
            for y in gy * cell..(gy + 1) * cell {
                for x in gx * cell..(gx + 1) * cell {
                    sum += img[y * s + x];
                }
            }
            f.push(sum / (cell * cell) as f32);
        }
    }
    // Integral image for the box means.
    let mut ii = vec![0.0f64; (s + 1) * (s + 1)];
    for y in 0..s {
        let mut row = 0.0;
        for x in 0..s {
            row += img[y * s + x] as f64;
            ii[(y + 1) * (s + 1) + x + 1] = ii[y * (s + 1) + x + 1] + row;
        }
    }
    let boxm = |x: usize, y: usize, r: usize| {
        let (y0, y1, x0, x1) =
            (y.saturating_sub(r), (y + r + 1).min(s), x.saturating_sub(r), (x + r + 1).min(s));
        let area = ((y1 - y0) * (x1 - x0)) as f64;
        ((ii[y1 * (s + 1) + x1] - ii[y0 * (s + 1) + x1] - ii[y1 * (s + 1) + x0]
            + ii[y0 * (s + 1) + x0])
            / area) as f32
    };
    let mut hmax = [f32::MIN; 16];
    let mut hmin = [f32::MAX; 16];
    let mut hen = [0.0f32; 16];
    let mut bright = 0usize;
    let c4 = s / 4;
    for y in 0..s {
        for x in 0..s {
            let h = boxm(x, y, 1) - boxm(x, y, 4);
            let k = (y / c4).min(3) * 4 + (x / c4).min(3);
            hmax[k] = hmax[k].max(h);
            hmin[k] = hmin[k].min(h);
            hen[k] += h.abs();
            if img[y * s + x] > 0.97 {
                bright += 1;
            }
        }
    }
    // Isolated blobs (nodules, calcifications, callus): centre minus the brightest of 8
    // surrounding samples, which is negative on edges, bands and vessels. Max per 4x4 cell.
    let sc = s as f32 / 96.0;
    for (r, d) in [(0usize, 2.0f32), (1, 4.0), (2, 7.0)] {
        let r = ((r as f32) * sc).round() as usize;
        let d = (d * sc).round() as isize;
        let mut bmax = [f32::MIN; 16];
        for y in 0..s {
            for x in 0..s {
                let c = boxm(x, y, r);
                let mut ring = f32::MIN;
                for (ox, oy) in
                    [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]
                {
                    let (xx, yy) = (x as isize + ox * d, y as isize + oy * d);
                    if xx < 0 || yy < 0 || xx >= s as isize || yy >= s as isize {
                        continue;
                    }
                    ring = ring.max(boxm(xx as usize, yy as usize, r));
                }
                let k = (y / c4).min(3) * 4 + (x / c4).min(3);
                bmax[k] = bmax[k].max(c - ring);
            }
        }
        f.extend_from_slice(&bmax);
    }
    f.extend_from_slice(&hmax);
    f.extend_from_slice(&hmin);
    f.extend(hen.iter().map(|e| e / (c4 * c4) as f32));
    f.push(bright as f32 / (s * s) as f32 * 100.0);
    f
}

/// L2-regularised logistic regression by full-batch gradient descent (features standardised).
fn train_logreg(x: &[Vec<f32>], y: &[f32], epochs: usize, lr: f32, l2: f32) -> Vec<f32> {
    let d = x[0].len();
    let mut w = vec![0.0f32; d + 1];
    let n = x.len() as f32;
    let pos = y.iter().sum::<f32>().max(1.0);
    let wpos = (n - pos) / pos; // class balance
    for _ in 0..epochs {
        let mut g = vec![0.0f32; d + 1];
        for (xi, &yi) in x.iter().zip(y) {
            let z = w[d] + xi.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>();
            let p = 1.0 / (1.0 + (-z).exp());
            let cw = if yi > 0.5 { wpos } else { 1.0 };
            let e = (p - yi) * cw;
            for j in 0..d {
                g[j] += e * xi[j];
            }
            g[d] += e;
        }
        for j in 0..d {
            w[j] -= lr * (g[j] / n + l2 * w[j]);
        }
        w[d] -= lr * g[d] / n;
    }
    w
}

fn auroc(scores: &[f32], y: &[f32]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap());
    let (mut rank_sum, mut npos) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            if y[idx[k]] > 0.5 {
                rank_sum += r;
                npos += 1.0;
            }
        }
        i = j + 1;
    }
    let nneg = y.len() as f64 - npos;
    (rank_sum - npos * (npos + 1.0) / 2.0) / (npos * nneg)
}

#[test]
fn linear_baseline_separates_every_finding() {
    let c = SynthConfig {
        n: 5000,
        image_only: 0,
        text_only: 0,
        size: 96,
        seed: 3,
        // MEDVLP_SYNTH_DIFFICULTY=easy|hard measures the other difficulties (default standard).
        difficulty: std::env::var("MEDVLP_SYNTH_DIFFICULTY")
            .map_or(Difficulty::Standard, |d| d.parse().unwrap()),
        ..SynthConfig::default()
    };
    let plans = plan(&c).unwrap();
    let feats: Vec<Vec<f32>> =
        plans.par_iter().map(|p| features(&render_study(&c, p), 96)).collect();
    let d = feats[0].len();
    let (mean, sd): (Vec<f32>, Vec<f32>) = (0..d)
        .map(|j| {
            let m = feats.iter().map(|f| f[j]).sum::<f32>() / feats.len() as f32;
            let v = feats.iter().map(|f| (f[j] - m).powi(2)).sum::<f32>() / feats.len() as f32;
            (m, v.sqrt().max(1e-6))
        })
        .unzip();
    let x: Vec<Vec<f32>> = feats
        .iter()
        .map(|f| f.iter().enumerate().map(|(j, v)| (v - mean[j]) / sd[j]).collect())
        .collect();
    // Held-out by patient: the test split of the plan (plus validate for more positives).
    let train: Vec<usize> =
        (0..plans.len()).filter(|&i| plans[i].split.as_str() == "train").collect();
    let test: Vec<usize> =
        (0..plans.len()).filter(|&i| plans[i].split.as_str() != "train").collect();
    let labels: Vec<&str> = SYNTH_LABELS.to_vec();
    let res: Vec<(String, f64, usize)> = labels
        .par_iter()
        .map(|l| {
            let y: Vec<f32> = plans.iter().map(|p| p.labels()[*l] as f32).collect();
            let xt: Vec<Vec<f32>> = train.iter().map(|&i| x[i].clone()).collect();
            let yt: Vec<f32> = train.iter().map(|&i| y[i]).collect();
            let w = train_logreg(&xt, &yt, 150, 0.5, 1e-3);
            let s: Vec<f32> = test
                .iter()
                .map(|&i| w[d] + x[i].iter().zip(&w).map(|(a, b)| a * b).sum::<f32>())
                .collect();
            let yv: Vec<f32> = test.iter().map(|&i| y[i]).collect();
            let npos = yv.iter().filter(|v| **v > 0.5).count();
            (l.to_string(), auroc(&s, &yv), npos)
        })
        .collect();
    println!(
        "linear baseline (train {} / held-out {} studies, 96 px, {}): per-finding held-out AUROC",
        train.len(),
        test.len(),
        c.difficulty.as_str()
    );
    for (l, a, npos) in &res {
        println!("  {l:<18} {a:.3}  ({npos} positives)");
    }
    let comp: Vec<f64> = res
        .iter()
        .filter(|(l, _, _)| medvlp_data::text::CHEXPERT_5.contains(&l.as_str()))
        .map(|r| r.1)
        .collect();
    println!("  CheXpert-5 macro AUROC {:.3}", comp.iter().sum::<f64>() / comp.len() as f64);
    for (l, a, npos) in &res {
        assert!(*a > 0.6, "{l}: held-out AUROC {a:.3} ({npos} positives)");
    }
}

// ---------------------------------------------------------------- text labeler

type Labels = BTreeMap<String, i8>;

fn labeler_scores(
    c: &SynthConfig,
    n_reports: usize,
) -> (f64, BTreeMap<String, (usize, usize, usize)>, usize) {
    let plans = plan(c).unwrap();
    let plans: Vec<&StudyPlan> = plans.iter().take(n_reports).collect();
    let all = plan(c).unwrap();
    let rows: Vec<(Labels, Labels, bool)> = plans
        .par_iter()
        .map(|p| {
            let r = report_study(c, &all, p);
            let text = format!("{}\n\n{}", r.findings, r.impression);
            let mut got = label_report(&text);
            close_hierarchy(&mut got);
            let noisy = r
                .mentions
                .values()
                .any(|m| matches!(m, Mention::NoiseOmitted | Mention::NoiseHedged));
            (p.labels(), got, noisy)
        })
        .collect();
    let mut per: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut noisy_reports = 0;
    for (truth, got, noisy) in &rows {
        noisy_reports += *noisy as usize;
        for l in SYNTH_LABELS {
            if l == "No Finding" {
                continue;
            }
            // Uncertain (-1) counts as positive (U-ones): hedged reports still describe the finding.
            let t = truth[l] == 1;
            let g = matches!(got.get(l), Some(1) | Some(-1));
            let e = per.entry(l.to_string()).or_default();
            match (t, g) {
                (true, true) => e.0 += 1,
                (false, true) => e.1 += 1,
                (true, false) => e.2 += 1,
                _ => {}
            }
        }
    }
    let (tp, fp, fnn) = per.values().fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
    let f1 = 2.0 * tp as f64 / (2 * tp + fp + fnn) as f64;
    (f1, per, noisy_reports)
}

#[test]
fn text_labeler_recovers_generated_labels() {
    let c = SynthConfig { label_noise: 0.0, ..cfg(2500, 64) };
    let (f1, per, _) = labeler_scores(&c, 2500);
    println!("labeler vs ground truth (2500 reports, no label noise; uncertain counted positive; No Finding excluded):");
    for (l, (tp, fp, fnn)) in &per {
        let f = 2.0 * *tp as f64 / (2 * tp + fp + fnn).max(1) as f64;
        println!("  {l:<18} tp {tp:>4} fp {fp:>3} fn {fnn:>3}  F1 {f:.3}");
    }
    println!("  micro F1 {f1:.4}");
    assert!(f1 >= 0.95, "micro F1 {f1}");
    for (l, (tp, fp, fnn)) in &per {
        let f = 2.0 * *tp as f64 / (2 * tp + fp + fnn).max(1) as f64;
        assert!(f >= 0.9, "{l}: F1 {f}");
    }
    // With label noise the reports drift from the image, by about the noise fraction.
    let c = SynthConfig { label_noise: 0.2, ..c };
    let (f1n, _, noisy) = labeler_scores(&c, 2500);
    println!("  with --label-noise 0.2: {noisy} noisy reports, micro F1 {f1n:.4}");
    assert!(f1n < f1 && noisy > 250);
}
