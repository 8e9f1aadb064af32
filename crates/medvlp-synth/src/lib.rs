//! medvlp-synth: the synthetic paired chest X-ray benchmark (`medvlp synth`), without a tensor
//! engine. It writes a dataset directory in the standard manifest format of `medvlp-data` (its
//! only use of that crate), so every dataset adapter, the loader and the evaluation read it like
//! real data.
//!
//! A parametric frontal chest radiograph phantom ([`phantom`]) with findings sampled under
//! clinical co-occurrence priors ([`findings`]), radiology reports written from the same finding
//! list ([`report`]), the dataset writer ([`writer`]: images, manifest, ground truth, image-only
//! and text-only parts, `synth.json`) and the finding x severity picture grid ([`preview`]).
//!
//! Everything is deterministic per (seed, study index): each study draws from its own ChaCha
//! streams, so the files are byte-identical whatever the thread count.
//!
//! ```no_run
//! use medvlp_synth::{generate, SynthConfig};
//! let cfg = SynthConfig { n: 100, image_only: 0, text_only: 0, ..SynthConfig::default() };
//! let summary = generate(&cfg, std::path::Path::new("/tmp/synth")).unwrap();
//! println!("{} studies", summary.paired);
//! ```
//!
//! Laterality: the film is displayed as a PA view, so the patient's LEFT is the image's RIGHT
//! (columns > width / 2), and the heart bulges to the image's right.

pub mod findings;
pub mod phantom;
pub mod preview;
pub mod report;
pub mod writer;

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use medvlp_data::dataset::manifest::Split;

pub use findings::{Acquisition, Anatomy, Context, Findings, SYNTH_LABELS};
pub use preview::write_preview_grid;
pub use report::{Mention, Report};
pub use writer::{generate, SynthSummary};

/// Generator version, recorded in `synth.json`. Bump when the output for a given seed changes.
pub const SYNTH_VERSION: &str = "1.0.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Difficulty {
    /// Findings conspicuous and mostly moderate/large; little noise.
    Easy,
    #[default]
    Standard,
    /// Subtle findings (more hedged reports), more noise, blur and rotation.
    Hard,
}

impl std::str::FromStr for Difficulty {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "easy" => Difficulty::Easy,
            "standard" | "default" | "medium" => Difficulty::Standard,
            "hard" => Difficulty::Hard,
            _ => bail!("unknown difficulty {s:?} (easy|standard|hard)"),
        })
    }
}

impl Difficulty {
    pub fn as_str(self) -> &'static str {
        match self {
            Difficulty::Easy => "easy",
            Difficulty::Standard => "standard",
            Difficulty::Hard => "hard",
        }
    }
}

/// Generation parameters. `Default` is the quickstart set (6,000 paired, 2,000 image-only,
/// 2,000 text-only, 224 px, 8-bit, standard difficulty, no label noise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Paired studies (image + report).
    pub n: usize,
    /// Studies with an image and labels but no report.
    pub image_only: usize,
    /// Studies with a report and labels but no image.
    pub text_only: usize,
    pub seed: u64,
    /// Image side in pixels (64..=512).
    pub size: u32,
    pub difficulty: Difficulty,
    /// PNG bit depth: 8 or 16.
    pub bits: u8,
    /// Fraction of reports that omit or hedge one rendered finding (0..=1).
    pub label_noise: f64,
    /// Fraction of paired-part patients with a second (follow-up) study.
    pub followup_frac: f64,
    /// Split fractions by patient (the rest is train).
    pub val_frac: f64,
    pub test_frac: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            n: 6000,
            image_only: 2000,
            text_only: 2000,
            seed: 0,
            size: 224,
            difficulty: Difficulty::Standard,
            bits: 8,
            label_noise: 0.0,
            followup_frac: 0.2,
            val_frac: 0.1,
            test_frac: 0.1,
        }
    }
}

impl SynthConfig {
    pub fn validate(&self) -> Result<()> {
        if self.n + self.image_only + self.text_only == 0 {
            bail!("nothing to generate: n, image-only and text-only are all 0");
        }
        if !(64..=512).contains(&self.size) {
            bail!("size {} is out of range (64..=512)", self.size);
        }
        if self.bits != 8 && self.bits != 16 {
            bail!("bits must be 8 or 16, got {}", self.bits);
        }
        if !(0.0..=1.0).contains(&self.label_noise) {
            bail!("label noise must be in 0..=1, got {}", self.label_noise);
        }
        if !(0.0..=1.0).contains(&self.followup_frac) {
            bail!("follow-up fraction must be in 0..=1, got {}", self.followup_frac);
        }
        if self.val_frac < 0.0 || self.test_frac < 0.0 || self.val_frac + self.test_frac > 1.0 {
            bail!("bad split fractions: val {} test {}", self.val_frac, self.test_frac);
        }
        Ok(())
    }
}

/// Which part of the dataset a study belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Paired,
    ImageOnly,
    TextOnly,
}

/// One planned study: everything needed to render its image and write its report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyPlan {
    /// Global study index (paired, then image-only, then text-only).
    pub index: usize,
    pub id: String,
    pub patient_id: String,
    pub part: Part,
    pub split: Split,
    /// 0 for a patient's first study, 1 for the follow-up.
    pub visit: u8,
    /// Index (into the plan) of the patient's previous study.
    pub prior: Option<usize>,
    pub anatomy: Anatomy,
    pub acquisition: Acquisition,
    pub context: Context,
    pub findings: Findings,
}

impl StudyPlan {
    pub fn labels(&self) -> BTreeMap<String, i8> {
        self.findings.labels()
    }
    pub fn has_image(&self) -> bool {
        self.part != Part::TextOnly
    }
    pub fn has_report(&self) -> bool {
        self.part != Part::ImageOnly
    }
    pub fn image_path(&self) -> String {
        format!("images/{}.png", self.id)
    }
}

// Stream ids of the per-study and per-patient ChaCha generators.
const S_PATIENT: u64 = 0;
const S_FINDINGS: u64 = 1;
const S_RENDER: u64 = 2;
const S_REPORT: u64 = 3;
const S_SPLIT: u64 = 4;

/// The generator of one (seed, index, purpose): independent of every other study's draws.
pub fn study_rng(seed: u64, index: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x6d65_6476_6c70_5359);
    r.set_stream(index.wrapping_mul(8).wrapping_add(stream));
    r
}

/// Plans every study (cheap, sequential, deterministic): patients, splits, anatomy, findings.
pub fn plan(cfg: &SynthConfig) -> Result<Vec<StudyPlan>> {
    cfg.validate()?;
    let total = cfg.n + cfg.image_only + cfg.text_only;
    let mut plans: Vec<StudyPlan> = Vec::with_capacity(total);
    let mut patient = 0usize;
    let mut idx = 0usize;
    let parts =
        [(Part::Paired, cfg.n), (Part::ImageOnly, cfg.image_only), (Part::TextOnly, cfg.text_only)];
    for (part, count) in parts {
        let end = idx + count;
        while idx < end {
            let mut prng = study_rng(cfg.seed, patient as u64, S_PATIENT);
            let anatomy = Anatomy::sample(&mut prng, cfg.difficulty);
            let visits =
                if part == Part::Paired && idx + 1 < end && prng.random_bool(cfg.followup_frac) {
                    2
                } else {
                    1
                };
            let u: f64 = study_rng(cfg.seed, patient as u64, S_SPLIT).random();
            let split = if u < cfg.test_frac {
                Split::Test
            } else if u < cfg.test_frac + cfg.val_frac {
                Split::Validate
            } else {
                Split::Train
            };
            let patient_id = format!("p{patient:06}");
            for visit in 0..visits {
                let mut frng = study_rng(cfg.seed, idx as u64, S_FINDINGS);
                let prior = if visit > 0 { Some(idx - 1) } else { None };
                let (findings, context) = findings::sample_findings(
                    &mut frng,
                    cfg.difficulty,
                    prior.map(|p| &plans[p].findings),
                );
                let acquisition = findings::sample_acquisition(&mut frng, cfg.difficulty, &context);
                plans.push(StudyPlan {
                    index: idx,
                    id: format!("s{idx:07}"),
                    patient_id: patient_id.clone(),
                    part,
                    split,
                    visit: visit as u8,
                    prior,
                    anatomy: anatomy.clone(),
                    acquisition,
                    context,
                    findings,
                });
                idx += 1;
            }
            patient += 1;
        }
    }
    Ok(plans)
}

/// Renders a planned study's image: display intensities in 0..1, `size` x `size`, row-major.
pub fn render_study(cfg: &SynthConfig, p: &StudyPlan) -> Vec<f32> {
    let mut rng = study_rng(cfg.seed, p.index as u64, S_RENDER);
    phantom::render(&p.anatomy, &p.acquisition, &p.findings, cfg.size as usize, &mut rng)
}

/// Writes a planned study's report (`plans` supplies the prior study for comparisons).
pub fn report_study(cfg: &SynthConfig, plans: &[StudyPlan], p: &StudyPlan) -> Report {
    let mut rng = study_rng(cfg.seed, p.index as u64, S_REPORT);
    let prior = p.prior.map(|i| &plans[i].findings);
    report::write_report(&p.findings, &p.acquisition, &p.context, prior, cfg.label_noise, &mut rng)
}
