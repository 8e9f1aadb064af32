//! Entity extraction: the lexicon compiled into one Aho-Corasick automaton over ASCII-lowercased
//! text, word-boundary filtering, leftmost-longest selection, clause splitting, assertion, context
//! rules and report sections.
//!
//! Everything is found in one pass of the automaton; assertion, rules and sections then look only
//! at the hits within a mention's clause and word windows (binary searches over sorted hits), so
//! that labelling stays linear in the report's length.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};
use anyhow::{bail, Context, Result};

use super::assertion::{self, Scope, TriggerHit, TriggerKind};
use super::labels::all_labels;
use super::lexicon::{Lexicon, RuleEffect, Side};
use super::{Assertion, Convention, Entity, EntityType, Exclusion};

/// What a matched lexicon string means. One string can have several roles ("stable" is a change
/// modifier and a scope terminator; "calcified" a finding and the context of a rule).
#[derive(Debug, Clone, Copy)]
enum Role {
    Entity(u32),
    Trigger(TriggerKind),
    State {
        composite: u32,
        assertion: Assertion,
    },
    /// A context term of rule `n`.
    Context(u32),
    /// Occupies its words so that no shorter trigger matches inside it.
    Neutral,
}

#[derive(Debug, Clone)]
struct ConceptInfo {
    name: String,
    kind: EntityType,
    fixed: Option<Assertion>,
    /// Rules reading this concept, in lexicon order.
    rules: Vec<u32>,
    /// Rules for which a mention of this concept is context.
    near_of: Vec<u32>,
}

#[derive(Debug, Clone)]
struct CompositeInfo {
    concept: String,
    anatomy: Vec<u32>,
    after: usize,
    before: usize,
    rules: Vec<u32>,
}

#[derive(Debug, Clone)]
struct RuleInfo {
    side: Side,
    window: usize,
    /// Concept ids whose mentions are context.
    near: Vec<u32>,
    /// The `via` and `stop` terms. They are looked for only between a mention and a context
    /// found for it, so that frequent words ("and", "from") cost nothing elsewhere.
    via: Option<Terms>,
    stop: Option<Terms>,
    cross_commas: bool,
    effect: RuleEffect,
}

/// A small term list matched on word boundaries in the lowercased text.
#[derive(Debug, Clone)]
struct Terms(AhoCorasick);

impl Terms {
    fn new(terms: &[String]) -> Result<Option<Terms>> {
        let terms: Vec<String> =
            terms.iter().map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()).collect();
        if terms.is_empty() {
            return Ok(None);
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&terms)
            .context("compiling a rule's terms")?;
        Ok(Some(Terms(ac)))
    }

    /// Whether a term lies, word-bounded, in `lower[a..b]`.
    fn within(&self, lower: &[u8], a: usize, b: usize) -> bool {
        let b = b.min(lower.len());
        if a >= b {
            return false;
        }
        // Only the gap is searched (the text around it serves the word-boundary checks).
        let input = aho_corasick::Input::new(&lower[..b]).span(a..b);
        self.0
            .find_overlapping_iter(input)
            .any(|m| boundary_before(lower, m.start()) && boundary_after(lower, m.end()))
    }
}

/// At most this many hits are looked at on each side of a mention for a rule's context, whatever
/// the window (hits without words, such as "?", do not count towards it).
const MAX_RULE_HITS: usize = 64;

/// The compiled lexicon for one labelling convention. Cheap to share across threads
/// (`&Extractor` is `Sync`).
pub struct Extractor {
    ac: AhoCorasick,
    roles: Vec<Vec<Role>>,
    /// Section names (lowercase, single spaces) and whether their sections are skipped.
    headers: HashMap<Vec<u8>, bool, BuildHasherDefault<ByteHasher>>,
    /// Most words in a section name.
    header_words: usize,
    /// The last words of the section names: a colon after any other word ends no header.
    header_last: HashSet<Vec<u8>, BuildHasherDefault<ByteHasher>>,
    /// Per concept: the composites anchored on it.
    composites_of: Vec<Vec<u32>>,
    /// Whether a trailing "s"/"es" is accepted after the pattern (entity terms ending in a letter).
    pluralizable: Vec<bool>,
    concepts: Vec<ConceptInfo>,
    composites: Vec<CompositeInfo>,
    rules: Vec<RuleInfo>,
    labels: HashMap<String, Vec<String>>,
    version: String,
    convention: Convention,
}

/// A selected (non-overlapping) lexicon match.
#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    /// Offsets in the lowercased, whitespace-squeezed text the automaton ran on.
    sstart: usize,
    send: usize,
    pattern: u32,
}

static BUILTIN: [OnceLock<Extractor>; 2] = [OnceLock::new(), OnceLock::new()];

impl Extractor {
    /// The extractor for the embedded lexicon under the CheXpert convention, built once per
    /// process.
    pub fn builtin() -> &'static Extractor {
        Extractor::builtin_for(Convention::Chexpert)
    }

    /// The extractor for the embedded lexicon under `convention`, built once per process.
    pub fn builtin_for(convention: Convention) -> &'static Extractor {
        let i = Convention::ALL.iter().position(|c| *c == convention).unwrap_or(0);
        BUILTIN[i].get_or_init(|| {
            Extractor::with_convention(&Lexicon::builtin(), convention)
                .expect("the embedded lexicon compiles")
        })
    }

    /// `lex` under the CheXpert convention.
    pub fn new(lex: &Lexicon) -> Result<Extractor> {
        Extractor::with_convention(lex, Convention::Chexpert)
    }

    pub fn with_convention(lex: &Lexicon, convention: Convention) -> Result<Extractor> {
        let known: Vec<&str> = all_labels();
        let mut patterns: Vec<String> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut roles: Vec<Vec<Role>> = Vec::new();
        let mut add =
            |term: &str, role: Role, patterns: &mut Vec<String>, roles: &mut Vec<Vec<Role>>| {
                let t = term.trim().to_ascii_lowercase();
                if t.is_empty() {
                    return;
                }
                let id = *index.entry(t.clone()).or_insert_with(|| {
                    patterns.push(t);
                    roles.push(Vec::new());
                    patterns.len() - 1
                });
                roles[id].push(role);
            };

        let mut concepts: Vec<ConceptInfo> = Vec::new();
        let mut labels: HashMap<String, Vec<String>> = HashMap::new();
        let mut concept_ids: HashMap<(EntityType, String), u32> = HashMap::new();
        for (kind, entries) in [
            (EntityType::Finding, &lex.finding),
            (EntityType::Device, &lex.device),
            (EntityType::Anatomy, &lex.anatomy),
            (EntityType::Modifier, &lex.modifier),
        ] {
            for e in entries.iter() {
                let mut ls = e.labels.clone();
                if let Some(extra) = e.convention_labels.get(convention.name()) {
                    ls.extend(extra.iter().cloned());
                }
                if kind == EntityType::Device && !ls.iter().any(|l| l == "Support Devices") {
                    ls.push("Support Devices".to_string());
                }
                for l in &ls {
                    if !known.contains(&l.as_str()) {
                        bail!(
                            "concept {:?} feeds unknown label {l:?} (known: {known:?})",
                            e.concept
                        );
                    }
                }
                let id = *concept_ids.entry((kind, e.concept.clone())).or_insert_with(|| {
                    concepts.push(ConceptInfo {
                        name: e.concept.clone(),
                        kind,
                        fixed: e.assertion,
                        rules: Vec::new(),
                        near_of: Vec::new(),
                    });
                    (concepts.len() - 1) as u32
                });
                let entry = labels.entry(e.concept.clone()).or_default();
                for l in ls {
                    if !entry.contains(&l) {
                        entry.push(l);
                    }
                }
                for t in &e.terms {
                    add(t, Role::Entity(id), &mut patterns, &mut roles);
                }
            }
        }

        let mut composites = Vec::new();
        for (ci, c) in lex.composite.iter().enumerate() {
            let mut anatomy = Vec::new();
            for a in &c.anatomy {
                let id = concept_ids
                    .get(&(EntityType::Anatomy, a.clone()))
                    .with_context(|| format!("composite {:?}: unknown anatomy {a:?}", c.concept))?;
                anatomy.push(*id);
            }
            for l in &c.labels {
                if !known.contains(&l.as_str()) {
                    bail!("composite {:?} feeds unknown label {l:?}", c.concept);
                }
            }
            let entry = labels.entry(c.concept.clone()).or_default();
            for l in &c.labels {
                if !entry.contains(l) {
                    entry.push(l.clone());
                }
            }
            for (words, a) in [
                (&c.present, Assertion::Present),
                (&c.absent, Assertion::Absent),
                (&c.uncertain, Assertion::Uncertain),
                (&c.borderline, convention.borderline()),
            ] {
                for w in words {
                    add(
                        w,
                        Role::State { composite: ci as u32, assertion: a },
                        &mut patterns,
                        &mut roles,
                    );
                }
            }
            composites.push(CompositeInfo {
                concept: c.concept.clone(),
                anatomy,
                after: c.after,
                before: c.before,
                rules: Vec::new(),
            });
        }

        let mut rules = Vec::new();
        for (ri, r) in lex.rule.iter().enumerate() {
            let ri = ri as u32;
            let effect = r.effect()?;
            let near: Vec<u32> = concepts
                .iter()
                .enumerate()
                .filter(|(_, c)| r.near.contains(&c.name))
                .map(|(i, _)| i as u32)
                .collect();
            for c in concepts.iter_mut().filter(|c| r.concepts.contains(&c.name)) {
                c.rules.push(ri);
            }
            for &c in &near {
                concepts[c as usize].near_of.push(ri);
            }
            for c in composites.iter_mut().filter(|c| r.concepts.contains(&c.concept)) {
                c.rules.push(ri);
            }
            for t in &r.terms {
                add(t, Role::Context(ri), &mut patterns, &mut roles);
            }
            rules.push(RuleInfo {
                side: r.side,
                window: r.window,
                near,
                via: Terms::new(&r.via)?,
                stop: Terms::new(&r.stop)?,
                cross_commas: r.cross_commas,
                effect,
            });
        }

        let mut headers: HashMap<Vec<u8>, bool, BuildHasherDefault<ByteHasher>> =
            HashMap::default();
        for (list, skip) in [(&lex.sections.skip, true), (&lex.sections.keep, false)] {
            for h in list {
                let name = h.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_lowercase();
                if !name.is_empty() {
                    headers.entry(name.into_bytes()).or_insert(skip);
                }
            }
        }
        let header_words =
            headers.keys().map(|h| h.split(|b| *b == b' ').count()).max().unwrap_or(0);
        let header_last = headers
            .keys()
            .filter_map(|h| h.rsplit(|b| *b == b' ').next().map(|w| w.to_vec()))
            .collect();

        let t = &lex.triggers;
        let b = convention.borderline();
        for (list, kind) in [
            (&t.negation_pre, TriggerKind::Pre(Assertion::Absent)),
            (&t.negation_post, TriggerKind::Post(Assertion::Absent)),
            (&t.uncertain_pre, TriggerKind::Pre(Assertion::Uncertain)),
            (&t.uncertain_post, TriggerKind::Post(Assertion::Uncertain)),
            (&t.pseudo, TriggerKind::Pre(Assertion::Present)),
            (&t.borderline_pre, TriggerKind::Pre(b)),
            (&t.borderline_post, TriggerKind::Post(b)),
            (&t.linked_uncertain, TriggerKind::Link(Assertion::Uncertain)),
            (&t.linked_present, TriggerKind::Link(Assertion::Present)),
            (&t.termination, TriggerKind::Termination),
            (&t.termination_soft, TriggerKind::SoftTermination),
        ] {
            for w in list {
                add(w, Role::Trigger(kind), &mut patterns, &mut roles);
            }
        }
        for w in &t.neutral {
            add(w, Role::Neutral, &mut patterns, &mut roles);
        }

        let pluralizable = patterns
            .iter()
            .zip(&roles)
            .map(|(p, rs)| {
                p.as_bytes().last().is_some_and(|b| b.is_ascii_alphabetic())
                    && rs.iter().any(|r| {
                        matches!(r, Role::Entity(c) if concepts[*c as usize].kind != EntityType::Modifier)
                    })
            })
            .collect();

        let mut composites_of = vec![Vec::new(); concepts.len()];
        for (ci, c) in composites.iter().enumerate() {
            for &a in &c.anatomy {
                composites_of[a as usize].push(ci as u32);
            }
        }

        // Standard semantics so that overlapping search reports every match; we pick the
        // leftmost-longest word-bounded ones ourselves.
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .context("compiling the lexicon automaton")?;
        Ok(Extractor {
            ac,
            roles,
            headers,
            header_words,
            header_last,
            composites_of,
            pluralizable,
            concepts,
            composites,
            rules,
            labels,
            version: lex.version.clone(),
            convention,
        })
    }

    /// Lexicon version this extractor was built from.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The labelling convention this extractor applies.
    pub fn convention(&self) -> Convention {
        self.convention
    }

    /// Study labels a concept feeds under this extractor's convention (empty for anatomy and
    /// modifiers).
    pub fn labels_of(&self, concept: &str) -> &[String] {
        self.labels.get(concept).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// All word-bounded matches, leftmost-longest, non-overlapping.
    fn hits(&self, lower: &[u8]) -> Vec<Hit> {
        let mut cands: Vec<Hit> = Vec::with_capacity(lower.len() / 16 + 4);
        for m in self.ac.find_overlapping_iter(lower) {
            let (s, mut e) = (m.start(), m.end());
            let pid = m.pattern().as_usize();
            if !boundary_before(lower, s) {
                continue;
            }
            if !boundary_after(lower, e) {
                if !self.pluralizable[pid] {
                    continue;
                }
                if lower.get(e) == Some(&b's') && boundary_after(lower, e + 1) {
                    e += 1;
                } else if lower[e..].starts_with(b"es") && boundary_after(lower, e + 2) {
                    e += 2;
                } else {
                    continue;
                }
            }
            cands.push(Hit { start: s, end: e, sstart: s, send: e, pattern: pid as u32 });
        }
        cands.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut out: Vec<Hit> = Vec::with_capacity(cands.len());
        let mut last_end = 0;
        for h in cands {
            if h.start >= last_end {
                last_end = h.end;
                out.push(h);
            }
        }
        out
    }

    /// Byte ranges of the sections whose mentions feed no label: from a `skip` header to the next
    /// header or blank line. A header is a section name (whole words, case and spacing aside)
    /// followed by a colon; the longest name ending at the colon wins ("CLINICAL HISTORY:").
    fn skipped_sections(&self, text: &[u8], scope: &Scope) -> Vec<(usize, usize)> {
        const MAX: usize = 48;
        let mut headers: Vec<(usize, usize, bool)> = Vec::new();
        for &c in scope.colons() {
            let mut k = c;
            while k > 0 && matches!(text[k - 1], b' ' | b'\t') {
                k -= 1;
            }
            // The run of letters, '/' and blanks before the colon, on its line, lowercased with
            // single spaces, and where each of its words starts (in `buf` and in `text`).
            let mut w = k;
            while w > 0
                && k - w < MAX
                && (text[w - 1].is_ascii_alphabetic() || matches!(text[w - 1], b'/' | b' ' | b'\t'))
            {
                w -= 1;
            }
            if w > 0 && is_word(text[w - 1]) {
                // The run starts inside a word (one too long, or after a digit): no name starts
                // there, but a shorter one may start at a later word.
                while w < k && !matches!(text[w], b' ' | b'\t') {
                    w += 1;
                }
            }
            let mut buf = [0u8; MAX];
            let mut starts: [(usize, usize); 8] = [(0, 0); 8];
            let (mut len, mut nw) = (0, 0);
            for (i, &b) in text[w..k].iter().enumerate() {
                if matches!(b, b' ' | b'\t') {
                    if len > 0 && buf[len - 1] != b' ' {
                        buf[len] = b' ';
                        len += 1;
                    }
                } else {
                    if (len == 0 || buf[len - 1] == b' ') && nw < starts.len() {
                        starts[nw] = (len, w + i);
                        nw += 1;
                    }
                    buf[len] = b.to_ascii_lowercase();
                    len += 1;
                }
            }
            if nw == 0 {
                continue;
            }
            let (last, _) = starts[nw - 1];
            if !self.header_last.contains(&buf[last..len]) {
                continue;
            }
            let mut found = None;
            for &(at, pos) in starts[nw.saturating_sub(self.header_words)..nw].iter() {
                if let Some(&skip) = self.headers.get(&buf[at..len]) {
                    found = Some((pos, skip));
                    break;
                }
            }
            if let Some((start, skip)) = found {
                headers.push((start, c + 1, skip));
            }
        }
        let mut out = Vec::new();
        for (i, &(start, body, skip)) in headers.iter().enumerate() {
            if !skip {
                continue;
            }
            let next = headers.get(i + 1).map_or(text.len(), |h| h.0);
            let end = scope.blank_line_between(body, next).unwrap_or(next);
            out.push((start, end));
        }
        out
    }

    /// Entities of one report, sorted by start offset.
    pub fn extract(&self, text: &str) -> Vec<Entity> {
        // Terms match across line wraps and runs of spaces ("within limits of\n normal").
        let (lower, shifts) = lower_squeezed(text.as_bytes());
        let mut hits = self.hits(&lower);
        if hits.is_empty() {
            return Vec::new();
        }
        if !shifts.is_empty() {
            // Back to offsets in `text`: a hit neither starts nor ends on whitespace.
            let orig = |i: usize| {
                let k = shifts.partition_point(|s| s.0 <= i);
                i + if k == 0 { 0 } else { shifts[k - 1].1 }
            };
            for h in &mut hits {
                h.start = orig(h.start);
                h.end = orig(h.end - 1) + 1;
            }
        }
        let scope = Scope::new(text.as_bytes());
        let mut triggers: Vec<TriggerHit> = Vec::with_capacity(hits.len());
        // Where each rule has context (most rules have none in a report), and which composites
        // have a state word.
        let mut contexts: Vec<(u32, u32)> = Vec::new();
        let mut composites_seen = Bits::default();
        for (k, h) in hits.iter().enumerate() {
            for r in &self.roles[h.pattern as usize] {
                match r {
                    Role::Trigger(kind) => {
                        triggers.push(TriggerHit { start: h.start, end: h.end, kind: *kind })
                    }
                    Role::Context(ri) => contexts.push((*ri, k as u32)),
                    Role::State { composite, .. } => composites_seen.set(*composite),
                    Role::Entity(c) => {
                        for &ri in &self.concepts[*c as usize].near_of {
                            contexts.push((ri, k as u32));
                        }
                    }
                    _ => {}
                }
            }
        }
        contexts.sort_unstable();
        assertion::resolve_links(&scope, &mut triggers);
        let skipped = self.skipped_sections(text.as_bytes(), &scope);
        let cx = Ctx {
            text,
            lower: &lower,
            hits: &hits,
            scope: &scope,
            triggers: &triggers,
            skipped: &skipped,
            contexts: &contexts,
            composites_seen: &composites_seen,
        };

        let mut out = Vec::with_capacity(hits.len() + 4);
        for (hi, h) in hits.iter().enumerate() {
            for r in &self.roles[h.pattern as usize] {
                let Role::Entity(c) = r else { continue };
                let info = &self.concepts[*c as usize];
                let assertion = match info.fixed {
                    Some(a) => a,
                    None => assertion::resolve(&scope, &triggers, h.start, h.end),
                };
                let mut e = Entity {
                    start: h.start,
                    end: h.end,
                    text: text[h.start..h.end].to_string(),
                    concept: info.name.clone(),
                    kind: info.kind,
                    assertion,
                    excluded: None,
                };
                self.finish(&mut e, &info.rules, (hi, hi), &cx);
                out.push(e);
                if info.kind == EntityType::Anatomy {
                    self.composites_at(hi, *c, &cx, &mut out);
                }
            }
        }
        out.sort_by(|a, b| a.start.cmp(&b.start).then(a.end.cmp(&b.end)));
        out
    }

    /// Applies the first matching context rule and the section exclusion to a mention spanning
    /// hits `span.0..=span.1`.
    fn finish(&self, e: &mut Entity, rules: &[u32], span: (usize, usize), cx: &Ctx) {
        for &ri in rules {
            let rule = &self.rules[ri as usize];
            if !self.context_near(ri, rule, e, span, cx) {
                continue;
            }
            let Some(ctx) = self.rule_context(ri, rule, e, span, cx) else { continue };
            match &rule.effect {
                RuleEffect::Explained => {
                    if e.assertion != Assertion::Absent {
                        let (a, b) = if ctx.start >= e.end {
                            (e.start, ctx.end)
                        } else {
                            (ctx.start, e.end)
                        };
                        let hedged = e.assertion == Assertion::Uncertain
                            || assertion::any_inside(cx.triggers, a, b, |k| {
                                matches!(
                                    k,
                                    TriggerKind::Pre(Assertion::Uncertain)
                                        | TriggerKind::Post(Assertion::Uncertain)
                                        | TriggerKind::Link(Assertion::Uncertain)
                                )
                            });
                        e.assertion = if hedged { Assertion::Uncertain } else { Assertion::Absent };
                    }
                }
                RuleEffect::Assert(Assertion::Present) => {
                    if e.assertion != Assertion::Absent {
                        e.assertion = Assertion::Present;
                    }
                }
                RuleEffect::Assert(a) => {
                    if e.assertion == Assertion::Present {
                        e.assertion = *a;
                    }
                }
                RuleEffect::Drop => e.excluded = Some(Exclusion::Rule),
                RuleEffect::History => e.excluded = Some(Exclusion::History),
                RuleEffect::Concept(c) => e.concept = c.clone(),
            }
            break;
        }
        let k = cx.skipped.partition_point(|r| r.1 <= e.start);
        if cx.skipped.get(k).is_some_and(|r| r.0 <= e.start) {
            e.excluded = Some(Exclusion::Section);
        }
    }

    /// Whether rule `ri` has a context hit in the mention's clause on the rule's side, within
    /// the hits [`Self::rule_context`] looks at: a search in the report's (few) context hits.
    fn context_near(
        &self,
        ri: u32,
        rule: &RuleInfo,
        e: &Entity,
        span: (usize, usize),
        cx: &Ctx,
    ) -> bool {
        let lo = cx.contexts.partition_point(|c| c.0 < ri);
        let hi = lo + cx.contexts[lo..].partition_point(|c| c.0 == ri);
        let ks = &cx.contexts[lo..hi];
        if ks.is_empty() {
            return false;
        }
        let after = matches!(rule.side, Side::After | Side::Either) && {
            let i = ks.partition_point(|c| (c.1 as usize) <= span.1);
            ks.get(i).is_some_and(|c| {
                let k = c.1 as usize;
                k - span.1 <= MAX_RULE_HITS && cx.scope.same_sentence(e.end, cx.hits[k].start)
            })
        };
        after
            || matches!(rule.side, Side::Before | Side::Either) && {
                let i = ks.partition_point(|c| (c.1 as usize) < span.0);
                i > 0 && {
                    let k = ks[i - 1].1 as usize;
                    span.0 - k <= MAX_RULE_HITS && cx.scope.same_sentence(cx.hits[k].end, e.start)
                }
            }
    }

    /// The context hit of rule `ri` for the mention `e` (hits `span`), if any: the nearest one on
    /// the rule's side with a `via` term and no `stop` term between it and the mention.
    fn rule_context(
        &self,
        ri: u32,
        rule: &RuleInfo,
        e: &Entity,
        span: (usize, usize),
        cx: &Ctx,
    ) -> Option<Hit> {
        let sides: &[bool] = match rule.side {
            Side::After => &[true],
            Side::Before => &[false],
            Side::Either => &[true, false],
        };
        debug_assert!(e.start == cx.hits[span.0].start && e.end == cx.hits[span.1].end);
        let (first, last) = (cx.hits[span.0], cx.hits[span.1]);
        for &after in sides {
            let n = if after { cx.hits.len() - span.1 - 1 } else { span.0 };
            for step in 0..n.min(MAX_RULE_HITS) {
                let k = if after { span.1 + 1 + step } else { span.0 - 1 - step };
                let h = &cx.hits[k];
                let (a, b) = if after { (e.end, h.start) } else { (h.end, e.start) };
                if !cx.scope.same_sentence(a, b)
                    || cx.scope.words_between(a, b) > rule.window
                    || (!rule.cross_commas && cx.scope.comma_between(a, b))
                {
                    break;
                }
                let context = self.roles[h.pattern as usize].iter().any(|r| match r {
                    Role::Context(x) => *x == ri,
                    Role::Entity(c) => rule.near.contains(c),
                    _ => false,
                });
                if !context {
                    continue;
                }
                // What lies between the mention and the context, in the squeezed text.
                let (sa, sb) = if after { (last.send, h.sstart) } else { (h.send, first.sstart) };
                if rule.stop.as_ref().is_some_and(|t| t.within(cx.lower, sa, sb)) {
                    break;
                }
                if rule.via.as_ref().is_none_or(|t| t.within(cx.lower, sa, sb)) {
                    return Some(*h);
                }
            }
        }
        None
    }

    /// Composite findings anchored on the anatomy hit `hits[hi]`: the nearest state word of each
    /// composite within its window, in the same clause, with no hard termination between.
    fn composites_at(&self, hi: usize, anatomy: u32, cx: &Ctx, out: &mut Vec<Entity>) {
        let (hits, scope, triggers) = (cx.hits, cx.scope, cx.triggers);
        let a = hits[hi];
        for &ci in &self.composites_of[anatomy as usize] {
            if !cx.composites_seen.get(ci) {
                continue;
            }
            let (ci, comp) = (ci as usize, &self.composites[ci as usize]);
            let mut best: Option<(usize, usize, Assertion)> = None;
            let mut consider = |k: usize, dist: usize| {
                for r in &self.roles[hits[k].pattern as usize] {
                    if let Role::State { composite, assertion } = r {
                        if *composite as usize == ci && best.as_ref().is_none_or(|b| dist < b.0) {
                            best = Some((dist, k, *assertion));
                        }
                    }
                }
            };
            for (k, h) in hits.iter().enumerate().skip(hi + 1) {
                if !scope.same_sentence(a.end, h.start)
                    || scope.words_between(a.end, h.start) > comp.after
                {
                    break;
                }
                if assertion::hard_terminated(triggers, a.end, h.start) {
                    break;
                }
                consider(k, h.start - a.end);
            }
            for (k, h) in hits[..hi].iter().enumerate().rev() {
                if !scope.same_sentence(h.end, a.start)
                    || scope.words_between(h.end, a.start) > comp.before
                {
                    break;
                }
                if assertion::hard_terminated(triggers, h.end, a.start) {
                    break;
                }
                consider(k, a.start - h.end);
            }
            let Some((_, k, state)) = best else { continue };
            let st = hits[k];
            let (s, e) = (a.start.min(st.start), a.end.max(st.end));
            let assertion = match state {
                Assertion::Present => assertion::inside(triggers, s, e)
                    .unwrap_or_else(|| assertion::resolve(scope, triggers, s, e)),
                other => other,
            };
            let mut ent = Entity {
                start: s,
                end: e,
                text: cx.text[s..e].to_string(),
                concept: comp.concept.clone(),
                kind: EntityType::Finding,
                assertion,
                excluded: None,
            };
            self.finish(&mut ent, &comp.rules, (hi.min(k), hi.max(k)), cx);
            out.push(ent);
        }
    }
}

/// A fast hash for the short byte strings of section names (no untrusted keys are stored).
#[derive(Default)]
struct ByteHasher(u64);

impl Hasher for ByteHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A set of small indices (rules, composites); indices past its capacity always read as set,
/// which only costs the shortcut it offers.
#[derive(Default)]
struct Bits([u64; 4]);

impl Bits {
    fn set(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            *w |= 1 << (i % 64);
        }
    }
    fn get(&self, i: u32) -> bool {
        self.0.get(i as usize / 64).is_none_or(|w| w & (1 << (i % 64)) != 0)
    }
}

/// One report's analysis, shared by the steps of [`Extractor::extract`].
struct Ctx<'a> {
    text: &'a str,
    /// `text` lowercased with whitespace runs squeezed (what the automaton ran on).
    lower: &'a [u8],
    hits: &'a [Hit],
    scope: &'a Scope,
    triggers: &'a [TriggerHit],
    /// Skipped section ranges, sorted.
    skipped: &'a [(usize, usize)],
    /// (rule, hit) for every context hit of every rule, sorted.
    contexts: &'a [(u32, u32)],
    /// Per composite: whether the report holds any of its state words.
    composites_seen: &'a Bits,
}

/// Entities in `text`, found with the embedded lexicon under the CheXpert convention. Offsets are
/// byte offsets into `text`.
pub fn extract_entities(text: &str) -> Vec<Entity> {
    Extractor::builtin().extract(text)
}

/// `b` lowercased (ASCII) with every run of whitespace made one space, and where bytes were
/// removed: `(i, n)` means that from byte `i` of the result on, `n` bytes of `b` were removed
/// before it (sorted; empty when only single spaces separate the words).
#[inline(never)]
fn lower_squeezed(b: &[u8]) -> (Vec<u8>, Vec<(usize, usize)>) {
    // Per byte: its lowercase, whitespace as a space.
    const MAP: [u8; 256] = {
        let mut m = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            let c = i as u8;
            m[i] = if c.is_ascii_whitespace() { b' ' } else { c.to_ascii_lowercase() };
            i += 1;
        }
        m
    };
    let mut out: Vec<u8> = b.iter().map(|&c| MAP[c as usize]).collect();
    let mut shifts: Vec<(usize, usize)> = Vec::new();
    // Squeeze runs of spaces in place, from the first one on (most one-line reports have none).
    let Some(first) = out.windows(2).position(|w| w == b"  ") else { return (out, shifts) };
    let mut w = first + 1;
    for r in first + 1..out.len() {
        let c = out[r];
        if c == b' ' && out[w - 1] == b' ' {
            // Dropped: from result byte `w` on, `r + 1 - w` input bytes were removed.
            match shifts.last_mut() {
                Some(last) if last.0 == w => last.1 += 1,
                _ => shifts.push((w, r + 1 - w)),
            }
        } else {
            out[w] = c;
            w += 1;
        }
    }
    out.truncate(w);
    (out, shifts)
}

/// Bytes that form words. Non-ASCII bytes count as word bytes so that a term never matches
/// inside an accented word.
#[inline]
pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

#[inline]
fn boundary_before(b: &[u8], s: usize) -> bool {
    s == 0 || !is_word(b[s - 1]) || !is_word(b[s])
}

#[inline]
fn boundary_after(b: &[u8], e: usize) -> bool {
    e >= b.len() || !is_word(b[e]) || (e > 0 && !is_word(b[e - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(ents: &'a [Entity], concept: &str) -> &'a Entity {
        ents.iter()
            .find(|e| e.concept == concept)
            .unwrap_or_else(|| panic!("no {concept} in {ents:#?}"))
    }

    #[test]
    fn builtin_lexicon_compiles() {
        let x = Extractor::builtin();
        assert!(!x.version().is_empty());
        assert_eq!(x.labels_of("pleural_effusion"), ["Pleural Effusion"]);
        assert!(x.labels_of("endotracheal_tube").contains(&"Support Devices".to_string()));
    }

    #[test]
    fn word_boundaries_and_plurals() {
        // "no" inside "nodule"/"note" is not a trigger; "effusions" is a plural.
        let e = extract_entities("Note the nodules. Bilateral effusions.");
        assert_eq!(find(&e, "nodule").assertion, Assertion::Present);
        let eff = find(&e, "pleural_effusion");
        assert_eq!(eff.text, "effusions");
        assert_eq!(eff.assertion, Assertion::Present);
        // "port" does not match inside "portable" or "report".
        assert!(extract_entities("Portable report.").iter().all(|e| e.concept != "port"));
    }

    #[test]
    fn longest_match_and_offsets_with_unicode() {
        let t = "Ärztlicher Befund: kleiner Erguss. Small right pleural effusion.";
        let e = extract_entities(t);
        let eff = find(&e, "pleural_effusion");
        assert_eq!(eff.text, "pleural effusion");
        assert_eq!(&t[eff.start..eff.end], "pleural effusion");
        assert_eq!(find(&e, "laterality:right").text, "right");
        assert_eq!(find(&e, "severity:small").text, "Small");
    }

    #[test]
    fn composite_heart_size() {
        let e = extract_entities("The heart is normal in size.");
        assert_eq!(find(&e, "cardiomegaly").assertion, Assertion::Absent);
        let e = extract_entities("Heart size is mildly enlarged.");
        assert_eq!(find(&e, "cardiomegaly").assertion, Assertion::Present);
        let e = extract_entities("The heart may be mildly enlarged.");
        assert_eq!(find(&e, "cardiomegaly").assertion, Assertion::Uncertain);
        let e = extract_entities("Normal heart size.");
        assert_eq!(find(&e, "cardiomegaly").assertion, Assertion::Absent);
        let e = extract_entities("Costophrenic angles are sharp.");
        assert_eq!(find(&e, "costophrenic_blunting").assertion, Assertion::Absent);
        assert_eq!(Extractor::builtin().labels_of("costophrenic_blunting"), ["Pleural Effusion"]);
    }

    #[test]
    fn placeholders_are_text() {
        let e = extract_entities("XXXX XXXX. No pneumothorax. ___ year old with ___.");
        assert_eq!(find(&e, "pneumothorax").assertion, Assertion::Absent);
        let e = extract_entities("Stable XXXX opacity in the right lower lobe.");
        assert_eq!(find(&e, "lung_opacity").assertion, Assertion::Present);
    }

    #[test]
    fn squeezed_offsets_map_back() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..2000 {
            let t: Vec<u8> = (0..rng.random_range(0..30))
                .map(|_| b"aB \n\t\r."[rng.random_range(0..7)])
                .collect();
            let (out, shifts) = lower_squeezed(&t);
            assert!(!out.windows(2).any(|w| w == b"  "));
            for (j, &c) in out.iter().enumerate() {
                let k = shifts.partition_point(|s| s.0 <= j);
                let i = j + if k == 0 { 0 } else { shifts[k - 1].1 };
                let want =
                    if t[i].is_ascii_whitespace() { b' ' } else { t[i].to_ascii_lowercase() };
                assert_eq!(c, want, "{t:?} byte {j}");
            }
        }
        // A term split by a hard-wrapped line still matches, with offsets into the input.
        let t = "Heart size and vascular engorgement appear within limits of\n   normal.";
        let e = extract_entities(t);
        assert_eq!(find(&e, "pulmonary_vascular_congestion").assertion, Assertion::Absent);
        let cm = find(&e, "cardiomegaly");
        assert_eq!((cm.assertion, &t[cm.start..cm.end]), (Assertion::Absent, cm.text.as_str()));
        assert!(cm.text.ends_with("of\n   normal"), "{:?}", cm.text);
    }

    #[test]
    fn bad_user_lexicon_is_an_error() {
        let mut lex = Lexicon::builtin();
        lex.finding[0].labels = vec!["Not A Label".into()];
        let err = Extractor::new(&lex).err().expect("unknown label rejected").to_string();
        assert!(err.contains("Not A Label"), "{err}");
        assert!(Lexicon::from_toml_str("version = 3", "x.toml").is_err());
    }
}
