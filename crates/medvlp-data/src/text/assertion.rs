//! NegEx-style assertion: a finding is absent, uncertain or present depending on the nearest
//! trigger whose scope covers it.
//!
//! - Pre-triggers ("no", "without", "no evidence of", "possible", "concerning for") cover the
//!   following words up to a termination term ("but", "however", "which", "there is", ...) or the
//!   clause end, at most [`PRE_NEG_WINDOW`] / [`PRE_UNC_WINDOW`] words away.
//! - Post-triggers ("is not seen", "has resolved", "cannot be excluded", "appear within normal
//!   limits") cover the preceding [`POST_WINDOW`] words of the clause.
//! - Pseudo-triggers ("no change in", "no increase") look like negations but assert presence:
//!   "no change in the small left effusion" is a present effusion.
//! - Links ("to suggest", "consistent with", "typical findings of") pass on the negation or hedge
//!   that covers them, when no comma or termination lies between: "no focal opacity to suggest
//!   pneumonia" is an absent pneumonia, "possible opacity consistent with pneumonia" an uncertain
//!   one; otherwise they carry their own value ("opacity to suggest pneumonia" is uncertain,
//!   "opacity consistent with pneumonia" present). Links are resolved once per report, left to
//!   right ([`resolve_links`]).
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
    /// Before the finding: negation (`Absent`), hedge (`Uncertain`) or pseudo-negation
    /// (`Present`).
    Pre(Assertion),
    /// After the finding.
    Post(Assertion),
    /// A link before the finding with its own value; [`resolve_links`] replaces it with the
    /// value of the negation or hedge it passes on.
    Link(Assertion),
    /// Ends a trigger's scope and separates an anatomy word from its state word.
    Termination,
    /// Ends a trigger's scope only.
    SoftTermination,
}

impl TriggerKind {
    fn is_termination(self) -> bool {
        matches!(self, TriggerKind::Termination | TriggerKind::SoftTermination)
    }

    /// How many words after its end a trigger before a finding reaches.
    fn pre_window(self) -> Option<usize> {
        match self {
            TriggerKind::Pre(Assertion::Absent) => Some(PRE_NEG_WINDOW),
            TriggerKind::Pre(Assertion::Uncertain) | TriggerKind::Link(_) => Some(PRE_UNC_WINDOW),
            TriggerKind::Pre(Assertion::Present) => Some(PSEUDO_WINDOW),
            _ => None,
        }
    }
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
    /// Byte offsets of commas (sorted).
    commas: Vec<usize>,
    /// Byte offsets of colons (sorted).
    colons: Vec<usize>,
    /// Byte offsets of line breaks followed by a blank line (sorted).
    blank_lines: Vec<usize>,
}

impl Scope {
    /// `text` is the original (not lowercased) text: header detection looks at capitals.
    pub fn new(text: &[u8]) -> Scope {
        let n = text.len();
        let mut breaks = Vec::new();
        // About one word per 6 bytes of report text: one allocation instead of a dozen.
        let mut word_starts = Vec::with_capacity(n / 5 + 1);
        let mut commas = Vec::new();
        let mut colons = Vec::new();
        let mut blank_lines = Vec::new();
        let next_ws = |i: usize| i + 1 >= n || text[i + 1].is_ascii_whitespace();
        let mut prev_word = false;
        for (i, &c) in text.iter().enumerate() {
            let word = is_word(c);
            if word {
                if !prev_word {
                    word_starts.push(i);
                }
            } else {
                match c {
                    b'.' | b'!' if next_ws(i) && !abbreviation_before(text, i) => {
                        breaks.push(i + 1)
                    }
                    b';' => breaks.push(i + 1),
                    b',' => commas.push(i),
                    b':' => {
                        colons.push(i);
                        if next_ws(i) {
                            breaks.push(i + 1);
                        }
                    }
                    b'\n' => {
                        if newline_breaks(text, i) {
                            breaks.push(i + 1);
                        }
                        let rest = &text[i + 1..];
                        let j = rest.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r'));
                        if j.is_some_and(|j| rest[j] == b'\n') {
                            blank_lines.push(i);
                        }
                    }
                    _ => {}
                }
            }
            prev_word = word;
        }
        Scope { breaks, word_starts, commas, colons, blank_lines }
    }

    /// Byte offsets of the text's colons.
    pub fn colons(&self) -> &[usize] {
        &self.colons
    }

    /// Whether a comma lies in `[a, b)`.
    pub fn comma_between(&self, a: usize, b: usize) -> bool {
        let i = self.commas.partition_point(|&c| c < a);
        self.commas.get(i).is_some_and(|&c| c < b)
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

    /// The first line break in `[a, b)` that a blank line follows.
    pub fn blank_line_between(&self, a: usize, b: usize) -> Option<usize> {
        let i = self.blank_lines.partition_point(|&x| x < a);
        self.blank_lines.get(i).copied().filter(|&x| x < b)
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
    let w = &text[s..dot];
    w.len() <= 6
        && [&b"vs"[..], b"dr", b"e.g", b"i.e", b"approx", b"mr", b"ms", b"st", b"cf"]
            .iter()
            .any(|a| a.eq_ignore_ascii_case(w))
}

/// A line break ends a clause when the next line is blank, a list item or a header, or when the
/// line it ends is a header. Looks at as few bytes as it can: a line that starts with a capital
/// and then a lowercase letter is decided at its second letter.
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
    // Next line starts with an upper-case header ("IMPRESSION", "FINDINGS:"): its leading letters
    // and spaces hold 4 capitals or more and no lowercase letter.
    let mut capitals = 0;
    for &b in &text[j..] {
        if b.is_ascii_lowercase() {
            capitals = 0;
            break;
        } else if b.is_ascii_uppercase() {
            capitals += 1;
        } else if b != b' ' {
            break;
        }
    }
    if capitals >= 4 {
        return true;
    }
    // The line that ends here is a header: after trimming and one trailing colon, only capitals
    // and spaces, 4 capitals or more.
    let mut k = nl;
    while k > 0 && text[k - 1] != b'\n' && text[k - 1].is_ascii_whitespace() {
        k -= 1;
    }
    if k > 0 && text[k - 1] == b':' {
        k -= 1;
    }
    let mut capitals = 0;
    while k > 0 && text[k - 1] != b'\n' {
        let b = text[k - 1];
        if b.is_ascii_uppercase() {
            capitals += 1;
        } else if b.is_ascii_whitespace() && b != b' ' {
            // Only leading whitespace may be other than a space.
            return capitals >= 4
                && text[..k - 1]
                    .iter()
                    .rev()
                    .take_while(|&&x| x != b'\n')
                    .all(|x| x.is_ascii_whitespace());
        } else if b != b' ' {
            return false;
        }
        k -= 1;
    }
    capitals >= 4
}

/// Whether a termination term (hard or soft) lies in `[a, b)`: the end of a trigger's scope.
pub fn terminated(triggers: &[TriggerHit], a: usize, b: usize) -> bool {
    between(triggers, a, b).iter().any(|t| t.kind.is_termination() && t.start >= a && t.end <= b)
}

/// Whether a hard termination term ("but", "however", "which") lies in `[a, b)`: what separates
/// an anatomy word from a state word, or a link from the negation before it.
pub fn hard_terminated(triggers: &[TriggerHit], a: usize, b: usize) -> bool {
    between(triggers, a, b)
        .iter()
        .any(|t| t.kind == TriggerKind::Termination && t.start >= a && t.end <= b)
}

fn value(kind: TriggerKind) -> Option<Assertion> {
    match kind {
        TriggerKind::Pre(a) | TriggerKind::Post(a) | TriggerKind::Link(a) => Some(a),
        TriggerKind::Termination | TriggerKind::SoftTermination => None,
    }
}

/// Whether a trigger lies strictly within `[s, e)`.
pub fn any_inside(
    triggers: &[TriggerHit],
    s: usize,
    e: usize,
    f: impl Fn(TriggerKind) -> bool,
) -> bool {
    between(triggers, s, e).iter().any(|t| t.start >= s && t.end <= e && f(t.kind))
}

/// The assertion of a non-termination trigger lying inside `[s, e)` (for composite findings such
/// as "heart size is not significantly enlarged"), the first one found.
pub fn inside(triggers: &[TriggerHit], s: usize, e: usize) -> Option<Assertion> {
    between(triggers, s, e)
        .iter()
        .filter(|t| t.start >= s && t.end <= e)
        .find_map(|t| value(t.kind))
}

/// Replaces each link's value with that of the negation or hedge it passes on: the nearest
/// trigger before it that reaches it (a negation or hedge before a finding, or an earlier link)
/// with no comma and no hard termination in between. A pseudo-negation passes nothing on. Links
/// are resolved left to right, so a chain of links passes a negation along.
pub fn resolve_links(scope: &Scope, triggers: &mut [TriggerHit]) {
    for i in 0..triggers.len() {
        if !matches!(triggers[i].kind, TriggerKind::Link(_)) {
            continue;
        }
        let l = triggers[i];
        let lo = scope.reach_before(l.start, PRE_NEG_WINDOW);
        let first = triggers[..i].partition_point(|t| t.end <= lo.saturating_sub(1));
        let mut inherited = None;
        for t in triggers[first..i].iter().rev() {
            if t.end > l.start {
                continue;
            }
            if t.kind == TriggerKind::Termination || scope.comma_between(t.end, l.start) {
                break;
            }
            let Some(window) = t.kind.pre_window() else { continue };
            if !scope.same_sentence(t.end, l.start) || scope.words_between(t.end, l.start) > window
            {
                continue;
            }
            inherited = value(t.kind);
            break;
        }
        if let Some(v @ (Assertion::Absent | Assertion::Uncertain)) = inherited {
            triggers[i].kind = TriggerKind::Link(v);
        }
    }
}

/// Assertion of the mention `[s, e)` given the report's triggers (links resolved): the nearest
/// trigger that reaches it. Looks outwards from the mention and stops at the first termination
/// on each side, so each mention costs the triggers within its windows, not the report's.
pub fn resolve(scope: &Scope, triggers: &[TriggerHit], s: usize, e: usize) -> Assertion {
    let mut best: Option<(usize, Assertion)> = None;
    // Only triggers within the largest window of the mention's clause can apply.
    let pre = PRE_NEG_WINDOW.max(PRE_UNC_WINDOW).max(PSEUDO_WINDOW);
    let (lo, hi) = (scope.reach_before(s, pre), scope.reach_after(e, POST_WINDOW));
    let before = triggers.partition_point(|t| t.end <= s);
    for t in triggers[..before].iter().rev() {
        if t.end < lo || t.kind.is_termination() {
            break;
        }
        let (Some(v), Some(window)) = (value(t.kind), t.kind.pre_window()) else { continue };
        if scope.same_sentence(t.end, s) && scope.words_between(t.end, s) <= window {
            best = Some((s - t.end, v));
            break;
        }
    }
    let after = triggers.partition_point(|t| t.start < e);
    for t in &triggers[after..] {
        if t.start > hi || t.kind.is_termination() {
            break;
        }
        let TriggerKind::Post(v) = t.kind else { continue };
        if scope.same_sentence(e, t.start) && scope.words_between(e, t.start) <= POST_WINDOW {
            if best.is_none_or(|(d, _)| t.start - e < d) {
                best = Some((t.start - e, v));
            }
            break;
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
            triggers.iter().any(|t| t.kind.is_termination() && t.start >= a && t.end <= b)
        };
        let mut best: Option<(usize, Assertion)> = None;
        for t in triggers {
            let Some(v) = value(t.kind) else { continue };
            let dist = if t.end <= s {
                let window = match t.kind {
                    TriggerKind::Pre(Assertion::Absent) => PRE_NEG_WINDOW,
                    TriggerKind::Pre(Assertion::Uncertain) | TriggerKind::Link(_) => PRE_UNC_WINDOW,
                    TriggerKind::Pre(Assertion::Present) => PSEUDO_WINDOW,
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
                if !matches!(t.kind, TriggerKind::Post(_))
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

    /// `resolve_links` by its definition: every earlier trigger, nearest first.
    fn resolve_links_by_scan(scope: &Scope, triggers: &mut [TriggerHit]) {
        for i in 0..triggers.len() {
            let TriggerKind::Link(_) = triggers[i].kind else { continue };
            let l = triggers[i];
            for j in (0..i).rev() {
                let t = triggers[j];
                if t.kind == TriggerKind::Termination || scope.comma_between(t.end, l.start) {
                    break;
                }
                let Some(w) = t.kind.pre_window() else { continue };
                if !scope.same_sentence(t.end, l.start) || scope.words_between(t.end, l.start) > w {
                    continue;
                }
                if let Some(v @ (Assertion::Absent | Assertion::Uncertain)) = value(t.kind) {
                    triggers[i].kind = TriggerKind::Link(v);
                }
                break;
            }
        }
    }

    /// `newline_breaks` as it was first written (collects the next line's head, scans both lines).
    fn newline_breaks_reference(text: &[u8], nl: usize) -> bool {
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

    #[test]
    fn newline_breaks_equals_its_first_definition() {
        use rand::{Rng, SeedableRng};
        let alphabet = b"aZ IMPRESSION:\n\t\r1.-*bx";
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..20_000 {
            let n = rng.random_range(1..40);
            let t: Vec<u8> =
                (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            for (i, _) in t.iter().enumerate().filter(|(_, &b)| b == b'\n') {
                assert_eq!(
                    newline_breaks(&t, i),
                    newline_breaks_reference(&t, i),
                    "{:?} at {i}",
                    String::from_utf8_lossy(&t)
                );
            }
        }
    }

    #[test]
    fn windowed_resolution_equals_the_full_scan() {
        use rand::{Rng, SeedableRng};
        let kinds = [
            TriggerKind::Pre(Assertion::Absent),
            TriggerKind::Post(Assertion::Absent),
            TriggerKind::Pre(Assertion::Uncertain),
            TriggerKind::Post(Assertion::Uncertain),
            TriggerKind::Pre(Assertion::Present),
            TriggerKind::Post(Assertion::Present),
            TriggerKind::Link(Assertion::Uncertain),
            TriggerKind::Termination,
            TriggerKind::SoftTermination,
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
                    3 => b", ",
                    _ => b" ",
                });
            }
            let scope = Scope::new(&text);
            // Triggers on a third of the words, sorted and non-overlapping as the extractor's.
            let mut triggers: Vec<TriggerHit> = vec![];
            for &(start, end) in &words {
                if rng.random_range(0..3) == 0 {
                    let kind = kinds[rng.random_range(0..kinds.len())];
                    triggers.push(TriggerHit { start, end, kind });
                }
            }
            let mut scanned = triggers.clone();
            resolve_links_by_scan(&scope, &mut scanned);
            resolve_links(&scope, &mut triggers);
            assert_eq!(format!("{scanned:?}"), format!("{triggers:?}"), "links");
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
