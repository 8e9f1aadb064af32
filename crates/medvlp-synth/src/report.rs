//! Radiology reports from a finding list: FINDINGS and IMPRESSION in the style of real reports.
//!
//! Many phrasings per finding and attribute (synonyms, laterality and severity words), normal
//! statements for absent findings, hedges for subtle findings, comparison phrases when the patient
//! has a prior study, varying order and length, omitted normal statements. One finding set maps to
//! many reports. Label noise: a fraction of reports omits or hedges one rendered finding.
//!
//! Every phrase is written so that the project's labeler (`text::labels::label_report`) reads it
//! the way a radiologist would: positive statements are asserted, hedged ones uncertain, normal
//! statements negated. Sides are the patient's.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::findings::{
    Acquisition, AtelectasisKind, Context, Findings, Lesion, LineSite, Lobe, Severity, Side, View,
    SUBTLE_BELOW,
};

/// How the report states a rendered finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mention {
    Stated,
    /// Hedged because the finding is subtle ("possible", "cannot be excluded").
    Hedged,
    /// Hedged by the label-noise knob although the finding is conspicuous.
    NoiseHedged,
    /// Left out by the label-noise knob.
    NoiseOmitted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub indication: String,
    pub comparison: String,
    pub findings: String,
    pub impression: String,
    /// Per rendered finding kind ("effusion", "cardiomegaly", ...): how the report states it.
    pub mentions: BTreeMap<String, Mention>,
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.random_bool(p.clamp(0.0, 1.0))
}

fn ordinal(n: u8) -> String {
    let suf = match n {
        1 => "st",
        2 => "nd",
        3 => "rd",
        _ => "th",
    };
    format!("{n}{suf}")
}

fn size_text(rng: &mut ChaCha8Rng, cm: f32) -> String {
    if cm < 1.0 || chance(rng, 0.3) && cm < 3.0 {
        format!("{} mm", (cm * 10.0).round() as i32)
    } else {
        format!("{cm:.1} cm")
    }
}

fn lobe_words(rng: &mut ChaCha8Rng, l: Lobe) -> &'static str {
    if chance(rng, 0.7) {
        l.name()
    } else {
        l.zone()
    }
}

/// "lingula" used attributively becomes "lingular" ("lingular consolidation").
fn lingular(s: &str) -> String {
    let mut out = s.to_string();
    for noun in ["consolidation", "pneumonia", "nodule", "mass", "pulmonary nodule"] {
        out = out.replace(&format!("lingula {noun}"), &format!("lingular {noun}"));
        out = out.replace(&format!("Lingula {noun}"), &format!("Lingular {noun}"));
    }
    out
}

/// The finding kinds a report can mention, in canonical order.
pub const KINDS: [&str; 11] = [
    "devices",
    "cardiomegaly",
    "edema",
    "consolidation",
    "atelectasis",
    "nodule",
    "mass",
    "granuloma",
    "effusion",
    "pneumothorax",
    "fracture",
];

fn present_kinds(f: &Findings) -> Vec<&'static str> {
    let mut v = Vec::new();
    if f.devices.any() {
        v.push("devices");
    }
    if f.cardiomegaly.is_some() {
        v.push("cardiomegaly");
    }
    if f.edema.is_some() {
        v.push("edema");
    }
    if f.consolidation.is_some() {
        v.push("consolidation");
    }
    if f.atelectasis.is_some() {
        v.push("atelectasis");
    }
    if f.nodule.is_some() {
        v.push("nodule");
    }
    if f.mass.is_some() {
        v.push("mass");
    }
    if f.granuloma.is_some() {
        v.push("granuloma");
    }
    if f.effusion.is_some() {
        v.push("effusion");
    }
    if f.pneumothorax.is_some() {
        v.push("pneumothorax");
    }
    if f.fracture.is_some() {
        v.push("fracture");
    }
    v
}

fn conspicuity_of(f: &Findings, kind: &str) -> f32 {
    match kind {
        "cardiomegaly" => f.cardiomegaly.as_ref().map(|x| x.conspicuity),
        "edema" => f.edema.as_ref().map(|x| x.conspicuity),
        "consolidation" => f.consolidation.as_ref().map(|x| x.conspicuity),
        "atelectasis" => f.atelectasis.as_ref().map(|x| x.conspicuity),
        "nodule" => f.nodule.as_ref().map(|x| x.conspicuity),
        "mass" => f.mass.as_ref().map(|x| x.conspicuity),
        "effusion" => f.effusion.as_ref().map(|x| x.conspicuity),
        "pneumothorax" => f.pneumothorax.as_ref().map(|x| x.conspicuity),
        "fracture" => f.fracture.as_ref().map(|x| x.conspicuity),
        _ => None,
    }
    .unwrap_or(1.0)
}

/// A sentence of the FINDINGS section and its group (for ordering).
struct Sent {
    group: u8, // 0 devices, 1 lungs, 2 pleura, 3 heart, 4 bones
    text: String,
}

/// Probability of stating a normal finding (heart size, pleura) when it is absent.
const NORMAL_P: f64 = 0.8;

/// What a report knows while it is written: the study, and how it states each rendered finding.
struct Say<'a> {
    f: &'a Findings,
    acq: &'a Acquisition,
    ctx: &'a Context,
    /// The same patient's previous study, if any.
    prior: Option<&'a Findings>,
    mentions: BTreeMap<String, Mention>,
}

impl Say<'_> {
    fn mode(&self, k: &str) -> Option<Mention> {
        self.mentions.get(k).copied()
    }
    fn hedged(&self, k: &str) -> bool {
        matches!(self.mode(k), Some(Mention::Hedged | Mention::NoiseHedged))
    }
    fn shown(&self, k: &str) -> bool {
        matches!(self.mode(k), Some(Mention::Stated | Mention::Hedged | Mention::NoiseHedged))
    }
    /// A finding left out by label noise is neither described nor denied.
    fn omitted(&self, k: &str) -> bool {
        matches!(self.mode(k), Some(Mention::NoiseOmitted))
    }
    /// Present on the prior study.
    fn was(&self, k: &str) -> bool {
        self.prior.is_some_and(|p| present_kinds(p).contains(&k))
    }
}

/// One report being written: the study's generator (every section draws from it, in the order
/// [`write_report`] calls them), what to say, and the sentences written so far.
struct Draft<'a> {
    rng: &'a mut ChaCha8Rng,
    say: Say<'a>,
    /// FINDINGS sentences.
    sents: Vec<Sent>,
    /// IMPRESSION items, most important first.
    imp: Vec<String>,
    /// The cardiomegaly impression (edema may fold it into "cardiomegaly with pulmonary edema").
    cardio_imp: Option<String>,
}

/// How the report states each rendered finding: hedged when subtle; label noise omits or hedges
/// one finding (drawn from `rng`).
fn mentions(f: &Findings, label_noise: f64, rng: &mut ChaCha8Rng) -> BTreeMap<String, Mention> {
    let kinds = present_kinds(f);
    let mut mentions: BTreeMap<String, Mention> = BTreeMap::new();
    for k in &kinds {
        let m = if *k != "devices" && *k != "granuloma" && conspicuity_of(f, k) < SUBTLE_BELOW {
            Mention::Hedged
        } else {
            Mention::Stated
        };
        mentions.insert(k.to_string(), m);
    }
    // Label noise: one rendered finding omitted or hedged.
    let noisy: Vec<&str> = kinds.iter().copied().filter(|k| *k != "devices").collect();
    if !noisy.is_empty() && chance(rng, label_noise) {
        let k = noisy[rng.random_range(0..noisy.len())];
        let m = if chance(rng, 0.5) { Mention::NoiseOmitted } else { Mention::NoiseHedged };
        mentions.insert(k.to_string(), m);
    }
    mentions
}

/// Writes the report of one study. `prior` is the same patient's previous study, if any.
pub fn write_report(
    f: &Findings,
    acq: &Acquisition,
    ctx: &Context,
    prior: Option<&Findings>,
    label_noise: f64,
    rng: &mut ChaCha8Rng,
) -> Report {
    let mentions = mentions(f, label_noise, rng);
    let mut d = Draft {
        rng,
        say: Say { f, acq, ctx, prior, mentions },
        sents: Vec::new(),
        imp: Vec::new(),
        cardio_imp: None,
    };
    // The sections draw from the generator in this order.
    d.devices();
    d.heart();
    d.lungs();
    d.pleura();
    d.bones();
    d.finish()
}

/// The FINDINGS sentence and the IMPRESSION item of a nodule or mass.
fn lesion_sentences(
    rng: &mut ChaCha8Rng,
    l: &Lesion,
    what: &str,
    hedge: bool,
    stable: bool,
) -> (String, String) {
    let lobe = lobe_words(rng, l.lobe);
    let size = size_text(rng, l.size_cm);
    let pre = if stable { "Stable " } else { "" };
    match (what, hedge) {
        ("nodule", true) => (
            match rng.random_range(0..2) {
                0 => format!(
                    "Possible {size} nodule in the {lobe}, which may represent a nipple shadow."
                ),
                _ => format!("A questionable {size} nodular density in the {lobe}."),
            },
            "Possible pulmonary nodule; consider repeat radiograph with nipple markers."
                .to_string(),
        ),
        ("nodule", false) => (
            match rng.random_range(0..4) {
                0 => format!("{pre}{size} nodule in the {lobe}."),
                1 => format!("A {size} nodular opacity projects over the {}.", l.lobe.zone()),
                2 => format!("There is a {size} rounded nodule in the {lobe}."),
                _ => format!("{pre}{size} pulmonary nodule in the {lobe}."),
            },
            match rng.random_range(0..2) {
                0 => format!(
                    "{size} {} nodule. Recommend chest CT for further evaluation.",
                    l.lobe.name()
                ),
                _ => format!("{} pulmonary nodule.", cap(l.lobe.name())),
            },
        ),
        (_, true) => (
            format!("Possible mass in the {lobe}."),
            format!("Possible {} mass; CT is recommended.", l.lobe.name()),
        ),
        _ => (
            match rng.random_range(0..3) {
                0 => format!("{pre}{size} mass in the {lobe}."),
                1 => format!("Large lobulated mass in the {lobe} measuring approximately {size}."),
                _ => format!("There is a {size} mass in the {lobe}."),
            },
            match rng.random_range(0..2) {
                0 => {
                    format!("{} mass, concerning for malignancy. Recommend CT.", cap(l.lobe.name()))
                }
                _ => format!("{size} {} mass, suspicious for neoplasm.", l.lobe.name()),
            },
        ),
    }
}

/// The INDICATION section, from the clinical context.
fn indication(rng: &mut ChaCha8Rng, ctx: &Context) -> &'static str {
    if ctx.icu {
        pick(
            rng,
            &[
                "Intubated patient, evaluate tube and line placement.",
                "ICU patient with hypoxia.",
                "Respiratory failure.",
            ],
        )
    } else if ctx.trauma {
        pick(
            rng,
            &[
                "Trauma, chest pain.",
                "Fall with left-sided chest pain.",
                "Motor vehicle collision.",
            ],
        )
    } else if ctx.heart_failure {
        pick(
            rng,
            &[
                "Shortness of breath.",
                "Dyspnea and leg swelling.",
                "History of heart failure, worsening dyspnea.",
            ],
        )
    } else {
        pick(
            rng,
            &[
                "Cough.",
                "Fever and cough.",
                "Chest pain.",
                "Shortness of breath.",
                "Preoperative evaluation.",
                "Follow-up.",
            ],
        )
    }
}

/// The COMPARISON section.
fn comparison(rng: &mut ChaCha8Rng, prior: Option<&Findings>) -> &'static str {
    if prior.is_some() {
        pick(
            rng,
            &[
                "Prior chest radiograph.",
                "Chest radiograph from earlier this year.",
                "Prior study from several months earlier.",
            ],
        )
    } else {
        pick(rng, &["None.", "None available.", "No prior studies."])
    }
}

impl Draft<'_> {
    // ---------------------------------------------------------------- devices
    /// Support devices (ET tube, central line, pacemaker) and sometimes their impression.
    fn devices(&mut self) {
        let Draft { rng, say, sents, imp, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        if say.shown("devices") {
            let d = &f.devices;
            if let Some(et) = &d.et_tube {
                let t = match rng.random_range(0..4) {
                    0 => format!(
                        "Endotracheal tube terminates {:.1} cm above the carina.",
                        et.tip_cm
                    ),
                    1 => format!(
                        "An endotracheal tube is in place with the tip {:.1} cm above the carina.",
                        et.tip_cm
                    ),
                    2 => {
                        format!("ET tube tip is approximately {:.0} cm from the carina.", et.tip_cm)
                    }
                    _ => "The endotracheal tube is in standard position.".to_string(),
                };
                sents.push(Sent { group: 0, text: t });
            }
            if let Some(cl) = &d.central_line {
                let side = cl.side.word();
                let tip = pick(
                    rng,
                    &["the SVC", "the mid SVC", "the lower SVC", "the cavoatrial junction"],
                );
                let t = match (cl.site, rng.random_range(0..3)) {
                    (LineSite::InternalJugular, 0) => format!(
                        "{} internal jugular central venous catheter terminates in {tip}.",
                        cap(side)
                    ),
                    (LineSite::InternalJugular, 1) => {
                        format!("{} IJ central line with tip in {tip}.", cap(side))
                    }
                    (LineSite::InternalJugular, _) => format!(
                        "A {side}-sided internal jugular central line is present, tip at {tip}."
                    ),
                    (LineSite::Subclavian, 0) => {
                        format!(
                            "{} subclavian central venous catheter with tip in {tip}.",
                            cap(side)
                        )
                    }
                    (LineSite::Subclavian, 1) => {
                        format!("{}-sided subclavian line terminates at {tip}.", cap(side))
                    }
                    (LineSite::Subclavian, _) => {
                        format!("A {side} subclavian central catheter ends in {tip}.")
                    }
                };
                sents.push(Sent { group: 0, text: t });
            }
            if let Some(pm) = &d.pacemaker {
                let side = pm.side.word();
                let t = match (pm.leads, rng.random_range(0..3)) {
                    (2, 0) => format!("{}-sided pacemaker with leads terminating in the right atrium and right ventricle.", cap(side)),
                    (2, 1) => format!("{} chest wall dual-chamber pacemaker, leads in expected position.", cap(side)),
                    (2, _) => format!("Transvenous pacemaker leads in the right atrium and right ventricle from a {side} chest wall generator."),
                    (_, 0) => format!("{} chest wall pacemaker with a single lead in the right ventricle.", cap(side)),
                    (_, 1) => format!("Single-lead {side}-sided pacemaker, lead tip in the right ventricle."),
                    _ => format!("A {side} pectoral pacemaker is present with its lead in the right ventricle."),
                };
                sents.push(Sent { group: 0, text: t });
            }
            if chance(rng, 0.5) {
                imp.push(
                    pick(
                        rng,
                        &[
                            "Support devices in standard position.",
                            "Lines and tubes in appropriate position.",
                            "Support devices as described.",
                        ],
                    )
                    .to_string(),
                );
            }
        }
    }

    // ---------------------------------------------------------------- heart
    /// Heart size (normal statement when absent); the cardiomegaly impression is held back in
    /// `cardio_imp` (the lungs may fold it into the edema impression).
    fn heart(&mut self) {
        let Draft { rng, say, sents, cardio_imp, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        let acq = say.acq;
        if let Some(c) = &f.cardiomegaly {
            if say.shown("cardiomegaly") {
                let adv = match c.severity {
                    Severity::Mild => "mildly",
                    Severity::Moderate => "moderately",
                    Severity::Severe => pick(rng, &["markedly", "severely"]),
                };
                let adj = match c.severity {
                    Severity::Mild => "mild",
                    Severity::Moderate => "moderate",
                    Severity::Severe => pick(rng, &["marked", "severe"]),
                };
                let t = if say.hedged("cardiomegaly") {
                    match rng.random_range(0..4) {
                        0 => "Heart size is at the upper limits of normal.".to_string(),
                        1 => "Borderline cardiomegaly.".to_string(),
                        2 if acq.view == View::Ap => {
                            "Possible mild cardiomegaly, accentuated by AP technique.".to_string()
                        }
                        _ => "The heart is possibly mildly enlarged.".to_string(),
                    }
                } else if say.was("cardiomegaly") && chance(rng, 0.6) {
                    match rng.random_range(0..3) {
                        0 => format!("Stable {adj} cardiomegaly."),
                        1 => "Cardiomegaly is unchanged.".to_string(),
                        _ => format!("The heart is still {adv} enlarged."),
                    }
                } else {
                    match rng.random_range(0..6) {
                        0 => format!("The heart is {adv} enlarged."),
                        1 => format!("{} cardiomegaly.", cap(adj)),
                        2 => format!("{} enlargement of the cardiac silhouette.", cap(adj)),
                        3 => format!("The cardiac silhouette is {adv} enlarged, with a cardiothoracic ratio of approximately {:.2}.", c.ctr),
                        4 => format!("Cardiomegaly, cardiothoracic ratio about {:.2}.", c.ctr),
                        _ => format!("Heart size is {adv} enlarged."),
                    }
                };
                sents.push(Sent { group: 3, text: t });
                *cardio_imp = Some(if say.hedged("cardiomegaly") {
                    "Borderline cardiomegaly.".to_string()
                } else if say.was("cardiomegaly") && chance(rng, 0.5) {
                    pick(rng, &["Stable cardiomegaly.", "Unchanged cardiomegaly."]).to_string()
                } else {
                    match rng.random_range(0..3) {
                        0 => format!("{} cardiomegaly.", cap(adj)),
                        1 => "Cardiomegaly.".to_string(),
                        _ => format!("{} enlargement of the cardiac silhouette.", cap(adj)),
                    }
                });
                if chance(rng, 0.4) {
                    let t = pick(
                        rng,
                        &[
                            "The mediastinal contours are unremarkable.",
                            "Hilar contours are normal.",
                            "Mediastinal contours are within normal limits.",
                        ],
                    );
                    sents.push(Sent { group: 3, text: t.to_string() });
                }
            }
        } else if chance(rng, NORMAL_P) && !say.omitted("cardiomegaly") {
            let t = pick(
                rng,
                &[
                    "The heart is normal in size.",
                    "Heart size is normal.",
                    "Normal heart size.",
                    "The cardiac silhouette is within normal limits.",
                    "The cardiomediastinal silhouette is normal.",
                    "Cardiomediastinal contours are within normal limits.",
                    "Heart size and mediastinal contours are normal.",
                    "The heart is not enlarged.",
                ],
            );
            sents.push(Sent { group: 3, text: t.to_string() });
        }
    }

    // ---------------------------------------------------------------- lungs
    /// The lungs, in this order: edema, consolidation, atelectasis, nodule and mass, granuloma,
    /// then the closing statements.
    fn lungs(&mut self) {
        let say = &self.say;
        let parenchymal = ["edema", "consolidation", "atelectasis", "nodule", "mass"];
        let clear_lungs = !parenchymal.iter().any(|k| say.mode(k).is_some());
        self.edema(clear_lungs);
        self.consolidation();
        self.atelectasis();
        self.lesions();
        self.granuloma();
        self.lungs_close(clear_lungs);
    }

    /// Edema, or its denial when other lung findings are described.
    fn edema(&mut self, clear_lungs: bool) {
        let Draft { rng, say, sents, imp, cardio_imp } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        if let Some(e) = &f.edema {
            if say.shown("edema") {
                let adj = match e.severity {
                    Severity::Mild => pick(rng, &["mild", "mild interstitial"]),
                    Severity::Moderate => "moderate",
                    Severity::Severe => pick(rng, &["severe", "marked"]),
                };
                let t = if say.hedged("edema") {
                    pick(
                        rng,
                        &[
                            "Possible mild interstitial edema.",
                            "Mild vascular prominence, possibly early interstitial edema.",
                            "Subtle perihilar haziness may reflect mild pulmonary edema.",
                        ],
                    )
                    .to_string()
                } else {
                    match rng.random_range(0..5) {
                        0 => format!("{} pulmonary edema.", cap(adj)),
                        1 => format!("{} pulmonary edema with perihilar haziness.", cap(adj)),
                        2 => format!("There is {adj} pulmonary edema."),
                        3 => format!("Perihilar haziness and indistinct pulmonary vasculature, consistent with {adj} pulmonary edema."),
                        _ if e.severity == Severity::Severe => "Severe pulmonary edema with bilateral perihilar airspace opacities.".to_string(),
                        _ => format!("Findings of {adj} interstitial pulmonary edema."),
                    }
                };
                sents.push(Sent { group: 1, text: t });
                if e.vascular_congestion && !say.hedged("edema") && chance(rng, 0.7) {
                    let t = pick(
                        rng,
                        &[
                            "Pulmonary vascular congestion.",
                            "There is pulmonary vascular congestion with cephalization.",
                            "Engorgement of the pulmonary vasculature.",
                            "The pulmonary vasculature is engorged, with upper lobe redistribution.",
                        ],
                    );
                    sents.push(Sent { group: 1, text: t.to_string() });
                }
                if e.kerley_lines && !say.hedged("edema") && chance(rng, 0.7) {
                    let t = pick(
                        rng,
                        &[
                            "Kerley B lines are present at the lung bases.",
                            "Kerley B lines at both bases.",
                            "Septal lines are seen at the lung bases.",
                        ],
                    );
                    sents.push(Sent { group: 1, text: t.to_string() });
                }
                imp.push(if say.hedged("edema") {
                    "Possible mild pulmonary edema.".to_string()
                } else if cardio_imp.is_some() && !say.hedged("cardiomegaly") && chance(rng, 0.5) {
                    *cardio_imp = None;
                    format!("Cardiomegaly with {adj} pulmonary edema, consistent with congestive heart failure.")
                } else {
                    match rng.random_range(0..3) {
                        0 => format!("{} pulmonary edema.", cap(adj)),
                        1 => format!("Findings consistent with {adj} pulmonary edema."),
                        _ => format!("{} interstitial edema.", cap(adj)),
                    }
                });
            }
        } else if !clear_lungs && chance(rng, 0.5) {
            let t = pick(
                rng,
                &[
                    "No pulmonary edema.",
                    "No evidence of pulmonary edema.",
                    "No vascular congestion or edema.",
                ],
            );
            sents.push(Sent { group: 1, text: t.to_string() });
        }
    }

    fn consolidation(&mut self) {
        let Draft { rng, say, sents, imp, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        if let Some(c) = &f.consolidation {
            if say.shown("consolidation") {
                let lobe = lobe_words(rng, c.lobe);
                let ext = match c.extent {
                    Severity::Mild => pick(rng, &["patchy", "focal", "mild"]),
                    Severity::Moderate => pick(rng, &["moderate", "confluent"]),
                    Severity::Severe => pick(rng, &["dense", "extensive"]),
                };
                let ab = c.air_bronchograms;
                let t = if say.hedged("consolidation") {
                    match rng.random_range(0..3) {
                        0 => format!("Subtle opacity in the {lobe}, possibly early consolidation."),
                        1 => format!("Possible {lobe} consolidation."),
                        _ => format!("Ill-defined opacity in the {lobe}; early consolidation cannot be excluded."),
                    }
                } else {
                    let mut t = match rng.random_range(0..4) {
                        0 => format!("{} consolidation in the {lobe}", cap(ext)),
                        1 => format!("There is {ext} airspace consolidation involving the {lobe}"),
                        2 => format!("{} consolidation of the {lobe}", cap(ext)),
                        _ => format!("{} {lobe} consolidation", cap(ext)),
                    };
                    if ab {
                        t += pick(
                            rng,
                            &[
                                " with air bronchograms",
                                ", with air bronchograms",
                                " containing air bronchograms",
                            ],
                        );
                    }
                    if matches!(c.lobe, Lobe::RightMiddle | Lobe::Lingula) && chance(rng, 0.5) {
                        t += if c.lobe == Lobe::RightMiddle {
                            ", obscuring the right heart border"
                        } else {
                            ", obscuring the left heart border"
                        };
                    }
                    if c.pneumonia && chance(rng, 0.5) {
                        t += pick(
                            rng,
                            &[
                                ", consistent with pneumonia",
                                ", compatible with pneumonia in the appropriate clinical setting",
                            ],
                        );
                    }
                    t + "."
                };
                sents.push(Sent { group: 1, text: t });
                let lobe = c.lobe.name();
                imp.push(match (say.hedged("consolidation"), c.pneumonia) {
                    (true, true) => format!("Possible early {lobe} pneumonia."),
                    (true, false) => format!("Possible {lobe} consolidation."),
                    (false, true) => match rng.random_range(0..3) {
                        0 => format!("{} pneumonia.", cap(lobe)),
                        1 => {
                            format!("{} {lobe} consolidation, concerning for pneumonia.", cap(ext))
                        }
                        _ => format!("Findings consistent with {lobe} pneumonia."),
                    },
                    (false, false) => match rng.random_range(0..2) {
                        0 => format!("{} consolidation.", cap(lobe)),
                        _ => format!("Focal consolidation in the {lobe}."),
                    },
                });
                if c.pneumonia && !say.hedged("consolidation") && chance(rng, 0.3) {
                    imp.push(
                        "Recommend follow-up radiographs after treatment to document resolution."
                            .to_string(),
                    );
                }
            }
        }
    }

    fn atelectasis(&mut self) {
        let Draft { rng, say, sents, imp, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        if let Some(a) = &f.atelectasis {
            if say.shown("atelectasis") {
                let side = a.side;
                let t = if say.hedged("atelectasis") {
                    match side {
                        Side::Bilateral => pick(
                            rng,
                            &[
                                "Possible minimal bibasilar atelectasis.",
                                "Minimal bibasilar atelectasis is possible.",
                            ],
                        )
                        .to_string(),
                        s => match rng.random_range(0..2) {
                            0 => format!(
                                "Possible subsegmental atelectasis at the {} base.",
                                s.word()
                            ),
                            _ => format!("Minimal {} basilar atelectasis is possible.", s.word()),
                        },
                    }
                } else if let (AtelectasisKind::Lobar, Some(lobe)) = (a.kind, a.lobe) {
                    let sw = lobe.side().word();
                    match rng.random_range(0..4) {
                        0 => format!("{} atelectasis with volume loss.", cap(lobe.name())),
                        1 => format!("Collapse of the {} with associated volume loss.", lobe.name()),
                        2 if lobe == Lobe::LeftLower => "Retrocardiac opacity with volume loss, consistent with left lower lobe atelectasis.".to_string(),
                        _ => format!("Dense {} atelectasis with elevation of the {sw} hemidiaphragm.", lobe.name()),
                    }
                } else {
                    let vl = a.volume_loss && chance(rng, 0.6);
                    let mut t = match side {
                        Side::Bilateral => pick(
                            rng,
                            &[
                                "Bibasilar plate-like atelectasis",
                                "Mild bibasilar atelectasis",
                                "Linear atelectasis at both lung bases",
                                "Streaky bibasilar opacities, likely atelectasis",
                            ],
                        )
                        .to_string(),
                        s => match rng.random_range(0..5) {
                            0 => format!("Plate-like atelectasis at the {} lung base", s.word()),
                            1 => format!("Mild {} basilar atelectasis", s.word()),
                            2 => format!("Linear atelectasis in the {} lower lung", s.word()),
                            3 => format!("Subsegmental atelectasis at the {} base", s.word()),
                            _ => {
                                format!("Streaky {} basilar opacity, likely atelectasis", s.word())
                            }
                        },
                    };
                    if vl {
                        t += " with mild volume loss";
                    }
                    t + "."
                };
                sents.push(Sent { group: 1, text: t });
                if chance(rng, 0.6) || a.kind == AtelectasisKind::Lobar {
                    imp.push(match (a.kind, a.lobe, side) {
                        _ if say.hedged("atelectasis") => {
                            "Possible minimal atelectasis.".to_string()
                        }
                        (AtelectasisKind::Lobar, Some(l), _) => {
                            format!("{} atelectasis.", cap(l.name()))
                        }
                        (_, _, Side::Bilateral) => "Bibasilar atelectasis.".to_string(),
                        (_, _, s) => format!("{} basilar atelectasis.", cap(s.word())),
                    });
                }
            }
        }
    }

    /// Nodule and mass.
    fn lesions(&mut self) {
        let Draft { rng, say, sents, imp, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        for what in ["nodule", "mass"] {
            let l = if what == "nodule" { &f.nodule } else { &f.mass };
            if let Some(l) = l {
                if say.shown(what) {
                    let (s1, s2) = lesion_sentences(rng, l, what, say.hedged(what), say.was(what));
                    sents.push(Sent { group: 1, text: cap(&s1) });
                    imp.push(cap(&s2));
                }
            }
        }
    }

    fn granuloma(&mut self) {
        let Draft { rng, say, sents, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        if let Some(gr) = &f.granuloma {
            if say.shown("granuloma") {
                let lobe = lobe_words(rng, gr.lobe);
                let pre = if say.was("granuloma") { "Stable c" } else { "C" };
                let t = match rng.random_range(0..4) {
                    0 => format!("{pre}alcified granuloma in the {lobe}."),
                    1 => {
                        format!("A small calcified granuloma projects over the {}.", gr.lobe.zone())
                    }
                    2 => format!("Tiny calcified nodule in the {lobe}, likely a granuloma."),
                    _ => format!(
                        "{} mm calcified granuloma in the {lobe}.",
                        (gr.size_cm * 10.0).round() as i32
                    ),
                };
                sents.push(Sent { group: 1, text: t });
            }
        }
    }

    /// The cardiomegaly impression first, "clear lungs", low volumes.
    fn lungs_close(&mut self, clear_lungs: bool) {
        let Draft { rng, say, sents, imp, cardio_imp } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        let acq = say.acq;
        if let Some(c) = cardio_imp.take() {
            imp.insert(0, c);
        }
        if clear_lungs && chance(rng, 0.9) {
            let mut t = pick(
                rng,
                &[
                    "The lungs are clear.",
                    "Lungs are clear.",
                    "The lungs are well expanded and clear.",
                    "No focal airspace disease.",
                    "Clear lungs.",
                ],
            )
            .to_string();
            if f.granuloma.is_some() && chance(rng, 0.5) {
                t = "The lungs are otherwise clear.".to_string();
            }
            // A collapsed or fluid-filled lung is not "clear" or "well expanded".
            if f.pneumothorax.is_some()
                || f.effusion.as_ref().is_some_and(|e| e.size != Severity::Mild)
            {
                t = pick(rng, &["No focal airspace consolidation.", "No focal airspace disease."])
                    .to_string();
            }
            sents.push(Sent { group: 1, text: t });
        }
        if acq.view == View::Ap && acq.inspiration_shift > 0.035 && chance(rng, 0.5) {
            sents.push(Sent {
                group: 1,
                text: pick(rng, &["Low lung volumes.", "Lung volumes are low."]).to_string(),
            });
        }
    }

    // ---------------------------------------------------------------- pleura
    /// Effusion, pneumothorax, the normal pleural statements, findings resolved since the prior.
    fn pleura(&mut self) {
        self.effusion();
        self.pneumothorax();
        self.pleura_normal();
        self.resolved();
    }

    fn effusion(&mut self) {
        let Draft { rng, say, sents, imp, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        let prior = say.prior;
        if let Some(e) = &f.effusion {
            if say.shown("effusion") {
                let bil = e.side == Side::Bilateral;
                let side = e.side.word();
                let pl = if bil { "s" } else { "" };
                let z = match e.size {
                    Severity::Mild => pick(rng, &["small", "small", "trace"]),
                    Severity::Moderate => pick(rng, &["moderate", "moderate-sized"]),
                    Severity::Severe => pick(rng, &["large", "large", "sizable"]),
                };
                let t = if say.hedged("effusion") {
                    match rng.random_range(0..3) {
                        0 => format!("Possible {z} {side} pleural effusion{pl}."),
                        1 => format!("{} {side} pleural effusion{pl} cannot be excluded.", cap(z)),
                        _ => format!("Questionable {z} {side} effusion{pl}."),
                    }
                } else if say.was("effusion") && chance(rng, 0.4) {
                    format!("{} {side} pleural effusion{pl}, unchanged.", cap(z))
                } else {
                    let v = rng.random_range(0..6);
                    match (v, bil, e.size) {
                        (0, _, _) => format!("{} {side} pleural effusion{pl}.", cap(z)),
                        (1, false, _) => format!("There is a {z} {side} pleural effusion."),
                        (1, true, _) => format!("There are {z} bilateral pleural effusions."),
                        (2, false, _) => format!("{} {side}-sided pleural effusion.", cap(z)),
                        (2, true, _) => format!("{} pleural effusions bilaterally.", cap(z)),
                        (3, false, _) => format!("{} pleural effusion, {z} in size.", cap(side)),
                        (4, false, Severity::Mild) => {
                            format!("Blunting of the {side} costophrenic angle, consistent with a small pleural effusion.")
                        }
                        (4, false, Severity::Severe) => {
                            format!("{} {side} pleural effusion occupying most of the {side} hemithorax.", cap(z))
                        }
                        (4, true, Severity::Mild) => "Blunting of both costophrenic angles, consistent with small bilateral pleural effusions.".to_string(),
                        _ if say.was("effusion") => format!("{} {side} pleural effusion{pl}, increased from prior.", cap(z)),
                        _ if prior.is_some() => format!("New {z} {side} pleural effusion{pl}."),
                        _ => format!("{} {side} pleural effusion{pl} is present.", cap(z)),
                    }
                };
                sents.push(Sent { group: 2, text: t });
                imp.push(if say.hedged("effusion") {
                    format!("Possible {side} pleural effusion{pl}.")
                } else {
                    match rng.random_range(0..3) {
                        0 => format!("{} {side} pleural effusion{pl}.", cap(z)),
                        1 => format!("{} pleural effusion{pl}.", cap(side)),
                        _ => format!("{} {side} effusion{pl}.", cap(z)),
                    }
                });
            }
        }
    }

    fn pneumothorax(&mut self) {
        let Draft { rng, say, sents, imp, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        if let Some(p) = &f.pneumothorax {
            if say.shown("pneumothorax") {
                let side = p.side.word();
                let z = match p.size {
                    Severity::Mild => pick(rng, &["small", "tiny", "small"]),
                    Severity::Moderate => "moderate",
                    Severity::Severe => "large",
                };
                let t = if say.hedged("pneumothorax") {
                    match rng.random_range(0..2) {
                        0 => format!("Possible {z} {side} apical pneumothorax."),
                        _ => format!("A {z} {side} apical pneumothorax cannot be excluded."),
                    }
                } else {
                    match (rng.random_range(0..4), p.size) {
                        (0, _) => format!("{} {side} pneumothorax.", cap(z)),
                        (1, Severity::Severe) => format!("Large {side} pneumothorax with marked deflation of the {side} lung."),
                        (1, _) => format!("There is a {z} {side} apical pneumothorax."),
                        (2, _) => format!("{} {side} pneumothorax with a visible visceral pleural line and no lung markings beyond it.", cap(z)),
                        _ => format!("A {z} {side}-sided pneumothorax is present."),
                    }
                };
                sents.push(Sent { group: 2, text: t });
                imp.push(if say.hedged("pneumothorax") {
                    format!("Possible {z} {side} pneumothorax.")
                } else {
                    let mut t = match rng.random_range(0..2) {
                        0 => format!("{} {side} pneumothorax.", cap(z)),
                        _ => format!("{} pneumothorax, {z}.", cap(side)),
                    };
                    if p.size == Severity::Severe && chance(rng, 0.6) {
                        t += " Findings were discussed with the referring clinician at the time of dictation.";
                    }
                    t
                });
            }
        }
    }

    fn pleura_normal(&mut self) {
        let Draft { rng, say, sents, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        // Normal pleural / lung statements, combined the way radiologists combine them.
        let eff_abs = f.effusion.is_none() && !say.omitted("effusion");
        let ptx_abs = f.pneumothorax.is_none() && !say.omitted("pneumothorax");
        let cons_abs = f.consolidation.is_none() && !say.omitted("consolidation");
        if chance(rng, NORMAL_P) {
            let t = if cons_abs && eff_abs && ptx_abs && chance(rng, 0.35) {
                Some(pick(
                    rng,
                    &[
                        "No focal consolidation, pleural effusion, or pneumothorax.",
                        "There is no focal consolidation, pleural effusion or pneumothorax.",
                    ],
                ))
            } else if eff_abs && ptx_abs {
                Some(pick(
                    rng,
                    &[
                        "No pleural effusion or pneumothorax.",
                        "There is no pleural effusion or pneumothorax.",
                        "No effusion or pneumothorax.",
                        "The costophrenic angles are sharp. No pneumothorax.",
                    ],
                ))
            } else if eff_abs {
                Some(pick(
                    rng,
                    &["No pleural effusion.", "No effusion.", "There is no pleural effusion."],
                ))
            } else if ptx_abs {
                Some(pick(
                    rng,
                    &[
                        "No pneumothorax.",
                        "There is no pneumothorax.",
                        "No evidence of pneumothorax.",
                    ],
                ))
            } else {
                None
            };
            if let Some(t) = t {
                sents.push(Sent { group: 2, text: t.to_string() });
            }
        }
    }

    fn resolved(&mut self) {
        let Draft { rng, say, sents, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        let prior = say.prior;
        // Resolved findings from the prior study.
        if let Some(p) = prior {
            if let Some(pc) = &p.consolidation {
                if f.consolidation.is_none() && !say.omitted("consolidation") && chance(rng, 0.7) {
                    let t = match rng.random_range(0..2) {
                        0 => format!(
                            "Interval resolution of the previously seen {} consolidation.",
                            pc.lobe.name()
                        ),
                        _ => format!(
                            "The previously noted {} consolidation has resolved.",
                            pc.lobe.name()
                        ),
                    };
                    sents.push(Sent { group: 1, text: t });
                }
            }
            if let Some(pe) = &p.effusion {
                if f.effusion.is_none() && !say.omitted("effusion") && chance(rng, 0.7) {
                    sents.push(Sent {
                        group: 2,
                        text: format!(
                            "Interval resolution of the {} pleural effusion.",
                            pe.side.word()
                        ),
                    });
                }
            }
            if p.edema.is_some() && f.edema.is_none() && chance(rng, 0.7) {
                sents.push(Sent { group: 1, text: "Pulmonary edema has resolved.".to_string() });
            }
        }
    }

    // ---------------------------------------------------------------- bones
    /// Rib fractures, or a normal bones statement.
    fn bones(&mut self) {
        let Draft { rng, say, sents, imp, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        if let Some(fx) = &f.fracture {
            if say.shown("fracture") {
                let side = fx.side.word();
                let rib = ordinal(fx.rib);
                let (ribs, pl) = match fx.count {
                    1 => (rib.clone(), ""),
                    2 => (format!("{rib} and {}", ordinal(fx.rib + 1)), "s"),
                    n => (format!("{rib} through {}", ordinal(fx.rib + n - 1)), "s"),
                };
                let t = if say.hedged("fracture") {
                    match rng.random_range(0..2) {
                        0 => {
                            format!(
                                "Possible nondisplaced fracture of the {side} {rib} posterior rib."
                            )
                        }
                        _ => format!(
                            "Cortical irregularity of the {side} {rib} rib, possibly a fracture."
                        ),
                    }
                } else if fx.healing {
                    match rng.random_range(0..3) {
                        0 => format!("Healing fracture{pl} of the {side} {ribs} posterior rib{pl} with callus formation."),
                        1 => format!("Old healed fracture{pl} of the {side} {ribs} rib{pl}."),
                        _ => format!("{} {ribs} rib fracture{pl} with callus, consistent with healing.", cap(side)),
                    }
                } else {
                    let disp = if fx.displaced {
                        pick(rng, &["mildly displaced", "displaced"])
                    } else {
                        "nondisplaced"
                    };
                    match rng.random_range(0..3) {
                        0 => {
                            format!(
                                "Acute {disp} fracture{pl} of the {side} {ribs} posterior rib{pl}."
                            )
                        }
                        1 if fx.count == 1 => {
                            format!("There is a {disp} fracture of the {side} {rib} rib.")
                        }
                        1 => format!("There are {disp} fractures of the {side} {ribs} ribs."),
                        _ => format!(
                            "{} {disp} {side} {ribs} rib fracture{pl}.",
                            if chance(rng, 0.5) { "Acute" } else { "" }
                        ),
                    }
                };
                sents.push(Sent { group: 4, text: cap(t.trim()) });
                if !fx.healing || chance(rng, 0.3) {
                    imp.push(if say.hedged("fracture") {
                        format!("Possible {side} rib fracture.")
                    } else {
                        format!("{} {ribs} rib fracture{pl}.", cap(side))
                    });
                }
            }
        } else if chance(rng, 0.55) && !say.omitted("fracture") {
            let t = pick(
                rng,
                &[
                    "No acute osseous abnormality.",
                    "The osseous structures are unremarkable.",
                    "No displaced rib fracture.",
                    "Visualized osseous structures are intact.",
                    "No acute fracture is seen.",
                ],
            );
            sents.push(Sent { group: 4, text: t.to_string() });
        }
    }

    // ---------------------------------------------------------------- assemble
    /// Assembles the report: FINDINGS, IMPRESSION, INDICATION, COMPARISON (drawn in this order).
    fn finish(mut self) -> Report {
        let findings = self.findings_text();
        let impression = self.impression();
        let indication = indication(self.rng, self.say.ctx);
        let comparison = comparison(self.rng, self.say.prior);
        Report {
            indication: indication.to_string(),
            comparison: comparison.to_string(),
            findings,
            impression,
            mentions: self.say.mentions,
        }
    }

    /// The FINDINGS text: optional comparison and view lines, the sentences by group.
    fn findings_text(&mut self) -> String {
        let Draft { rng, say, sents, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let acq = say.acq;
        let prior = say.prior;
        // Group order: devices usually first, bones usually last, the middle shuffled.
        let mut order: Vec<u8> = vec![1, 2, 3];
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        if chance(rng, 0.8) {
            order.insert(0, 0);
        } else {
            order.push(0);
        }
        if chance(rng, 0.9) {
            order.push(4);
        } else {
            order.insert(0, 4);
        }
        let mut lines: Vec<String> = Vec::new();
        if prior.is_some() && chance(rng, 0.4) {
            lines.push(
                pick(
                    rng,
                    &[
                        "Compared to the prior study.",
                        "Comparison is made to the prior radiograph.",
                        "Since the prior radiograph:",
                    ],
                )
                .to_string(),
            );
        }
        if acq.view == View::Ap && chance(rng, 0.3) {
            lines.push(
                pick(
                    rng,
                    &[
                        "Single portable AP view of the chest.",
                        "Portable AP upright chest radiograph.",
                        "Frontal view of the chest was obtained.",
                    ],
                )
                .to_string(),
            );
        } else if acq.view == View::Pa && chance(rng, 0.2) {
            lines.push(
                pick(rng, &["PA view of the chest.", "Frontal radiograph of the chest."])
                    .to_string(),
            );
        }
        for g in order {
            for s in sents.iter().filter(|s| s.group == g) {
                lines.push(s.text.clone());
            }
        }
        let findings = if chance(rng, 0.2) && lines.len() > 3 {
            // Some radiologists break the findings into short paragraphs.
            let cut = lines.len() / 2;
            format!("{}\n{}", lines[..cut].join(" "), lines[cut..].join(" "))
        } else {
            lines.join(" ")
        };
        lingular(&findings)
    }

    /// The IMPRESSION text ("no acute process" when nothing else is said).
    fn impression(&mut self) -> String {
        let Draft { rng, say, imp, .. } = self;
        let rng: &mut ChaCha8Rng = rng;
        let f = say.f;
        if imp.iter().all(|s| s.starts_with("Support devices") || s.starts_with("Lines and tubes"))
        {
            let n = pick(
                rng,
                &[
                    "No acute cardiopulmonary process.",
                    "No acute cardiopulmonary abnormality.",
                    "No radiographic evidence of acute cardiopulmonary disease.",
                    "No acute intrathoracic process.",
                ],
            );
            imp.insert(0, n.to_string());
            if !f.devices.any() && f.granuloma.is_none() && chance(rng, 0.2) {
                *imp = vec!["Normal chest radiograph.".to_string()];
            }
        } else if imp.len() > 1 {
            // Most important first, then the rest in a varying order.
            let rest = imp.split_off(1);
            let mut rest = rest;
            if chance(rng, 0.5) {
                rest.reverse();
            }
            imp.extend(rest);
        }
        let imp: Vec<String> = imp.iter().map(|s| lingular(s)).collect();
        if imp.len() > 1 && chance(rng, 0.4) {
            imp.iter()
                .enumerate()
                .map(|(i, s)| format!("{}. {s}", i + 1))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            imp.join(" ")
        }
    }
}
