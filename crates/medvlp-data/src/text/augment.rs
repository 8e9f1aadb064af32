//! Report-level text augmentation for pre-training: sentence shuffling (BioViL, Boecking et al.
//! 2022, arXiv 2204.09817) and sentence sampling (ConVIRT, Zhang et al. 2020, arXiv 2010.00747,
//! samples one sentence; here a random non-empty subset).
//!
//! A text encoder trained only on whole reports meets a zero-shot prompt ("pulmonary edema",
//! "no pulmonary edema") as a text unlike anything it saw: a few tokens, no report around them,
//! the finding at the first positions. Without augmentation the quickstart's XLIP ranked edema
//! by its prompt pair at AUROC 0.29-0.38 in two of three seeds, while a prototype of its own report
//! embeddings ranked it at 0.98 (docs/zero-shot-prompts.md). Shuffled and sampled reports put
//! finding sentences at the start and in short texts.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How a training report is augmented. Both probabilities 0 leave texts unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TextAugment {
    /// Probability that the sentences are put in a random order.
    pub sentence_shuffle: f64,
    /// Probability that the text is cut to a random non-empty subset of its sentences (each kept
    /// with probability 1/2).
    pub sentence_sample: f64,
}

impl TextAugment {
    pub fn is_identity(&self) -> bool {
        self.sentence_shuffle <= 0.0 && self.sentence_sample <= 0.0
    }

    /// The augmented text; the same text and seed always give the same result. A text of one
    /// sentence comes back as it is.
    pub fn apply(&self, text: &str, seed: u64) -> String {
        if self.is_identity() {
            return text.to_string();
        }
        let mut s = sentences(text);
        if s.len() < 2 {
            return text.to_string();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        if rng.random_bool(self.sentence_sample.clamp(0.0, 1.0)) {
            let kept: Vec<&str> = s.iter().filter(|_| rng.random_bool(0.5)).copied().collect();
            s = if kept.is_empty() { vec![s[rng.random_range(0..s.len())]] } else { kept };
        }
        if rng.random_bool(self.sentence_shuffle.clamp(0.0, 1.0)) {
            s.shuffle(&mut rng);
        }
        s.join(" ")
    }
}

/// Sentences of a report: split after `.`, `!` or `?` followed by whitespace, and at line breaks;
/// trimmed, empty pieces dropped. A decimal point ("1.5 cm") does not split. Abbreviations do
/// ("Dr. X"), which only matters to augmentation, where a rare extra cut is harmless.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut start = 0;
    let b = text.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        let end_here = match c {
            b'\n' | b'\r' => true,
            b'.' | b'!' | b'?' => b.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()),
            _ => false,
        };
        if end_here {
            // Byte i is ASCII, so i + 1 is a char boundary.
            let piece = text[start..=i].trim();
            if !piece.is_empty() {
                out.push(piece);
            }
            start = i + 1;
        }
    }
    let piece = text[start..].trim();
    if !piece.is_empty() {
        out.push(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str =
        "The heart is normal in size. There is no pleural effusion or pneumothorax. \
        A 1.5 cm nodule is seen.\n\nNo acute cardiopulmonary abnormality.";

    #[test]
    fn splits_sentences_not_decimals() {
        assert_eq!(
            sentences(REPORT),
            vec![
                "The heart is normal in size.",
                "There is no pleural effusion or pneumothorax.",
                "A 1.5 cm nodule is seen.",
                "No acute cardiopulmonary abnormality."
            ]
        );
        assert_eq!(sentences("No findings"), vec!["No findings"]);
        assert!(sentences(" \n ").is_empty());
        // MIMIC's de-identification and IU's are ordinary text.
        assert_eq!(sentences("Seen by ___. XXXX opacity."), vec!["Seen by ___.", "XXXX opacity."]);
    }

    #[test]
    fn identity_and_single_sentence_are_unchanged() {
        assert_eq!(TextAugment::default().apply(REPORT, 3), REPORT);
        let a = TextAugment { sentence_shuffle: 1.0, sentence_sample: 1.0 };
        assert_eq!(a.apply("Mild pulmonary edema.", 3), "Mild pulmonary edema.");
    }

    #[test]
    fn shuffle_and_sample_keep_whole_sentences_deterministically() {
        let all = sentences(REPORT);
        let shuffle = TextAugment { sentence_shuffle: 1.0, sentence_sample: 0.0 };
        let sample = TextAugment { sentence_shuffle: 0.0, sentence_sample: 1.0 };
        let (mut reordered, mut shorter) = (false, false);
        for seed in 0..64 {
            let t = shuffle.apply(REPORT, seed);
            assert_eq!(t, shuffle.apply(REPORT, seed));
            let mut got = sentences(&t);
            reordered |= got != all;
            got.sort();
            let mut want = all.clone();
            want.sort();
            assert_eq!(got, want, "shuffling keeps every sentence once");

            let t = sample.apply(REPORT, seed);
            let got = sentences(&t);
            assert!(!got.is_empty());
            shorter |= got.len() < all.len();
            // Sampling keeps the report's order.
            let pos: Vec<usize> =
                got.iter().map(|g| all.iter().position(|a| a == g).unwrap()).collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "{t:?}");
        }
        assert!(reordered && shorter);
    }
}
