//! Prompt files: versioned TOML under `prompts/` at the repository root (embedded in the binary,
//! or loaded from a user path).
//!
//! Two kinds, told apart by the `kind` key:
//! - `kind = "zero-shot"`: class prompts for zero-shot classification. Each `[[class]]` has single
//!   `templates`, an optional `ensemble` (the cartesian product of named slots joined by spaces,
//!   GLoRIA/MedCLIP style: severity x subtype x location) and optional `positive`/`negative`
//!   prompts (CheXzero style): one each, or a list per side, averaged (CLIP's prompt ensembling).
//! - `kind = "disease"`: turns a label vector into a report-like text for unpaired images
//!   ([`disease_prompt`]): one sentence per positive or uncertain label with sampled severity and
//!   location, a few sampled negatives, and a normal-study sentence when nothing is positive.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::labels::{all_labels, CHEXPERT_14};

/// The prompt files shipped with the crate: (name, TOML text).
pub const BUILTIN_PROMPTS: [(&str, &str); 7] = [
    ("chexpert5", include_str!("../../../../prompts/chexpert5.toml")),
    ("chexpert14", include_str!("../../../../prompts/chexpert14.toml")),
    ("nih14", include_str!("../../../../prompts/nih14.toml")),
    ("rsna_pneumonia", include_str!("../../../../prompts/rsna_pneumonia.toml")),
    ("siim_pneumothorax", include_str!("../../../../prompts/siim_pneumothorax.toml")),
    ("covidx", include_str!("../../../../prompts/covidx.toml")),
    ("disease", include_str!("../../../../prompts/disease.toml")),
];

/// A parsed prompt file of either kind.
#[derive(Debug, Clone)]
pub enum PromptFile {
    ZeroShot(ZeroShotPrompts),
    Disease(DiseasePrompts),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroShotPrompts {
    pub kind: String,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub class: Vec<ClassPrompts>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassPrompts {
    pub name: String,
    #[serde(default)]
    pub templates: Vec<String>,
    #[serde(default)]
    pub ensemble: Option<Ensemble>,
    /// The positive side of the pos/neg pair: one prompt or several (averaged as an ensemble).
    #[serde(default)]
    pub positive: Option<OneOrMany>,
    #[serde(default)]
    pub negative: Option<OneOrMany>,
}

/// A prompt or a list of prompts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![squash(s)],
            OneOrMany::Many(v) => v.iter().map(|s| squash(s)).collect(),
        }
    }
}

/// Slots combined in `order`; an empty string in a slot means "leave this slot out".
#[derive(Debug, Clone, Deserialize)]
pub struct Ensemble {
    pub order: Vec<String>,
    #[serde(flatten)]
    pub slots: BTreeMap<String, Vec<String>>,
}

/// What a class expands to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandedClass {
    pub name: String,
    pub templates: Vec<String>,
    pub ensemble: Vec<String>,
    /// Positive prompts of the pos/neg mode (empty: none; several: an ensemble).
    pub positive: Vec<String>,
    /// Negative prompts (empty: `no {positive}` is derived where needed).
    pub negative: Vec<String>,
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Ensemble {
    /// Every combination, whitespace-normalised, deduplicated, in product order.
    pub fn expand(&self) -> Result<Vec<String>> {
        let mut acc: Vec<String> = vec![String::new()];
        for slot in &self.order {
            let vals = self.slots.get(slot).with_context(|| {
                format!("ensemble order names slot {slot:?} that is not defined")
            })?;
            if vals.is_empty() {
                bail!("ensemble slot {slot:?} is empty (use [\"\"] for an optional slot)");
            }
            acc = acc.iter().flat_map(|a| vals.iter().map(move |v| format!("{a} {v}"))).collect();
        }
        let mut seen = std::collections::HashSet::new();
        Ok(acc
            .into_iter()
            .map(|s| squash(&s))
            .filter(|s| !s.is_empty() && seen.insert(s.clone()))
            .collect())
    }
}

impl ZeroShotPrompts {
    pub fn expand(&self) -> Result<Vec<ExpandedClass>> {
        self.class
            .iter()
            .map(|c| {
                let ensemble = match &c.ensemble {
                    Some(e) => e.expand().with_context(|| format!("class {:?}", c.name))?,
                    None => Vec::new(),
                };
                let positive = c.positive.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
                let negative = c.negative.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
                if positive.iter().chain(&negative).any(|p| p.is_empty()) {
                    bail!("class {:?} has an empty positive or negative prompt", c.name);
                }
                if c.templates.is_empty() && ensemble.is_empty() && positive.is_empty() {
                    bail!("class {:?} has no templates, ensemble or positive prompt", c.name);
                }
                Ok(ExpandedClass {
                    name: c.name.clone(),
                    templates: c.templates.iter().map(|t| squash(t)).collect(),
                    ensemble,
                    positive,
                    negative,
                })
            })
            .collect()
    }
}

/// Disease-kind prompt file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiseasePrompts {
    pub kind: String,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Sentences for a study with nothing positive or uncertain (one is sampled).
    pub no_finding: Vec<String>,
    /// At most this many negative labels are mentioned (sampled).
    pub max_negatives: usize,
    pub label: Vec<LabelPrompts>,
}

/// Templates for one label. `{severity}` and `{location}` are filled from the lists (an empty
/// string is allowed and simply drops the word).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelPrompts {
    pub name: String,
    pub positive: Vec<String>,
    #[serde(default)]
    pub uncertain: Vec<String>,
    #[serde(default)]
    pub negative: Vec<String>,
    #[serde(default)]
    pub severity: Vec<String>,
    #[serde(default)]
    pub location: Vec<String>,
}

fn sentence(s: &str) -> String {
    let s = squash(s);
    let mut c = s.chars();
    let mut out = match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => return s,
    };
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

impl DiseasePrompts {
    fn validate(&self) -> Result<()> {
        let known = all_labels();
        if self.no_finding.is_empty() {
            bail!("no_finding is empty");
        }
        for l in &self.label {
            if !known.contains(&l.name.as_str()) {
                bail!("label {:?} is not a known label ({known:?})", l.name);
            }
            if l.positive.is_empty() {
                bail!("label {:?} has no positive templates", l.name);
            }
            for t in l.positive.iter().chain(&l.uncertain).chain(&l.negative) {
                if t.contains("{severity}") && l.severity.is_empty() {
                    bail!(
                        "label {:?}: template {t:?} uses {{severity}} but no severity list",
                        l.name
                    );
                }
                if t.contains("{location}") && l.location.is_empty() {
                    bail!(
                        "label {:?}: template {t:?} uses {{location}} but no location list",
                        l.name
                    );
                }
            }
        }
        Ok(())
    }

    fn fill(&self, l: &LabelPrompts, templates: &[String], rng: &mut ChaCha8Rng) -> Option<String> {
        let t = templates.choose(rng)?;
        let mut s = t.clone();
        if s.contains("{severity}") {
            s = s.replace("{severity}", l.severity.choose(rng).map_or("", |v| v));
        }
        if s.contains("{location}") {
            s = s.replace("{location}", l.location.choose(rng).map_or("", |v| v));
        }
        Some(sentence(&s))
    }

    /// Report-like text for a label vector; the same labels and seed always give the same text.
    /// Labels without an entry in the file are skipped.
    pub fn render(&self, labels: &BTreeMap<String, i8>, seed: u64) -> String {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut parts: Vec<String> = Vec::new();
        let mut negatives: Vec<&LabelPrompts> = Vec::new();
        for l in &self.label {
            match labels.get(&l.name) {
                Some(1) => parts.extend(self.fill(l, &l.positive, &mut rng)),
                Some(-1) => {
                    let t = if l.uncertain.is_empty() { &l.positive } else { &l.uncertain };
                    if l.uncertain.is_empty() {
                        parts.extend(
                            self.fill(l, t, &mut rng)
                                .map(|s| format!("Possible {}", lower_first(&s))),
                        );
                    } else {
                        parts.extend(self.fill(l, t, &mut rng));
                    }
                }
                Some(0) if !l.negative.is_empty() => negatives.push(l),
                _ => {}
            }
        }
        let sick = CHEXPERT_14
            .iter()
            .filter(|l| **l != "No Finding" && **l != "Support Devices")
            .any(|l| matches!(labels.get(*l), Some(1) | Some(-1)));
        if labels.get("No Finding") == Some(&1) || !sick {
            if let Some(s) = self.no_finding.choose(&mut rng) {
                parts.push(sentence(s));
            }
        }
        negatives.shuffle(&mut rng);
        negatives.truncate(self.max_negatives);
        // Keep file order for the chosen negatives so the text reads consistently.
        negatives.sort_by_key(|l| self.label.iter().position(|x| x.name == l.name));
        for l in negatives {
            parts.extend(self.fill(l, &l.negative, &mut rng));
        }
        parts.join(" ")
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

impl PromptFile {
    pub fn from_toml_str(s: &str, origin: &str) -> Result<PromptFile> {
        let v: toml::Table =
            toml::from_str(s).with_context(|| format!("parsing prompt file {origin}"))?;
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "zero-shot" => {
                let z: ZeroShotPrompts =
                    toml::from_str(s).with_context(|| format!("parsing prompt file {origin}"))?;
                z.expand().with_context(|| format!("prompt file {origin}"))?;
                Ok(PromptFile::ZeroShot(z))
            }
            "disease" => {
                let d: DiseasePrompts =
                    toml::from_str(s).with_context(|| format!("parsing prompt file {origin}"))?;
                d.validate().with_context(|| format!("prompt file {origin}"))?;
                Ok(PromptFile::Disease(d))
            }
            other => bail!(
                "prompt file {origin}: `kind` must be \"zero-shot\" or \"disease\", got {other:?}"
            ),
        }
    }

    pub fn load(path: &Path) -> Result<PromptFile> {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("reading prompt file {}", path.display()))?;
        PromptFile::from_toml_str(&s, &path.display().to_string())
    }

    /// A shipped prompt file by name (see [`BUILTIN_PROMPTS`]).
    pub fn builtin(name: &str) -> Result<PromptFile> {
        let (_, text) = BUILTIN_PROMPTS.iter().find(|(n, _)| *n == name).with_context(|| {
            let names: Vec<_> = BUILTIN_PROMPTS.iter().map(|(n, _)| *n).collect();
            format!("no built-in prompt file {name:?} (have {names:?})")
        })?;
        PromptFile::from_toml_str(text, &format!("<builtin {name}>"))
    }

    /// A path if it exists, else a built-in name.
    pub fn resolve(name_or_path: &str) -> Result<PromptFile> {
        let p = Path::new(name_or_path);
        if p.exists() {
            PromptFile::load(p)
        } else {
            PromptFile::builtin(name_or_path).with_context(|| {
                format!("{name_or_path} is neither a file nor a built-in prompt file")
            })
        }
    }

    /// Human-readable expansion (what `medvlp prompts show` prints).
    pub fn describe(&self) -> Result<String> {
        let mut o = String::new();
        match self {
            PromptFile::ZeroShot(z) => {
                writeln!(o, "# {} (zero-shot, version {}): {}", z.name, z.version, z.description)?;
                for c in z.expand()? {
                    writeln!(o, "\n[{}]", c.name)?;
                    for t in &c.templates {
                        writeln!(o, "  template: {t}")?;
                    }
                    for p in &c.positive {
                        writeln!(o, "  positive: {p}")?;
                    }
                    for n in &c.negative {
                        writeln!(o, "  negative: {n}")?;
                    }
                    if !c.ensemble.is_empty() {
                        writeln!(o, "  ensemble ({} prompts):", c.ensemble.len())?;
                        for e in &c.ensemble {
                            writeln!(o, "    {e}")?;
                        }
                    }
                }
            }
            PromptFile::Disease(d) => {
                writeln!(o, "# {} (disease, version {}): {}", d.name, d.version, d.description)?;
                let empty = BTreeMap::from([("No Finding".to_string(), 1i8)]);
                writeln!(o, "\n[No Finding]\n  seed 0: {}", d.render(&empty, 0))?;
                for l in &d.label {
                    writeln!(o, "\n[{}]", l.name)?;
                    for (v, what) in [(1i8, "positive"), (-1, "uncertain"), (0, "negative")] {
                        let labels = BTreeMap::from([(l.name.clone(), v)]);
                        for seed in 0..2u64 {
                            writeln!(o, "  {what}, seed {seed}: {}", d.render(&labels, seed))?;
                        }
                    }
                }
                let mixed = BTreeMap::from([
                    ("Cardiomegaly".to_string(), 1i8),
                    ("Pleural Effusion".to_string(), 1),
                    ("Edema".to_string(), -1),
                    ("Pneumothorax".to_string(), 0),
                    ("Consolidation".to_string(), 0),
                    ("Support Devices".to_string(), 1),
                ]);
                writeln!(o, "\n[example: {mixed:?}]")?;
                for seed in 0..3u64 {
                    writeln!(o, "  seed {seed}: {}", d.render(&mixed, seed))?;
                }
            }
        }
        Ok(o)
    }
}

static DISEASE: OnceLock<DiseasePrompts> = OnceLock::new();

/// The shipped disease-kind prompt file.
pub fn builtin_disease_prompts() -> &'static DiseasePrompts {
    DISEASE.get_or_init(|| match PromptFile::builtin("disease") {
        Ok(PromptFile::Disease(d)) => d,
        // The embedded file is covered by tests; anything else is a build defect.
        _ => panic!("the embedded prompts/disease.toml is a valid disease prompt file"),
    })
}

/// Report-like text for a label vector (1 / 0 / -1 per label, missing = not mentioned), using the
/// shipped `prompts/disease.toml`; deterministic for a given seed.
pub fn disease_prompt(labels: &BTreeMap<String, i8>, seed: u64) -> String {
    builtin_disease_prompts().render(labels, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::label_report;

    #[test]
    fn builtin_files_parse_and_expand() {
        for (name, _) in BUILTIN_PROMPTS {
            let f = PromptFile::builtin(name).unwrap();
            let d = f.describe().unwrap();
            assert!(d.lines().count() > 5, "{name}: {d}");
        }
        let PromptFile::ZeroShot(z) = PromptFile::builtin("chexpert5").unwrap() else { panic!() };
        let ex = z.expand().unwrap();
        assert_eq!(ex.len(), 5);
        let at = ex.iter().find(|c| c.name == "Atelectasis").unwrap();
        assert!(at.ensemble.len() > 50, "{}", at.ensemble.len());
        assert!(at.ensemble.iter().all(|p| !p.contains("  ") && !p.starts_with(' ')));
        assert!(!at.negative.is_empty() && !at.positive.is_empty());
        let PromptFile::ZeroShot(z) = PromptFile::builtin("chexpert14").unwrap() else { panic!() };
        let names: Vec<_> = z.class.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), 14);
        for l in CHEXPERT_14 {
            assert!(names.contains(&l), "{l} missing");
        }
    }

    #[test]
    fn pos_neg_prompts_are_one_or_a_list() {
        let file = |pos: &str| {
            format!(
                "kind = \"zero-shot\"\nname = \"t\"\nversion = \"1\"\n\
                 [[class]]\nname = \"Edema\"\npositive = {pos}\nnegative = \"no  edema\"\n"
            )
        };
        let expand = |pos: &str| match PromptFile::from_toml_str(&file(pos), "t.toml") {
            Ok(PromptFile::ZeroShot(z)) => z.expand().map(|mut c| c.remove(0)),
            Ok(_) => unreachable!(),
            Err(e) => Err(e),
        };
        let one = expand("\"edema\"").unwrap();
        assert_eq!((one.positive, one.negative), (vec!["edema".into()], vec!["no edema".into()]));
        let many = expand("[\"edema\", \"mild  edema.\"]").unwrap();
        assert_eq!(many.positive, ["edema", "mild edema."]);
        let err = expand("[\"edema\", \" \"]").unwrap_err();
        assert!(format!("{err:#}").contains("empty positive or negative prompt"), "{err:#}");
    }

    #[test]
    fn disease_file_covers_every_label() {
        let d = builtin_disease_prompts();
        for l in all_labels() {
            if l != "No Finding" {
                assert!(d.label.iter().any(|x| x.name == l), "{l} has no disease prompt");
            }
        }
    }

    #[test]
    fn disease_prompt_is_deterministic_and_faithful() {
        let labels = BTreeMap::from([
            ("Pleural Effusion".to_string(), 1i8),
            ("Pneumothorax".to_string(), 0),
            ("Edema".to_string(), -1),
        ]);
        let a = disease_prompt(&labels, 7);
        assert_eq!(a, disease_prompt(&labels, 7));
        let distinct: std::collections::HashSet<_> =
            (0..20).map(|s| disease_prompt(&labels, s)).collect();
        assert!(distinct.len() > 3, "seeds should vary the text: {distinct:?}");
        // Round trip through the labeler: the prompt says what the labels say.
        for s in 0..20 {
            let text = disease_prompt(&labels, s);
            let back = label_report(&text);
            assert_eq!(back.get("Pleural Effusion"), Some(&1), "{text}");
            assert_eq!(back.get("Edema"), Some(&-1), "{text}");
            assert_ne!(back.get("Pneumothorax"), Some(&1), "{text}");
            assert_ne!(back.get("Pneumothorax"), Some(&-1), "{text}");
        }
        let normal = disease_prompt(&BTreeMap::from([("No Finding".to_string(), 1)]), 0);
        assert_eq!(label_report(&normal).get("No Finding"), Some(&1), "{normal}");
    }

    #[test]
    fn bad_prompt_files_are_errors() {
        assert!(PromptFile::from_toml_str("kind = \"other\"", "x.toml").is_err());
        let bad = "kind = \"zero-shot\"\nname = \"x\"\nversion = \"1\"\n[[class]]\nname = \"A\"\n[class.ensemble]\norder = [\"a\", \"b\"]\na = [\"x\"]\n";
        let err = format!("{:#}", PromptFile::from_toml_str(bad, "x.toml").unwrap_err());
        assert!(err.contains("\"b\"") && err.contains("x.toml"), "{err}");
        let bad = "kind = \"disease\"\nname = \"x\"\nversion = \"1\"\nno_finding = [\"ok\"]\nmax_negatives = 1\n[[label]]\nname = \"Nope\"\npositive = [\"x\"]\n";
        assert!(PromptFile::from_toml_str(bad, "x.toml").is_err());
        assert!(PromptFile::resolve("/nonexistent/file.toml").is_err());
    }
}
