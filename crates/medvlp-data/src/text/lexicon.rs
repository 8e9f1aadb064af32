//! The radiology lexicon: a versioned TOML data file (`data/lexicon.toml`, embedded in the binary)
//! listing findings, devices, anatomy, modifiers, composite findings, context rules, report
//! sections and assertion triggers. Every labelling rule lives here: a new synonym, trigger or
//! context rule is a change to the data file, not to the code.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{Assertion, Convention};

/// The lexicon shipped with the crate.
pub const BUILTIN_LEXICON: &str = include_str!("../../data/lexicon.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lexicon {
    /// Bumped whenever terms or rules change.
    pub version: String,
    #[serde(default)]
    pub finding: Vec<ConceptEntry>,
    #[serde(default)]
    pub device: Vec<ConceptEntry>,
    #[serde(default)]
    pub anatomy: Vec<ConceptEntry>,
    #[serde(default)]
    pub modifier: Vec<ConceptEntry>,
    #[serde(default)]
    pub composite: Vec<CompositeEntry>,
    /// Context rules: a mention read differently because of the words around it.
    #[serde(default)]
    pub rule: Vec<RuleEntry>,
    /// Section headers; mentions under the `skip` ones (INDICATION, HISTORY, ...) feed no label.
    #[serde(default)]
    pub sections: Sections,
    pub triggers: Triggers,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConceptEntry {
    pub concept: String,
    /// Study labels this concept feeds (devices always feed "Support Devices").
    #[serde(default)]
    pub labels: Vec<String>,
    /// Labels fed only under one labelling convention, by convention name
    /// (`{ chexpert = ["Edema"] }`: vascular congestion is edema under CheXpert's rules only).
    #[serde(default)]
    pub convention_labels: BTreeMap<String, Vec<String>>,
    pub terms: Vec<String>,
    /// Fixes the assertion of every mention, bypassing the triggers.
    #[serde(default)]
    pub assertion: Option<Assertion>,
}

/// A finding expressed as anatomy plus a state word: "the heart is enlarged", "normal heart size".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompositeEntry {
    pub concept: String,
    pub labels: Vec<String>,
    /// Anatomy concepts (from `[[anatomy]]`) this composite attaches to.
    pub anatomy: Vec<String>,
    /// Maximum words between the anatomy and a following state word.
    pub after: usize,
    /// Maximum words between a preceding state word and the anatomy.
    pub before: usize,
    #[serde(default)]
    pub present: Vec<String>,
    #[serde(default)]
    pub absent: Vec<String>,
    #[serde(default)]
    pub uncertain: Vec<String>,
    /// States at the limit of normal ("borderline", "upper limits of normal"): uncertain under
    /// the CheXpert convention, present under the strict one.
    #[serde(default)]
    pub borderline: Vec<String>,
}

/// Which side of the mention a rule's context lies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Before,
    After,
    Either,
}

/// A context rule: a mention of one of `concepts` with a context term (or a mention of one of
/// the `near` concepts) within `window` words on `side`, in the same clause, is read as `then` says.
///
/// `then`: `"absent"` (the context explains the finding away; uncertain when a hedge such as
/// "likely" lies between them), `"uncertain"`, `"present"`, `"drop"` (the mention feeds no
/// label), `"history"` (history or etiology, not active disease: feeds no label) or
/// `"concept:NAME"` (the mention is the finding NAME, e.g. a calcified nodule is a granuloma).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// What the rule is for (documentation, shown in errors).
    pub why: String,
    /// Concepts (findings, devices, composites) the rule reads.
    pub concepts: Vec<String>,
    pub side: Side,
    /// Maximum words between the mention and the context.
    pub window: usize,
    /// Context terms.
    #[serde(default)]
    pub terms: Vec<String>,
    /// Context concepts: a mention of one of them is context too.
    #[serde(default)]
    pub near: Vec<String>,
    /// When not empty, one of these terms must lie between the mention and the context
    /// ("nodular density *representing* a healing fracture").
    #[serde(default)]
    pub via: Vec<String>,
    /// Terms that, lying between the mention and the context, stop the rule ("rib fractures
    /// *and* sternotomy wires").
    #[serde(default)]
    pub stop: Vec<String>,
    /// Whether the context may lie past a comma (lists and appositions: "nodule, likely a
    /// granuloma"). Default false.
    #[serde(default)]
    pub cross_commas: bool,
    pub then: String,
}

/// What a matching rule does to a mention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleEffect {
    /// Absent; uncertain when a hedge lies between the mention and its context.
    Explained,
    Assert(Assertion),
    Drop,
    History,
    Concept(String),
}

impl RuleEntry {
    pub fn effect(&self) -> Result<RuleEffect> {
        Ok(match self.then.as_str() {
            "absent" => RuleEffect::Explained,
            "uncertain" => RuleEffect::Assert(Assertion::Uncertain),
            "present" => RuleEffect::Assert(Assertion::Present),
            "drop" => RuleEffect::Drop,
            "history" => RuleEffect::History,
            other => match other.strip_prefix("concept:") {
                Some(c) if !c.trim().is_empty() => RuleEffect::Concept(c.trim().to_string()),
                _ => bail!(
                    "rule {:?}: `then` must be absent, uncertain, present, drop, history or \
                     concept:NAME, got {other:?}",
                    self.why
                ),
            },
        })
    }
}

/// Report section headers (matched case-insensitively when followed by a colon).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sections {
    /// Sections that describe the request, not the image (INDICATION, HISTORY, COMPARISON,
    /// TECHNIQUE): their mentions are extracted but feed no label. Such a section ends at the
    /// next header or at a blank line.
    #[serde(default)]
    pub skip: Vec<String>,
    /// Sections that describe the image (FINDINGS, IMPRESSION): they end a skipped section.
    #[serde(default)]
    pub keep: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    pub negation_pre: Vec<String>,
    pub negation_post: Vec<String>,
    pub uncertain_pre: Vec<String>,
    pub uncertain_post: Vec<String>,
    pub pseudo: Vec<String>,
    /// End the scope of a trigger, and separate an anatomy word from a state word
    /// ("but", "however", "which").
    pub termination: Vec<String>,
    /// End the scope of a trigger only ("there is", "stable", "remains"): "the heart remains
    /// enlarged" is still one composite finding.
    #[serde(default)]
    pub termination_soft: Vec<String>,
    /// Hedges at the limit of normal ("borderline cardiomegaly"): uncertain under the CheXpert
    /// convention, present under the strict one.
    #[serde(default)]
    pub borderline_pre: Vec<String>,
    #[serde(default)]
    pub borderline_post: Vec<String>,
    /// Links that carry a preceding negation on to the finding after them and hedge it otherwise:
    /// "no focal opacity *to suggest* pneumonia" is an absent pneumonia, "opacity *to suggest*
    /// pneumonia" an uncertain one.
    #[serde(default)]
    pub linked_uncertain: Vec<String>,
    /// Links that carry a preceding negation on and assert presence otherwise: "without
    /// *typical findings of* edema", "opacity *consistent with* pneumonia".
    #[serde(default)]
    pub linked_present: Vec<String>,
    /// Phrases that contain a trigger word but are not triggers ("age-indeterminate fracture"
    /// is a present fracture of unknown age; "prior study" is no history).
    #[serde(default)]
    pub neutral: Vec<String>,
}

impl Lexicon {
    /// The embedded lexicon.
    pub fn builtin() -> Lexicon {
        // The embedded file is covered by tests; failing here is a build defect, not bad input.
        Lexicon::from_toml_str(BUILTIN_LEXICON, "<builtin lexicon.toml>")
            .expect("the embedded lexicon.toml is valid")
    }

    pub fn from_toml_str(s: &str, origin: &str) -> Result<Lexicon> {
        let lex: Lexicon =
            toml::from_str(s).with_context(|| format!("parsing lexicon {origin}"))?;
        lex.validate().with_context(|| format!("invalid lexicon {origin}"))?;
        Ok(lex)
    }

    pub fn load(path: &Path) -> Result<Lexicon> {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("reading lexicon {}", path.display()))?;
        Lexicon::from_toml_str(&s, &path.display().to_string())
    }

    /// Rejects empty terms, a term listed under two concepts of the same kind, composites
    /// naming unknown anatomy, unknown convention names, and rules naming unknown concepts or
    /// effects.
    fn validate(&self) -> Result<()> {
        for (kind, entries) in [
            ("finding", &self.finding),
            ("device", &self.device),
            ("anatomy", &self.anatomy),
            ("modifier", &self.modifier),
        ] {
            let mut seen: HashMap<String, &str> = HashMap::new();
            for e in entries.iter() {
                if e.terms.is_empty() {
                    bail!("{kind} {:?} has no terms", e.concept);
                }
                for t in &e.terms {
                    let t = t.trim().to_ascii_lowercase();
                    if t.is_empty() {
                        bail!("{kind} {:?} has an empty term", e.concept);
                    }
                    if let Some(prev) = seen.insert(t.clone(), &e.concept) {
                        if prev != e.concept {
                            bail!(
                                "{kind} term {t:?} is listed under both {prev:?} and {:?}",
                                e.concept
                            );
                        }
                    }
                }
            }
        }
        for c in &self.composite {
            for a in &c.anatomy {
                if !self.anatomy.iter().any(|e| &e.concept == a) {
                    bail!("composite {:?} names unknown anatomy {a:?}", c.concept);
                }
            }
        }
        for e in self.finding.iter().chain(&self.device) {
            for name in e.convention_labels.keys() {
                if name.parse::<Convention>().is_err() {
                    bail!(
                        "{:?}: unknown convention {name:?} in convention_labels (known: {})",
                        e.concept,
                        Convention::ALL.map(|c| c.name()).join(", ")
                    );
                }
            }
        }
        let known = |c: &str| {
            self.finding.iter().chain(&self.device).chain(&self.anatomy).any(|e| e.concept == c)
                || self.composite.iter().any(|e| e.concept == c)
        };
        for r in &self.rule {
            if r.terms.is_empty() && r.near.is_empty() {
                bail!("rule {:?} has neither terms nor near concepts", r.why);
            }
            for c in r.concepts.iter().chain(&r.near) {
                if !known(c) {
                    bail!("rule {:?} names unknown concept {c:?}", r.why);
                }
            }
            if let RuleEffect::Concept(c) = r.effect()? {
                if !self.finding.iter().any(|e| e.concept == c) {
                    bail!("rule {:?}: `then` names unknown finding {c:?}", r.why);
                }
            }
        }
        Ok(())
    }
}
