//! Radiology report text: entity extraction with assertion (present / absent / uncertain),
//! CheXpert-style study labels, and prompt files.
//!
//! - [`lexicon`]: the versioned lexicon (`data/lexicon.toml`, embedded).
//! - [`extract`]: the compiled matcher and [`extract_entities`].
//! - [`assertion`]: NegEx-style assertion resolution.
//! - [`labels`]: [`label_report`], [`CHEXPERT_14`], [`EXTRA_LABELS`].
//! - [`prompts`]: zero-shot prompt files and [`disease_prompt`].
//!
//! Offsets are byte offsets into the input text. Matching is done on an ASCII-lowercased copy,
//! which keeps byte offsets identical to the input (non-ASCII bytes are left as they are).

pub mod assertion;
pub mod extract;
pub mod labelfile;
pub mod labels;
pub mod lexicon;
pub mod prompts;

use serde::{Deserialize, Serialize};

pub use extract::{extract_entities, Extractor};
pub use labelfile::{label_file, InputFormat, LabelStats};
pub use labels::{
    all_labels, label_entities, label_report, label_reports, label_with, CHEXPERT_14, CHEXPERT_5,
    EXTRA_LABELS,
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
