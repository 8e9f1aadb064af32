//! What is in one synthetic study: the patient's anatomy (shared by the patient's studies), the
//! findings with their attributes, sampled with clinical co-occurrence priors, and the labels that
//! follow from them.
//!
//! Sides are the PATIENT's sides. The image is displayed as a PA film, so the patient's left is
//! the image's right (columns > width / 2); the renderer does that mapping, nowhere else.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::Difficulty;

/// Labels every study carries (1/0), in manifest order. CheXpert names as the text crate uses them.
pub const SYNTH_LABELS: [&str; 15] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
    "Pneumothorax",
    "Pneumonia",
    "Lung Opacity",
    "Lung Lesion",
    "Fracture",
    "Support Devices",
    "No Finding",
    "Nodule",
    "Mass",
    "Granuloma",
];

/// Labels whose positives make "No Finding" 0 (CheXpert: pathologies, not devices; granuloma is
/// an extra label and does not count, as in the text labeler).
pub const PATHOLOGY_LABELS: [&str; 10] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
    "Pneumothorax",
    "Pneumonia",
    "Lung Opacity",
    "Lung Lesion",
    "Fracture",
];

/// CheXpert's hierarchy as used here: a positive child makes "Lung Opacity" positive.
pub const LUNG_OPACITY_CHILDREN: [&str; 4] = ["Consolidation", "Pneumonia", "Atelectasis", "Edema"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
    Bilateral,
}

impl Side {
    pub fn word(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
            Side::Bilateral => "bilateral",
        }
    }
    fn pick(rng: &mut ChaCha8Rng, p_left: f64) -> Side {
        if rng.random_bool(p_left) {
            Side::Left
        } else {
            Side::Right
        }
    }
}

/// Three grades; each finding words them its own way (small/moderate/large, mild/moderate/severe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Mild,
    Moderate,
    Severe,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Mild, Severity::Moderate, Severity::Severe];
    pub fn index(self) -> usize {
        self as usize
    }
    /// Size words (effusion, pneumothorax).
    pub fn size_word(self) -> &'static str {
        ["small", "moderate", "large"][self.index()]
    }
    pub fn word(self) -> &'static str {
        ["mild", "moderate", "severe"][self.index()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lobe {
    RightUpper,
    RightMiddle,
    RightLower,
    LeftUpper,
    Lingula,
    LeftLower,
}

impl Lobe {
    pub const ALL: [Lobe; 6] = [
        Lobe::RightUpper,
        Lobe::RightMiddle,
        Lobe::RightLower,
        Lobe::LeftUpper,
        Lobe::Lingula,
        Lobe::LeftLower,
    ];
    pub fn side(self) -> Side {
        match self {
            Lobe::RightUpper | Lobe::RightMiddle | Lobe::RightLower => Side::Right,
            _ => Side::Left,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Lobe::RightUpper => "right upper lobe",
            Lobe::RightMiddle => "right middle lobe",
            Lobe::RightLower => "right lower lobe",
            Lobe::LeftUpper => "left upper lobe",
            Lobe::Lingula => "lingula",
            Lobe::LeftLower => "left lower lobe",
        }
    }
    /// Zone words for frontal-film phrasing ("right lung base", "left mid lung").
    pub fn zone(self) -> &'static str {
        match self {
            Lobe::RightUpper => "right upper lung",
            Lobe::RightMiddle => "right mid lung",
            Lobe::RightLower => "right lung base",
            Lobe::LeftUpper => "left upper lung",
            Lobe::Lingula => "left mid lung",
            Lobe::LeftLower => "left lung base",
        }
    }
    /// Centre in lung-relative coordinates: (lateral fraction 0 = medial edge .. 1 = chest wall,
    /// vertical fraction 0 = apex .. 1 = costophrenic angle).
    pub fn centre(self) -> (f32, f32) {
        match self {
            Lobe::RightUpper | Lobe::LeftUpper => (0.5, 0.25),
            Lobe::RightMiddle | Lobe::Lingula => (0.35, 0.62),
            Lobe::RightLower | Lobe::LeftLower => (0.55, 0.82),
        }
    }
    /// The corresponding lobe of the other lung (the lingula for the middle lobe).
    pub fn mirrored(self) -> Lobe {
        match self {
            Lobe::RightUpper => Lobe::LeftUpper,
            Lobe::RightMiddle => Lobe::Lingula,
            Lobe::RightLower => Lobe::LeftLower,
            Lobe::LeftUpper => Lobe::RightUpper,
            Lobe::Lingula => Lobe::RightMiddle,
            Lobe::LeftLower => Lobe::RightLower,
        }
    }
    fn random(rng: &mut ChaCha8Rng) -> Lobe {
        // Lower lobes most often (aspiration, gravity).
        let w = [0.16, 0.12, 0.24, 0.14, 0.10, 0.24];
        Lobe::ALL[weighted(rng, &w)]
    }
}

fn weighted(rng: &mut ChaCha8Rng, w: &[f64]) -> usize {
    let total: f64 = w.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, wi) in w.iter().enumerate() {
        if x < *wi {
            return i;
        }
        x -= wi;
    }
    w.len() - 1
}

fn severity(rng: &mut ChaCha8Rng, d: Difficulty) -> Severity {
    let w = match d {
        Difficulty::Easy => [0.25, 0.40, 0.35],
        Difficulty::Standard => [0.40, 0.35, 0.25],
        Difficulty::Hard => [0.55, 0.30, 0.15],
    };
    Severity::ALL[weighted(rng, &w)]
}

/// How visible a finding is, 0 (invisible) .. 1 (textbook). Findings below
/// [`SUBTLE_BELOW`] are "subtle": the report hedges them.
fn conspicuity(rng: &mut ChaCha8Rng, d: Difficulty) -> f32 {
    let (lo, hi) = match d {
        Difficulty::Easy => (0.75, 1.0),
        Difficulty::Standard => (0.5, 1.0),
        Difficulty::Hard => (0.25, 0.85),
    };
    rng.random_range(lo..hi)
}

/// Conspicuity under which the report hedges ("possible", "cannot be excluded").
pub const SUBTLE_BELOW: f32 = 0.45;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum View {
    Pa,
    Ap,
}

impl View {
    pub fn as_str(self) -> &'static str {
        match self {
            View::Pa => "PA",
            View::Ap => "AP",
        }
    }
}

/// Per-patient anatomy in normalised image coordinates (u to the image's right, v down, 0..1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Anatomy {
    /// Midline.
    pub cx: f32,
    /// Half-width of the inner rib cage at its widest.
    pub thorax_half_width: f32,
    /// Extra soft tissue outside the ribs (body habitus).
    pub soft_tissue: f32,
    pub apex_v: f32,
    /// Dome of the patient's right hemidiaphragm (image left); the left dome is lower by `left_dome_drop`.
    pub right_dome_v: f32,
    pub left_dome_drop: f32,
    /// Normal cardiothoracic ratio of this patient (cardiomegaly replaces it).
    pub normal_ctr: f32,
    pub heart_height: f32,
    pub mediastinum_half_width: f32,
    pub aortic_knob: f32,
    pub rib_spacing_jitter: f32,
    pub lung_shape: f32,
    /// Vessel tree seed.
    pub vessel_seed: u64,
}

impl Anatomy {
    /// A patient. Hard difficulty widens the normal heart toward the cardiomegaly threshold.
    pub fn sample(rng: &mut ChaCha8Rng, d: Difficulty) -> Anatomy {
        let ctr_hi = match d {
            Difficulty::Easy => 0.45,
            Difficulty::Standard => 0.47,
            Difficulty::Hard => 0.50,
        };
        Anatomy {
            cx: 0.5 + rng.random_range(-0.02..0.02),
            thorax_half_width: rng.random_range(0.34..0.40),
            soft_tissue: rng.random_range(0.03..0.07),
            apex_v: rng.random_range(0.11..0.16),
            right_dome_v: rng.random_range(0.66..0.74),
            left_dome_drop: rng.random_range(0.01..0.04),
            normal_ctr: rng.random_range(0.38..ctr_hi),
            heart_height: rng.random_range(0.17..0.21),
            mediastinum_half_width: rng.random_range(0.055..0.075),
            aortic_knob: rng.random_range(0.025..0.04),
            rib_spacing_jitter: rng.random_range(-0.08..0.08),
            lung_shape: rng.random_range(0.8..1.2),
            vessel_seed: rng.random(),
        }
    }
}

/// Acquisition: view, inspiration, rotation, exposure, noise, blur.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acquisition {
    pub view: View,
    /// Added to the diaphragm height (positive = shallower inspiration).
    pub inspiration_shift: f32,
    /// In-plane rotation (degrees), zoom and shift of the final image.
    pub rotation_deg: f32,
    pub zoom: f32,
    pub shift: (f32, f32),
    pub exposure: f32,
    pub contrast: f32,
    pub gamma: f32,
    pub noise: f32,
    /// Blur radius in pixels at 224 px (scaled with size).
    pub blur: f32,
}

impl Acquisition {
    fn sample(rng: &mut ChaCha8Rng, view: View, d: Difficulty) -> Acquisition {
        let hard = matches!(d, Difficulty::Hard);
        let noise_hi = match d {
            Difficulty::Easy => 0.015,
            Difficulty::Standard => 0.03,
            Difficulty::Hard => 0.05,
        };
        Acquisition {
            view,
            inspiration_shift: match view {
                View::Pa => rng.random_range(-0.03..0.03),
                View::Ap => rng.random_range(0.0..0.06),
            },
            rotation_deg: rng.random_range(-4.0..4.0) * if hard { 1.5 } else { 1.0 },
            zoom: rng.random_range(0.93..1.06),
            shift: (rng.random_range(-0.025..0.025), rng.random_range(-0.025..0.025)),
            exposure: rng.random_range(-0.08..0.08),
            contrast: rng.random_range(0.85..1.15),
            gamma: rng.random_range(0.85..1.2),
            noise: rng.random_range(0.005..noise_hi),
            blur: rng.random_range(0.0..if hard { 1.6 } else { 1.0 }),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cardiomegaly {
    pub ctr: f32,
    pub severity: Severity,
    pub conspicuity: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Effusion {
    pub side: Side,
    pub size: Severity,
    /// Fraction of the hemithorax height the fluid reaches.
    pub level: f32,
    pub conspicuity: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pneumothorax {
    pub side: Side,
    pub size: Severity,
    /// Rim of air as a fraction of the hemithorax width.
    pub rim: f32,
    pub conspicuity: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Consolidation {
    pub lobe: Lobe,
    pub extent: Severity,
    pub air_bronchograms: bool,
    /// Reported as pneumonia (infectious consolidation).
    pub pneumonia: bool,
    pub conspicuity: f32,
    pub shape_seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtelectasisKind {
    PlateLike,
    Lobar,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Atelectasis {
    pub kind: AtelectasisKind,
    /// Plate-like: left, right or bilateral (bibasilar); lobar: the lobe's side.
    pub side: Side,
    /// Lobar only.
    pub lobe: Option<Lobe>,
    pub volume_loss: bool,
    pub conspicuity: f32,
    pub shape_seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Edema {
    pub severity: Severity,
    pub kerley_lines: bool,
    pub vascular_congestion: bool,
    pub conspicuity: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lesion {
    pub lobe: Lobe,
    /// Position in lung-relative coordinates (see [`Lobe::centre`]).
    pub pos: (f32, f32),
    pub size_cm: f32,
    pub conspicuity: f32,
    pub shape_seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtTube {
    /// Tip above the carina.
    pub tip_cm: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineSite {
    InternalJugular,
    Subclavian,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CentralLine {
    pub side: Side,
    pub site: LineSite,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pacemaker {
    pub side: Side,
    pub leads: u8,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Devices {
    pub et_tube: Option<EtTube>,
    pub central_line: Option<CentralLine>,
    pub pacemaker: Option<Pacemaker>,
}

impl Devices {
    pub fn any(&self) -> bool {
        self.et_tube.is_some() || self.central_line.is_some() || self.pacemaker.is_some()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fracture {
    pub side: Side,
    /// Posterior rib number of the (highest) broken rib (4..=9).
    pub rib: u8,
    /// Consecutive broken ribs (trauma: 1..=3).
    pub count: u8,
    pub displaced: bool,
    pub healing: bool,
    pub conspicuity: f32,
}

/// Everything rendered in one study.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Findings {
    pub cardiomegaly: Option<Cardiomegaly>,
    pub effusion: Option<Effusion>,
    pub pneumothorax: Option<Pneumothorax>,
    pub consolidation: Option<Consolidation>,
    pub atelectasis: Option<Atelectasis>,
    pub edema: Option<Edema>,
    pub nodule: Option<Lesion>,
    pub mass: Option<Lesion>,
    pub granuloma: Option<Lesion>,
    pub devices: Devices,
    pub fracture: Option<Fracture>,
}

/// Clinical context that drives co-occurrence (recorded in the ground truth).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Context {
    pub heart_failure: bool,
    pub icu: bool,
    pub trauma: bool,
}

impl Findings {
    /// Ground-truth labels (1/0) for every name in [`SYNTH_LABELS`].
    pub fn labels(&self) -> BTreeMap<String, i8> {
        let mut l: BTreeMap<String, i8> = BTreeMap::new();
        let mut set = |k: &str, v: bool| {
            l.insert(k.to_string(), v as i8);
        };
        set("Atelectasis", self.atelectasis.is_some());
        set("Cardiomegaly", self.cardiomegaly.is_some());
        set("Consolidation", self.consolidation.is_some());
        set("Edema", self.edema.is_some());
        set("Pleural Effusion", self.effusion.is_some());
        set("Pneumothorax", self.pneumothorax.is_some());
        set("Pneumonia", self.consolidation.as_ref().is_some_and(|c| c.pneumonia));
        set("Nodule", self.nodule.is_some());
        set("Mass", self.mass.is_some());
        set("Lung Lesion", self.nodule.is_some() || self.mass.is_some());
        set("Granuloma", self.granuloma.is_some());
        set("Fracture", self.fracture.is_some());
        set("Support Devices", self.devices.any());
        close_hierarchy(&mut l);
        l
    }
}

/// Applies the label conventions shared by the ground truth and the labeler evaluation:
/// "Lung Opacity" is positive when any of [`LUNG_OPACITY_CHILDREN`] is, and "No Finding" is 1
/// exactly when none of [`PATHOLOGY_LABELS`] is positive. Uncertain (-1) counts as positive.
pub fn close_hierarchy(l: &mut BTreeMap<String, i8>) {
    let pos = |l: &BTreeMap<String, i8>, k: &str| matches!(l.get(k), Some(1) | Some(-1));
    let opacity = pos(l, "Lung Opacity") || LUNG_OPACITY_CHILDREN.iter().any(|k| pos(l, k));
    l.insert("Lung Opacity".into(), opacity as i8);
    let sick = PATHOLOGY_LABELS.iter().any(|k| pos(l, k));
    l.insert("No Finding".into(), (!sick) as i8);
}

fn lesion(rng: &mut ChaCha8Rng, d: Difficulty, size_cm: f32) -> Lesion {
    let lobe = Lobe::random(rng);
    let (a, b) = lobe.centre();
    Lesion {
        lobe,
        pos: (
            (a + rng.random_range(-0.15..0.15)).clamp(0.3, 0.85),
            (b + rng.random_range(-0.08..0.08)).clamp(0.12, 0.68),
        ),
        size_cm,
        conspicuity: conspicuity(rng, d),
        shape_seed: rng.random(),
    }
}

fn one_decimal(x: f32) -> f32 {
    (x * 10.0).round() / 10.0
}

/// Samples the findings of one study. `prior` is the same patient's previous study: chronic
/// findings (cardiomegaly, granuloma, nodule, mass, pacemaker, fracture) usually persist.
pub fn sample_findings(
    rng: &mut ChaCha8Rng,
    d: Difficulty,
    prior: Option<&Findings>,
) -> (Findings, Context) {
    let ctx = Context {
        heart_failure: rng.random_bool(0.12),
        icu: rng.random_bool(0.12),
        trauma: rng.random_bool(0.035),
    };
    let mut f = Findings::default();
    // Drawn in this order (later findings depend on earlier ones).
    sample_heart(rng, d, &ctx, prior, &mut f);
    sample_edema(rng, d, &ctx, &mut f);
    sample_consolidation(rng, d, &ctx, &mut f);
    sample_effusion(rng, d, &ctx, &mut f);
    sample_atelectasis(rng, d, &ctx, &mut f);
    sample_devices(rng, &ctx, prior, &mut f);
    sample_pneumothorax(rng, d, &ctx, &mut f);
    sample_fracture(rng, d, &ctx, prior, &mut f);
    sample_lesions(rng, d, prior, &mut f);
    (f, ctx)
}

/// Whether a chronic finding of the prior study persists.
fn keep(rng: &mut ChaCha8Rng) -> bool {
    rng.random_bool(0.85)
}

/// Cardiomegaly (usually kept from the prior study; heart failure makes it likely).
fn sample_heart(
    rng: &mut ChaCha8Rng,
    d: Difficulty,
    ctx: &Context,
    prior: Option<&Findings>,
    f: &mut Findings,
) {
    let p_cardio = if ctx.heart_failure { 0.8 } else { 0.11 };
    let prior_cardio = prior.and_then(|p| p.cardiomegaly.clone());
    if let Some(c) = prior_cardio.filter(|_| keep(rng)) {
        f.cardiomegaly = Some(c);
    } else if rng.random_bool(p_cardio) {
        let sev = severity(rng, d);
        let lo = match d {
            Difficulty::Easy => 0.57,
            Difficulty::Standard => 0.54,
            Difficulty::Hard => 0.515,
        };
        let ctr = match sev {
            Severity::Mild => rng.random_range(lo..0.58f32.max(lo + 0.02)),
            Severity::Moderate => rng.random_range(0.58..0.64),
            Severity::Severe => rng.random_range(0.64..0.72),
        };
        let ctr = (ctr * 100.0).round() / 100.0;
        f.cardiomegaly = Some(Cardiomegaly {
            ctr,
            severity: sev,
            conspicuity: ((ctr - 0.5) / 0.12).clamp(0.2, 1.0),
        });
    }
}

/// Edema: heart failure, ICU fluid overload.
fn sample_edema(rng: &mut ChaCha8Rng, d: Difficulty, ctx: &Context, f: &mut Findings) {
    let p_edema = if ctx.heart_failure {
        0.85
    } else if ctx.icu {
        0.2
    } else {
        0.015
    };
    if rng.random_bool(p_edema) {
        let severity = severity(rng, d);
        f.edema = Some(Edema {
            severity,
            kerley_lines: rng.random_bool(if severity >= Severity::Moderate { 0.7 } else { 0.35 }),
            vascular_congestion: rng.random_bool(0.7),
            conspicuity: conspicuity(rng, d),
        });
    }
}

/// Consolidation / pneumonia.
fn sample_consolidation(rng: &mut ChaCha8Rng, d: Difficulty, ctx: &Context, f: &mut Findings) {
    let p_cons = if ctx.icu { 0.3 } else { 0.11 };
    if rng.random_bool(p_cons) {
        f.consolidation = Some(Consolidation {
            lobe: Lobe::random(rng),
            extent: severity(rng, d),
            air_bronchograms: rng.random_bool(0.45),
            pneumonia: rng.random_bool(0.6),
            conspicuity: conspicuity(rng, d),
            shape_seed: rng.random(),
        });
    }
}

/// Effusion: heart failure (often bilateral), parapneumonic (same side), trauma, ICU.
fn sample_effusion(rng: &mut ChaCha8Rng, d: Difficulty, ctx: &Context, f: &mut Findings) {
    let mut p_eff: f64 = 0.07;
    if ctx.heart_failure {
        p_eff = 0.7;
    }
    if f.consolidation.is_some() {
        p_eff = p_eff.max(0.3);
    }
    if ctx.icu || ctx.trauma {
        p_eff = p_eff.max(0.3);
    }
    if rng.random_bool(p_eff) {
        let side = if ctx.heart_failure && rng.random_bool(0.6) {
            Side::Bilateral
        } else if let Some(c) = &f.consolidation {
            c.lobe.side()
        } else if rng.random_bool(0.15) {
            Side::Bilateral
        } else {
            Side::pick(rng, 0.5)
        };
        let size = severity(rng, d);
        let level = match size {
            Severity::Mild => rng.random_range(0.10..0.18),
            Severity::Moderate => rng.random_range(0.28..0.42),
            Severity::Severe => rng.random_range(0.55..0.8),
        };
        let c = conspicuity(rng, d);
        f.effusion = Some(Effusion { side, size, level, conspicuity: c });
    }
}

/// Atelectasis: compressive with effusion, ICU, post-op; else sporadic.
fn sample_atelectasis(rng: &mut ChaCha8Rng, d: Difficulty, ctx: &Context, f: &mut Findings) {
    let mut p_atel: f64 = 0.1;
    if f.effusion.is_some() {
        p_atel = 0.35;
    }
    if ctx.icu {
        p_atel = p_atel.max(0.35);
    }
    if rng.random_bool(p_atel) {
        // Lobar collapse is the conspicuous kind; plate-like bands are subtle at low resolution.
        let lobar = rng.random_bool(match d {
            Difficulty::Easy => 0.6,
            Difficulty::Standard => 0.45,
            Difficulty::Hard => 0.3,
        });
        let eff_side = f.effusion.as_ref().map(|e| e.side);
        let (side, lobe) = if lobar {
            let lobe = match eff_side {
                Some(Side::Left) => Lobe::LeftLower,
                Some(Side::Right) => Lobe::RightLower,
                _ => [Lobe::LeftLower, Lobe::RightLower, Lobe::RightUpper, Lobe::LeftUpper]
                    [weighted(rng, &[0.4, 0.3, 0.15, 0.15])],
            };
            (lobe.side(), Some(lobe))
        } else {
            let side = match eff_side {
                Some(s) => s,
                None if rng.random_bool(0.35) => Side::Bilateral,
                None => Side::pick(rng, 0.5),
            };
            (side, None)
        };
        // Atelectasis under a large effusion would be hidden by the fluid: none there.
        let hidden = f.effusion.as_ref().is_some_and(|e| {
            e.size == Severity::Severe
                && (e.side == Side::Bilateral || side == Side::Bilateral || e.side == side)
        });
        if !hidden {
            f.atelectasis = Some(Atelectasis {
                kind: if lobar { AtelectasisKind::Lobar } else { AtelectasisKind::PlateLike },
                side,
                lobe,
                volume_loss: lobar || rng.random_bool(0.5),
                conspicuity: conspicuity(rng, d),
                shape_seed: rng.random(),
            });
        }
    }
}

/// Devices: ICU tubes and lines, pacemakers (kept from the prior study).
fn sample_devices(rng: &mut ChaCha8Rng, ctx: &Context, prior: Option<&Findings>, f: &mut Findings) {
    if ctx.icu {
        if rng.random_bool(0.75) {
            f.devices.et_tube = Some(EtTube { tip_cm: one_decimal(rng.random_range(2.5..6.5)) });
        }
        if rng.random_bool(0.8) {
            f.devices.central_line = Some(CentralLine {
                side: Side::pick(rng, 0.3),
                site: if rng.random_bool(0.7) {
                    LineSite::InternalJugular
                } else {
                    LineSite::Subclavian
                },
            });
        }
    } else if rng.random_bool(0.03) {
        f.devices.central_line =
            Some(CentralLine { side: Side::pick(rng, 0.3), site: LineSite::InternalJugular });
    }
    let prior_pm = prior.and_then(|p| p.devices.pacemaker.clone());
    if let Some(pm) = prior_pm {
        f.devices.pacemaker = Some(pm);
    } else if rng.random_bool(if f.cardiomegaly.is_some() { 0.2 } else { 0.03 }) {
        f.devices.pacemaker = Some(Pacemaker {
            side: Side::pick(rng, 0.85),
            leads: if rng.random_bool(0.6) { 2 } else { 1 },
        });
    }
}

/// Pneumothorax: trauma, lines (iatrogenic), spontaneous.
fn sample_pneumothorax(rng: &mut ChaCha8Rng, d: Difficulty, ctx: &Context, f: &mut Findings) {
    let p_ptx = if ctx.trauma {
        0.45
    } else if f.devices.central_line.is_some() {
        0.08
    } else {
        0.035
    };
    if rng.random_bool(p_ptx) {
        let size = severity(rng, d);
        let rim = match size {
            Severity::Mild => rng.random_range(0.12..0.2),
            Severity::Moderate => rng.random_range(0.25..0.35),
            Severity::Severe => rng.random_range(0.4..0.55),
        };
        f.pneumothorax = Some(Pneumothorax {
            side: Side::pick(rng, 0.5),
            size,
            rim,
            conspicuity: conspicuity(rng, d),
        });
    }
}

/// Fracture: trauma, or an old healed one (kept from the prior study).
fn sample_fracture(
    rng: &mut ChaCha8Rng,
    d: Difficulty,
    ctx: &Context,
    prior: Option<&Findings>,
    f: &mut Findings,
) {
    let prior_fx = prior.and_then(|p| p.fracture.clone()).filter(|_| keep(rng)).map(|mut fx| {
        fx.healing = true;
        fx
    });
    if prior_fx.is_some() {
        f.fracture = prior_fx;
    } else if rng.random_bool(if ctx.trauma { 0.8 } else { 0.035 }) {
        let side = f.pneumothorax.as_ref().map(|p| p.side).unwrap_or_else(|| Side::pick(rng, 0.5));
        let count = if ctx.trauma { [1u8, 2, 3][weighted(rng, &[0.3, 0.4, 0.3])] } else { 1 };
        f.fracture = Some(Fracture {
            side,
            rib: rng.random_range(4..=(10 - count)),
            count,
            displaced: rng.random_bool(if ctx.trauma { 0.6 } else { 0.3 }),
            healing: !ctx.trauma && rng.random_bool(0.6),
            conspicuity: conspicuity(rng, d),
        });
    }
}

/// Nodule, mass and granuloma (usually kept from the prior study).
fn sample_lesions(rng: &mut ChaCha8Rng, d: Difficulty, prior: Option<&Findings>, f: &mut Findings) {
    let prior_nod = prior.and_then(|p| p.nodule.clone()).filter(|_| keep(rng));
    if prior_nod.is_some() {
        f.nodule = prior_nod;
    } else if rng.random_bool(0.06) {
        let s = one_decimal(rng.random_range(1.0..2.8));
        f.nodule = Some(lesion(rng, d, s));
    }
    let prior_mass = prior.and_then(|p| p.mass.clone()).filter(|_| keep(rng));
    if prior_mass.is_some() {
        f.mass = prior_mass;
    } else if rng.random_bool(0.035) {
        let s = one_decimal(rng.random_range(3.2..7.0));
        f.mass = Some(lesion(rng, d, s));
    }
    // A nodule in the same lobe as a mass would hide behind it: put it in the other lung.
    if let (Some(n), Some(m)) = (f.nodule.as_mut(), f.mass.as_ref()) {
        if n.lobe == m.lobe {
            n.lobe = n.lobe.mirrored();
        }
    }
    let prior_gran = prior.and_then(|p| p.granuloma.clone()).filter(|_| keep(rng));
    if prior_gran.is_some() {
        f.granuloma = prior_gran;
    } else if rng.random_bool(0.08) {
        let s = one_decimal(rng.random_range(0.3..0.7));
        let mut g = lesion(rng, d, s);
        g.conspicuity = g.conspicuity.max(0.5);
        f.granuloma = Some(g);
    }
}

/// Acquisition for a study: ICU patients are mostly AP portable films.
pub fn sample_acquisition(rng: &mut ChaCha8Rng, d: Difficulty, ctx: &Context) -> Acquisition {
    let p_ap = if ctx.icu || ctx.trauma { 0.85 } else { 0.2 };
    let view = if rng.random_bool(p_ap) { View::Ap } else { View::Pa };
    Acquisition::sample(rng, view, d)
}
