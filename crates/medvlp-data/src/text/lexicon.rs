//! The radiology lexicon: a versioned TOML data file (`data/lexicon.toml`, embedded in the binary)
//! listing findings, devices, anatomy, modifiers, composite findings and assertion triggers.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::Assertion;

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
    pub triggers: Triggers,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConceptEntry {
    pub concept: String,
    /// Study labels this concept feeds (devices always feed "Support Devices").
    #[serde(default)]
    pub labels: Vec<String>,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    pub negation_pre: Vec<String>,
    pub negation_post: Vec<String>,
    pub uncertain_pre: Vec<String>,
    pub uncertain_post: Vec<String>,
    pub pseudo: Vec<String>,
    pub termination: Vec<String>,
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

    /// Rejects empty terms, a term listed under two concepts of the same kind, and composites
    /// naming unknown anatomy.
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
        Ok(())
    }
}
