//! NegEx-style assertion: a finding is absent, uncertain or present depending on the nearest
//! trigger whose scope covers it.
//!
//! - Pre-triggers ("no", "without", "no evidence of", "possible", "concerning for") cover the
//!   following words up to a termination term ("but", "however", "which", ...) or the clause end,
//!   at most [`PRE_NEG_WINDOW`] / [`PRE_UNC_WINDOW`] words away.
//! - Post-triggers ("is not seen", "has resolved", "cannot be excluded") cover the preceding
//!   [`POST_WINDOW`] words of the clause.
//! - Pseudo-triggers ("no change in", "no increase") look like negations but assert presence:
//!   "no change in the small left effusion" is a present effusion.
//! - When several triggers apply, the nearest one wins ("no effusion; possibly atelectasis").
//!
//! Clauses end at sentence punctuation, semicolons, colons (headers such as `IMPRESSION:`), and
//! line breaks that start a list item, a header or a new paragraph (a plain wrapped line does not
//! end a clause: MIMIC reports are hard-wrapped).

use super::extract::is_word;
use super::Assertion;

pub const PRE_NEG_WINDOW: usize = 14;
pub const PRE_UNC_WINDOW: usize = 8;
pub const PSEUDO_WINDOW: usize = 8;
pub const POST_WINDOW: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    NegPre,
    NegPost,
    UncPre,
    UncPost,
    Pseudo,
    Termination,
}

#[derive(Debug, Clone, Copy)]
pub struct TriggerHit {
    pub start: usize,
    pub end: usize,
    pub kind: TriggerKind,
}

/// Clause boundaries and word positions of one report.
pub struct Scope {
    /// Byte offsets where a new clause starts (sorted).
    breaks: Vec<usize>,
    /// Byte offsets where a word starts (sorted).
    word_starts: Vec<usize>,
}

impl Scope {
    /// `text` is the original (not lowercased) text: header detection looks at capitals.
    pub fn new(text: &[u8]) -> Scope {
        let n = text.len();
        let mut breaks = Vec::new();
        let mut word_starts = Vec::new();
        for i in 0..n {
            let c = text[i];
            if is_word(c) && (i == 0 || !is_word(text[i - 1])) {
                word_starts.push(i);
            }
            let next_ws = i + 1 >= n || text[i + 1].is_ascii_whitespace();
            match c {
                b'.' | b'!' if next_ws && !abbreviation_before(text, i) => breaks.push(i + 1),
                b';' => breaks.push(i + 1),
                b':' if next_ws => breaks.push(i + 1),
                b'\n' if newline_breaks(text, i) => breaks.push(i + 1),
                _ => {}
            }
        }
        Scope { breaks, word_starts }
    }

    fn clause_of(&self, pos: usize) -> usize {
        self.breaks.partition_point(|&b| b <= pos)
    }

    /// Whether byte offsets `a <= b` lie in the same clause.
    pub fn same_sentence(&self, a: usize, b: usize) -> bool {
        // No clause break in (a, b].
        self.clause_of(a) == self.clause_of(b)
    }

    /// Number of words starting in `[a, b)`.
    pub fn words_between(&self, a: usize, b: usize) -> usize {
        if b <= a {
            return 0;
        }
        self.word_starts.partition_point(|&w| w < b) - self.word_starts.partition_point(|&w| w < a)
    }

    /// Clause index of a position (for callers grouping by clause).
    pub fn clause(&self, pos: usize) -> usize {
        self.clause_of(pos)
    }

    /// The smallest `x` with `words_between(x, s) <= w` and `x` in the clause of `s`: a trigger
    /// before `s` can apply only if it ends at or after this.
    fn reach_before(&self, s: usize, w: usize) -> usize {
        let k = self.word_starts.partition_point(|&x| x < s);
        let by_words = if k > w { self.word_starts[k - w - 1] + 1 } else { 0 };
        let c = self.clause_of(s);
        let clause_start = if c > 0 { self.breaks[c - 1] } else { 0 };
        by_words.max(clause_start)
    }

    /// The largest `x` with `words_between(e, x) <= w` and `x` in the clause of `e`: a trigger
    /// after `e` can apply only if it starts at or before this.
    fn reach_after(&self, e: usize, w: usize) -> usize {
        let m = self.word_starts.partition_point(|&x| x < e);
        let by_words = self.word_starts.get(m + w).copied().unwrap_or(usize::MAX);
        let clause_end = self.breaks.get(self.clause_of(e)).map_or(usize::MAX, |&b| b - 1);
        by_words.min(clause_end)
    }
}

/// The triggers (sorted by start, non-overlapping, as the extractor finds them) that lie in
/// `[a, b)` or overlap it: a binary search instead of a scan, so that labelling stays linear in
/// the report's length.
fn between(triggers: &[TriggerHit], a: usize, b: usize) -> &[TriggerHit] {
    let lo = triggers.partition_point(|t| t.end <= a);
    let hi = lo + triggers[lo..].partition_point(|t| t.start < b);
    &triggers[lo..hi]
}

fn abbreviation_before(text: &[u8], dot: usize) -> bool {
    let mut s = dot;
    while s > 0 && (text[s - 1].is_ascii_alphabetic() || text[s - 1] == b'.') {
        s -= 1;
    }
    let w = text[s..dot].to_ascii_lowercase();
    matches!(
        w.as_slice(),
        b"vs" | b"dr" | b"e.g" | b"i.e" | b"approx" | b"mr" | b"ms" | b"st" | b"cf"
    )
}

/// A line break ends a clause when the next line is blank, a list item or a header, or when the
/// line it ends is a header.
fn newline_breaks(text: &[u8], nl: usize) -> bool {
    let mut j = nl + 1;
    while j < text.len() && (text[j] == b' ' || text[j] == b'\t' || text[j] == b'\r') {
        j += 1;
    }
    if j >= text.len() {
        return true;
    }
    let c = text[j];
    if c == b'\n' || c == b'-' || c == b'*' || c == 0xE2
    /* bullet "•" */
    {
        return true;
    }
    if c.is_ascii_digit() {
        let mut k = j;
        while k < text.len() && text[k].is_ascii_digit() {
            k += 1;
        }
        if k < text.len() && (text[k] == b'.' || text[k] == b')') {
            return true;
        }
    }
    // Next line starts with an upper-case header ("IMPRESSION", "FINDINGS:").
    let line_end = text[j..].iter().position(|&b| b == b'\n').map_or(text.len(), |p| j + p);
    let next = &text[j..line_end];
    let head: Vec<u8> =
        next.iter().take_while(|b| b.is_ascii_alphabetic() || **b == b' ').copied().collect();
    let caps = |s: &[u8]| {
        s.iter().filter(|b| b.is_ascii_alphabetic()).count() >= 4
            && s.iter().all(|b| !b.is_ascii_lowercase())
    };
    if caps(&head) {
        return true;
    }
    // The line that ends here is a header.
    let line_start = text[..nl].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let this = text[line_start..nl].trim_ascii();
    let this = this.strip_suffix(b":").unwrap_or(this);
    caps(this) && this.iter().all(|b| b.is_ascii_alphabetic() || *b == b' ')
}

/// Whether a termination term lies in `[a, b)`.
pub fn terminated(triggers: &[TriggerHit], a: usize, b: usize) -> bool {
    between(triggers, a, b)
        .iter()
        .any(|t| t.kind == TriggerKind::Termination && t.start >= a && t.end <= b)
}

fn value(kind: TriggerKind) -> Option<Assertion> {
    match kind {
        TriggerKind::NegPre | TriggerKind::NegPost => Some(Assertion::Absent),
        TriggerKind::UncPre | TriggerKind::UncPost => Some(Assertion::Uncertain),
        TriggerKind::Pseudo => Some(Assertion::Present),
        TriggerKind::Termination => None,
    }
}

/// The assertion of a non-termination trigger lying inside `[s, e)` (for composite findings such
/// as "heart size is not significantly enlarged"), the first one found.
pub fn inside(triggers: &[TriggerHit], s: usize, e: usize) -> Option<Assertion> {
    between(triggers, s, e)
        .iter()
        .filter(|t| t.start >= s && t.end <= e)
        .find_map(|t| value(t.kind))
}

/// Assertion of the mention `[s, e)` given the report's triggers.
pub fn resolve(scope: &Scope, triggers: &[TriggerHit], s: usize, e: usize) -> Assertion {
    let mut best: Option<(usize, Assertion)> = None;
    // Only triggers within the largest window of the mention's clause can apply.
    let pre = PRE_NEG_WINDOW.max(PRE_UNC_WINDOW).max(PSEUDO_WINDOW);
    let (lo, hi) = (scope.reach_before(s, pre), scope.reach_after(e, POST_WINDOW));
    // `between` keeps triggers ending after its start and starting before its end.
    for t in between(triggers, lo.saturating_sub(1), hi.saturating_add(1)) {
        let Some(v) = value(t.kind) else { continue };
        let dist = if t.end <= s {
            let window = match t.kind {
                TriggerKind::NegPre => PRE_NEG_WINDOW,
                TriggerKind::UncPre => PRE_UNC_WINDOW,
                TriggerKind::Pseudo => PSEUDO_WINDOW,
                _ => continue,
            };
            if !scope.same_sentence(t.end, s)
                || scope.words_between(t.end, s) > window
                || terminated(triggers, t.end, s)
            {
                continue;
            }
            s - t.end
        } else if t.start >= e {
            if !matches!(t.kind, TriggerKind::NegPost | TriggerKind::UncPost) {
                continue;
            }
            if !scope.same_sentence(e, t.start)
                || scope.words_between(e, t.start) > POST_WINDOW
                || terminated(triggers, e, t.start)
            {
                continue;
            }
            t.start - e
        } else {
            continue;
        };
        if best.is_none_or(|(d, _)| dist < d) {
            best = Some((dist, v));
        }
    }
    best.map_or(Assertion::Present, |(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses() {
        let t =
            b"No effusion. Small 1.5 cm nodule; vs. mass\nwrapped line\n\nIMPRESSION: ok\n- item";
        let s = Scope::new(t);
        let pos = |w: &str| t.windows(w.len()).position(|x| x == w.as_bytes()).unwrap();
        assert!(!s.same_sentence(pos("No"), pos("Small")));
        assert!(s.same_sentence(pos("Small"), pos("nodule")), "decimal point is not a break");
        assert!(!s.same_sentence(pos("nodule"), pos("mass")), "semicolon breaks");
        assert!(s.same_sentence(pos("vs."), pos("mass")), "vs. is an abbreviation");
        assert!(s.same_sentence(pos("mass"), pos("wrapped")), "a wrapped line continues");
        assert!(!s.same_sentence(pos("wrapped"), pos("IMPRESSION")));
        assert!(!s.same_sentence(pos("IMPRESSION"), pos("ok")));
        assert!(!s.same_sentence(pos("ok"), pos("item")));
        assert_eq!(s.words_between(0, pos("Small")), 2);
    }

    /// The definition `resolve` had before it looked only at the mention's window: every trigger
    /// of the report, each checked in full.
    fn resolve_by_scan(scope: &Scope, triggers: &[TriggerHit], s: usize, e: usize) -> Assertion {
        let terminated = |a: usize, b: usize| {
            triggers
                .iter()
                .any(|t| t.kind == TriggerKind::Termination && t.start >= a && t.end <= b)
        };
        let mut best: Option<(usize, Assertion)> = None;
        for t in triggers {
            let Some(v) = value(t.kind) else { continue };
            let dist = if t.end <= s {
                let window = match t.kind {
                    TriggerKind::NegPre => PRE_NEG_WINDOW,
                    TriggerKind::UncPre => PRE_UNC_WINDOW,
                    TriggerKind::Pseudo => PSEUDO_WINDOW,
                    _ => continue,
                };
                if !scope.same_sentence(t.end, s)
                    || scope.words_between(t.end, s) > window
                    || terminated(t.end, s)
                {
                    continue;
                }
                s - t.end
            } else if t.start >= e {
                if !matches!(t.kind, TriggerKind::NegPost | TriggerKind::UncPost)
                    || !scope.same_sentence(e, t.start)
                    || scope.words_between(e, t.start) > POST_WINDOW
                    || terminated(e, t.start)
                {
                    continue;
                }
                t.start - e
            } else {
                continue;
            };
            if best.is_none_or(|(d, _)| dist < d) {
                best = Some((dist, v));
            }
        }
        best.map_or(Assertion::Present, |(_, a)| a)
    }

    #[test]
    fn windowed_resolution_equals_the_full_scan() {
        use rand::{Rng, SeedableRng};
        let kinds = [
            TriggerKind::NegPre,
            TriggerKind::NegPost,
            TriggerKind::UncPre,
            TriggerKind::UncPost,
            TriggerKind::Pseudo,
            TriggerKind::Termination,
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..50 {
            // Words of 1-3 letters, with sentence and clause breaks and line breaks.
            let mut text = Vec::new();
            let mut words = vec![];
            for _ in 0..400 {
                let start = text.len();
                for _ in 0..rng.random_range(1..4) {
                    text.push(b'a' + rng.random_range(0..26u8));
                }
                words.push((start, text.len()));
                text.extend_from_slice(match rng.random_range(0..12) {
                    0 => &b". "[..],
                    1 => b"; ",
                    2 => b"\n\n",
                    _ => b" ",
                });
            }
            let scope = Scope::new(&text);
            // Triggers on a third of the words, sorted and non-overlapping as the extractor's.
            let mut triggers: Vec<TriggerHit> = vec![];
            for &(start, end) in &words {
                if rng.random_range(0..3) == 0 {
                    triggers.push(TriggerHit { start, end, kind: kinds[rng.random_range(0..6)] });
                }
            }
            for &(s, e) in &words {
                assert_eq!(
                    resolve(&scope, &triggers, s, e),
                    resolve_by_scan(&scope, &triggers, s, e),
                    "mention at {s}..{e}"
                );
            }
        }
    }
}
