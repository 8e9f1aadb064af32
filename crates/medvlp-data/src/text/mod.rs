//! Radiology report text: entity extraction with assertion (present / absent / uncertain),
//! CheXpert-style study labels, and prompt files.
//!
//! - [`lexicon`]: the versioned lexicon (`data/lexicon.toml`, embedded).
//! - [`extract`]: the compiled matcher and [`extract_entities`].
//! - [`assertion`]: NegEx-style assertion resolution.
//! - [`labels`]: [`label_report`], [`CHEXPERT_14`], [`EXTRA_LABELS`].
//! - [`Convention`]: CheXpert's labelling rules or naming-only ("strict") labels
//!   (docs/labeler-conventions.md lists every difference).
//! - [`prompts`]: zero-shot prompt files and [`disease_prompt`].
//! - [`augment`]: sentence shuffling and sampling of training reports ([`TextAugment`]).
//!
//! Offsets are byte offsets into the input text. Matching is done on an ASCII-lowercased copy,
//! which keeps byte offsets identical to the input (non-ASCII bytes are left as they are).

pub mod assertion;
pub mod augment;
pub mod extract;
pub mod labelfile;
pub mod labels;
pub mod lexicon;
pub mod prompts;

use serde::{Deserialize, Serialize};

pub use augment::{sentences, TextAugment};
pub use extract::{extract_entities, Extractor};
pub use labelfile::{label_file, InputFormat, LabelStats};
pub use labels::{
    all_labels, label_entities, label_report, label_report_as, label_reports, label_reports_as,
    label_with, CHEXPERT_14, CHEXPERT_5, EXTRA_LABELS,
};
pub use lexicon::Lexicon;
pub use prompts::{disease_prompt, DiseasePrompts, PromptFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assertion {
    Present,
    Absent,
    Uncertain,
}

impl Assertion {
    /// CheXpert label value: 1, 0, -1.
    pub fn label_value(self) -> i8 {
        match self {
            Assertion::Present => 1,
            Assertion::Absent => 0,
            Assertion::Uncertain => -1,
        }
    }
}

/// How study labels are read from a report (docs/labeler-conventions.md).
///
/// - `Chexpert` (the default): CheXpert's labeler rules. Clinical syndromes and descriptors that
///   CheXpert counts feed the finding (vascular congestion and heart failure are edema, infection
///   is pneumonia) and a finding at the limit of normal ("borderline cardiomegaly", "heart size at
///   the upper limits of normal") is uncertain.
/// - `Strict`: naming-only labels. A finding is labelled only where the report names it, and a
///   borderline finding is present.
///
/// Both share everything else: negation and hedging, history, sections and context rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    #[default]
    Chexpert,
    Strict,
}

impl Convention {
    pub const ALL: [Convention; 2] = [Convention::Chexpert, Convention::Strict];

    pub fn name(self) -> &'static str {
        match self {
            Convention::Chexpert => "chexpert",
            Convention::Strict => "strict",
        }
    }

    /// The assertion of a finding stated at the limit of normal.
    pub fn borderline(self) -> Assertion {
        match self {
            Convention::Chexpert => Assertion::Uncertain,
            Convention::Strict => Assertion::Present,
        }
    }
}

impl std::fmt::Display for Convention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Convention {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Convention> {
        Convention::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| anyhow::anyhow!("unknown convention {s:?} (chexpert or strict)"))
    }
}

/// Why a mention feeds no study label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exclusion {
    /// It lies in a section about the request, not the image (INDICATION, HISTORY, COMPARISON).
    Section,
    /// History or etiology, not active disease ("history of pneumonia", "scarring from old
    /// infection").
    History,
    /// A context rule of the lexicon dropped it ("fractured sternal wire" is no bone fracture).
    Rule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityType {
    Finding,
    Anatomy,
    Device,
    /// Laterality, severity/size and change; the concept says which (`laterality:left`,
    /// `severity:small`, `change:new`).
    Modifier,
}

/// One lexicon mention in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
    /// `input[start..end]`, original case.
    pub text: String,
    /// Normalised concept (`pleural_effusion`, `endotracheal_tube`, `left_lower_lobe`, `severity:small`).
    pub concept: String,
    #[serde(rename = "type")]
    pub kind: EntityType,
    /// For findings and devices, whether the report asserts them. Anatomy and modifiers carry the
    /// assertion of their context (so "no left effusion" gives `laterality:left` absent too).
    pub assertion: Assertion,
    /// Set when the mention feeds no study label, saying why (absent from the JSON otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<Exclusion>,
}

/// For each entity, the indices of the word pieces that overlap it.
///
/// `token_offsets` are `(start, end)` offsets per token in the same unit as the entity offsets
/// (byte offsets; for ASCII text char and byte offsets coincide); `(0, 0)` marks special tokens,
/// which never match. Used by entity-driven masked language modelling.
pub fn entity_token_spans(
    entities: &[Entity],
    token_offsets: &[(usize, usize)],
) -> Vec<Vec<usize>> {
    entities
        .iter()
        .map(|e| {
            token_offsets
                .iter()
                .enumerate()
                .filter(|(_, &(s, t))| !(s == 0 && t == 0) && t > s && s < e.end && t > e.start)
                .map(|(i, _)| i)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_spans_overlap_and_skip_specials() {
        let text = "No left pneumothorax.";
        let ents = extract_entities(text);
        let ptx = ents.iter().find(|e| e.concept == "pneumothorax").unwrap();
        assert_eq!(&text[ptx.start..ptx.end], "pneumothorax");
        // [CLS] no left pneum ##oth ##orax . [SEP]
        let toks = [(0, 0), (0, 2), (3, 7), (8, 13), (13, 16), (16, 20), (20, 21), (0, 0)];
        let spans = entity_token_spans(std::slice::from_ref(ptx), &toks);
        assert_eq!(spans, vec![vec![3, 4, 5]]);
        let left = ents.iter().find(|e| e.concept == "laterality:left").unwrap();
        assert_eq!(entity_token_spans(std::slice::from_ref(left), &toks), vec![vec![2]]);
    }

    #[test]
    fn entity_serialises_kind_as_type() {
        let ents = extract_entities("Small left effusion.");
        let v = serde_json::to_value(&ents).unwrap();
        let eff =
            v.as_array().unwrap().iter().find(|e| e["concept"] == "pleural_effusion").unwrap();
        assert_eq!(eff["type"], "finding");
        assert_eq!(eff["assertion"], "present");
        assert_eq!(eff["text"], "effusion");
        assert_eq!(eff["start"], 11);
        assert_eq!(eff["end"], 19);
    }
}
