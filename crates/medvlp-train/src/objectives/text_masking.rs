//! Which report tokens to mask: random whole words (BERT whole-word masking) or the word pieces of
//! medical entities (EntMLM, XLIP), capped and topped up with random whole words.

use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;

/// Word pieces grouped by word (`word_ids` from the tokenizer; `None` = special or padding).
fn words(word_ids: &[Option<u32>]) -> Vec<Vec<usize>> {
    let mut by: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (t, w) in word_ids.iter().enumerate() {
        if let Some(w) = w {
            by.entry(*w).or_default().push(t);
        }
    }
    by.into_values().collect()
}

/// Random whole-word masking: whole words in random order until at least `ratio` of the real
/// tokens (at least one word) are masked. Returns sorted token positions.
pub fn whole_word_mask(word_ids: &[Option<u32>], ratio: f64, rng: &mut impl Rng) -> Vec<usize> {
    let mut ws = words(word_ids);
    let n_tokens: usize = ws.iter().map(|w| w.len()).sum();
    if n_tokens == 0 {
        return vec![];
    }
    let target = ((ratio * n_tokens as f64).round() as usize).max(1);
    ws.shuffle(rng);
    let mut out = vec![];
    for w in ws {
        if out.len() >= target {
            break;
        }
        out.extend(w);
    }
    out.sort_unstable();
    out
}

/// EntMLM: mask every word piece of entity spans (`entity_tokens[e]` = token positions of entity
/// e), in random entity order, without exceeding `max_ratio` of the real tokens; then, below
/// `min_ratio`, top up with random whole words. Returns sorted positions.
pub fn entity_mask(
    word_ids: &[Option<u32>],
    entity_tokens: &[Vec<usize>],
    max_ratio: f64,
    min_ratio: f64,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let ws = words(word_ids);
    let n_tokens: usize = ws.iter().map(|w| w.len()).sum();
    if n_tokens == 0 {
        return vec![];
    }
    let cap = ((max_ratio * n_tokens as f64).floor() as usize).max(1);
    let floor = ((min_ratio * n_tokens as f64).round() as usize).max(1).min(cap);
    let mut masked = vec![false; word_ids.len()];
    let mut count = 0;
    let mut ents: Vec<&Vec<usize>> = entity_tokens.iter().filter(|e| !e.is_empty()).collect();
    ents.shuffle(rng);
    for e in ents {
        let new: Vec<usize> = e
            .iter()
            .copied()
            .filter(|&t| t < masked.len() && !masked[t] && word_ids[t].is_some())
            .collect();
        if new.is_empty() || count + new.len() > cap {
            continue;
        }
        for t in new {
            masked[t] = true;
            count += 1;
        }
    }
    if count < floor {
        let mut rest: Vec<Vec<usize>> =
            ws.into_iter().filter(|w| w.iter().all(|&t| !masked[t])).collect();
        rest.shuffle(rng);
        for w in rest {
            if count >= floor || count + w.len() > cap {
                continue;
            }
            for t in w {
                masked[t] = true;
                count += 1;
            }
        }
    }
    (0..masked.len()).filter(|&t| masked[t]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    // [CLS] small left pleu ##ral effusion , no pneumo ##thorax . [SEP] [PAD]
    fn ids() -> Vec<Option<u32>> {
        vec![
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            Some(6),
            Some(6),
            Some(7),
            None,
            None,
        ]
    }

    #[test]
    fn whole_words_only_and_never_specials() {
        for seed in 0..30 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let m = whole_word_mask(&ids(), 0.3, &mut rng);
            assert!(m.len() >= 3, "{m:?}");
            assert!(!m.contains(&0) && !m.contains(&11) && !m.contains(&12));
            // a word piece is masked only with its whole word
            assert_eq!(m.contains(&3), m.contains(&4));
            assert_eq!(m.contains(&8), m.contains(&9));
        }
    }

    #[test]
    fn entity_masking_masks_entities_first_within_the_cap() {
        // entities: "pleural effusion" (3, 4, 5), "pneumothorax" (8, 9), "left" (2)
        let ents = vec![vec![3, 4, 5], vec![8, 9], vec![2]];
        for seed in 0..30 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            // cap 0.7 of 10 tokens = 7: all 6 entity pieces fit; no top-up needed above 0.15
            let m = entity_mask(&ids(), &ents, 0.7, 0.15, &mut rng);
            assert_eq!(m, vec![2, 3, 4, 5, 8, 9]);
        }
        // a tight cap keeps whole entities only
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let m = entity_mask(&ids(), &ents, 0.3, 0.15, &mut rng);
        assert!(m.len() <= 3);
        for e in &ents {
            let n = e.iter().filter(|t| m.contains(t)).count();
            assert!(n == 0 || n == e.len(), "partial entity {e:?} in {m:?}");
        }
        // no entities: topped up with random whole words to the floor
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let m = entity_mask(&ids(), &[], 0.5, 0.3, &mut rng);
        assert!(m.len() >= 3 && m.len() <= 5, "{m:?}");
        assert_eq!(m.contains(&3), m.contains(&4));
    }
}
