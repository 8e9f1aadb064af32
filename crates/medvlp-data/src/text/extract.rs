//! Entity extraction: the lexicon compiled into one Aho-Corasick automaton over ASCII-lowercased
//! text, word-boundary filtering, leftmost-longest selection, clause splitting and assertion.

use std::collections::HashMap;
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};
use anyhow::{bail, Context, Result};

use super::assertion::{self, Scope, TriggerHit, TriggerKind};
use super::labels::all_labels;
use super::lexicon::Lexicon;
use super::{Assertion, Entity, EntityType};

/// What a matched lexicon string means. One string can have several roles ("stable" is a change
/// modifier and a scope terminator; "resolved" a modifier and a negation trigger).
#[derive(Debug, Clone, Copy)]
enum Role {
    Entity(u32),
    Trigger(TriggerKind),
    State { composite: u32, assertion: Assertion },
}

#[derive(Debug, Clone)]
struct ConceptInfo {
    name: String,
    kind: EntityType,
    fixed: Option<Assertion>,
}

#[derive(Debug, Clone)]
struct CompositeInfo {
    concept: String,
    anatomy: Vec<u32>,
    after: usize,
    before: usize,
}

/// The compiled lexicon. Cheap to share across threads (`&Extractor` is `Sync`).
pub struct Extractor {
    ac: AhoCorasick,
    roles: Vec<Vec<Role>>,
    /// Whether a trailing "s"/"es" is accepted after the pattern (entity terms ending in a letter).
    pluralizable: Vec<bool>,
    concepts: Vec<ConceptInfo>,
    composites: Vec<CompositeInfo>,
    labels: HashMap<String, Vec<String>>,
    version: String,
}

/// A selected (non-overlapping) lexicon match.
#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    pattern: u32,
}

static DEFAULT: OnceLock<Extractor> = OnceLock::new();

impl Extractor {
    /// The extractor for the embedded lexicon, built once per process.
    pub fn builtin() -> &'static Extractor {
        DEFAULT.get_or_init(|| {
            Extractor::new(&Lexicon::builtin()).expect("the embedded lexicon compiles")
        })
    }

    pub fn new(lex: &Lexicon) -> Result<Extractor> {
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
            });
        }

        let t = &lex.triggers;
        for (list, kind) in [
            (&t.negation_pre, TriggerKind::NegPre),
            (&t.negation_post, TriggerKind::NegPost),
            (&t.uncertain_pre, TriggerKind::UncPre),
            (&t.uncertain_post, TriggerKind::UncPost),
            (&t.pseudo, TriggerKind::Pseudo),
            (&t.termination, TriggerKind::Termination),
        ] {
            for w in list {
                add(w, Role::Trigger(kind), &mut patterns, &mut roles);
            }
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

        // Standard semantics so that overlapping search reports every match; we pick the
        // leftmost-longest word-bounded ones ourselves.
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .context("compiling the lexicon automaton")?;
        Ok(Extractor {
            ac,
            roles,
            pluralizable,
            concepts,
            composites,
            labels,
            version: lex.version.clone(),
        })
    }

    /// Lexicon version this extractor was built from.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Study labels a concept feeds (empty for anatomy and modifiers).
    pub fn labels_of(&self, concept: &str) -> &[String] {
        self.labels.get(concept).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// All word-bounded matches, leftmost-longest, non-overlapping.
    fn hits(&self, lower: &[u8]) -> Vec<Hit> {
        let mut cands: Vec<Hit> = Vec::new();
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
            cands.push(Hit { start: s, end: e, pattern: pid as u32 });
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

    /// Entities of one report, sorted by start offset.
    pub fn extract(&self, text: &str) -> Vec<Entity> {
        let lower = text.to_ascii_lowercase();
        let lb = lower.as_bytes();
        let hits = self.hits(lb);
        if hits.is_empty() {
            return Vec::new();
        }
        let scope = Scope::new(text.as_bytes());
        let mut triggers: Vec<TriggerHit> = Vec::new();
        for h in &hits {
            for r in &self.roles[h.pattern as usize] {
                if let Role::Trigger(kind) = r {
                    triggers.push(TriggerHit { start: h.start, end: h.end, kind: *kind });
                }
            }
        }

        let mut out = Vec::new();
        for (hi, h) in hits.iter().enumerate() {
            for r in &self.roles[h.pattern as usize] {
                let Role::Entity(c) = r else { continue };
                let info = &self.concepts[*c as usize];
                let assertion = match info.fixed {
                    Some(a) => a,
                    None => assertion::resolve(&scope, &triggers, h.start, h.end),
                };
                out.push(Entity {
                    start: h.start,
                    end: h.end,
                    text: text[h.start..h.end].to_string(),
                    concept: info.name.clone(),
                    kind: info.kind,
                    assertion,
                });
                if info.kind == EntityType::Anatomy {
                    self.composites_at(text, &hits, hi, *c, &scope, &triggers, &mut out);
                }
            }
        }
        out.sort_by(|a, b| a.start.cmp(&b.start).then(a.end.cmp(&b.end)));
        out
    }

    /// Composite findings anchored on the anatomy hit `hits[hi]`: the nearest state word of each
    /// composite within its window, in the same clause.
    #[allow(clippy::too_many_arguments)]
    fn composites_at(
        &self,
        text: &str,
        hits: &[Hit],
        hi: usize,
        anatomy: u32,
        scope: &Scope,
        triggers: &[TriggerHit],
        out: &mut Vec<Entity>,
    ) {
        let a = hits[hi];
        for (ci, comp) in self.composites.iter().enumerate() {
            if !comp.anatomy.contains(&anatomy) {
                continue;
            }
            let mut best: Option<(usize, Hit, Assertion)> = None;
            let mut consider = |h: &Hit, dist: usize| {
                for r in &self.roles[h.pattern as usize] {
                    if let Role::State { composite, assertion } = r {
                        if *composite as usize == ci && best.as_ref().is_none_or(|b| dist < b.0) {
                            best = Some((dist, *h, *assertion));
                        }
                    }
                }
            };
            for h in &hits[hi + 1..] {
                if !scope.same_sentence(a.end, h.start)
                    || scope.words_between(a.end, h.start) > comp.after
                {
                    break;
                }
                if assertion::terminated(triggers, a.end, h.start) {
                    break;
                }
                consider(h, h.start - a.end);
            }
            for h in hits[..hi].iter().rev() {
                if !scope.same_sentence(h.end, a.start)
                    || scope.words_between(h.end, a.start) > comp.before
                {
                    break;
                }
                if assertion::terminated(triggers, h.end, a.start) {
                    break;
                }
                consider(h, a.start - h.end);
            }
            let Some((_, st, state)) = best else { continue };
            let (s, e) = (a.start.min(st.start), a.end.max(st.end));
            let assertion = match state {
                Assertion::Present => assertion::inside(triggers, s, e)
                    .unwrap_or_else(|| assertion::resolve(scope, triggers, s, e)),
                other => other,
            };
            out.push(Entity {
                start: s,
                end: e,
                text: text[s..e].to_string(),
                concept: comp.concept.clone(),
                kind: EntityType::Finding,
                assertion,
            });
        }
    }
}

/// Entities in `text`, found with the embedded lexicon. Offsets are byte offsets into `text`.
pub fn extract_entities(text: &str) -> Vec<Entity> {
    Extractor::builtin().extract(text)
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
        assert_eq!(find(&e, "pleural_effusion").assertion, Assertion::Absent);
    }

    #[test]
    fn placeholders_are_text() {
        let e = extract_entities("XXXX XXXX. No pneumothorax. ___ year old with ___.");
        assert_eq!(find(&e, "pneumothorax").assertion, Assertion::Absent);
        let e = extract_entities("Stable XXXX opacity in the right lower lobe.");
        assert_eq!(find(&e, "lung_opacity").assertion, Assertion::Present);
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
