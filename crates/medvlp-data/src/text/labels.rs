//! CheXpert-style study labels from entities.
//!
//! Per observation: 1 positive, 0 negative, -1 uncertain; a missing key means not mentioned.
//! Mentions of one observation are aggregated as CheXpert does: any positive mention makes it 1,
//! otherwise any uncertain mention makes it -1, otherwise 0.
//!
//! Mentions that the extractor excluded (in an INDICATION or HISTORY section, history such as
//! "history of pneumonia", or dropped by a context rule) feed no label.
//!
//! "No Finding" is 1 when none of the 12 CheXpert pathologies (all of [`CHEXPERT_14`] except
//! "No Finding" and "Support Devices") is 1 or -1, and 0 otherwise; it is set for every non-empty
//! report. The extra labels ([`EXTRA_LABELS`]) do not affect it on their own (as in CheXpert),
//! but nodules and masses also feed "Lung Lesion" and infiltration "Lung Opacity", so those do
//! (and, under the CheXpert convention, vascular congestion feeds "Edema").
//!
//! Full label list ([`all_labels`]): the CheXpert 14 plus
//! Nodule, Mass, Granuloma, Emphysema (named only: hyperinflation and COPD are not emphysema),
//! Fibrosis, Scarring, Hernia (hiatal and diaphragmatic), Scoliosis, Calcification (incl.
//! aortic/vascular), Infiltration, Pulmonary Vascular Congestion.
//!
//! Which descriptors and syndromes feed which label depends on the [`Convention`]
//! (docs/labeler-conventions.md).

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::extract::Extractor;
use super::{Assertion, Convention, Entity, EntityType};

pub const CHEXPERT_14: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
];

/// The CheXpert competition tasks.
pub const CHEXPERT_5: [&str; 5] =
    ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"];

/// Labels beyond CheXpert ("Fracture" is already one of the 14).
pub const EXTRA_LABELS: [&str; 11] = [
    "Nodule",
    "Mass",
    "Granuloma",
    "Emphysema",
    "Fibrosis",
    "Scarring",
    "Hernia",
    "Scoliosis",
    "Calcification",
    "Infiltration",
    "Pulmonary Vascular Congestion",
];

/// A study's CheXpert observations as a 0/1 vector in [`CHEXPERT_14`] order, for label-similarity
/// targets (MedCLIP's semantic matching): 1 where the label is positive, and "No Finding" set when
/// no pathology is positive (support devices are not one), whatever the file said, so that every
/// vector is non-zero and normal studies match each other instead of being each other's negatives.
pub fn label_vector(labels: &BTreeMap<String, i8>) -> Vec<f32> {
    let positive = |n: &str| labels.get(n) == Some(&1);
    let pathology =
        CHEXPERT_14.iter().any(|n| *n != "No Finding" && *n != "Support Devices" && positive(n));
    CHEXPERT_14
        .iter()
        .map(|n| match *n {
            "No Finding" => !pathology as u8 as f32,
            n => positive(n) as u8 as f32,
        })
        .collect()
}

/// Every label the labeler can emit: CheXpert 14 then the extras.
pub fn all_labels() -> Vec<&'static str> {
    CHEXPERT_14.iter().chain(EXTRA_LABELS.iter()).copied().collect()
}

fn rank(a: Assertion) -> u8 {
    match a {
        Assertion::Absent => 0,
        Assertion::Uncertain => 1,
        Assertion::Present => 2,
    }
}

/// Study labels from entities extracted by `extractor`.
pub fn label_entities(extractor: &Extractor, entities: &[Entity]) -> BTreeMap<String, i8> {
    let mut best: BTreeMap<&str, Assertion> = BTreeMap::new();
    for e in entities {
        if !matches!(e.kind, EntityType::Finding | EntityType::Device) || e.excluded.is_some() {
            continue;
        }
        for l in extractor.labels_of(&e.concept) {
            let slot = best.entry(l.as_str()).or_insert(e.assertion);
            if rank(e.assertion) > rank(*slot) {
                *slot = e.assertion;
            }
        }
    }
    let mut out: BTreeMap<String, i8> =
        best.into_iter().map(|(k, v)| (k.to_string(), v.label_value())).collect();
    let sick = CHEXPERT_14
        .iter()
        .filter(|l| **l != "No Finding" && **l != "Support Devices")
        .any(|l| matches!(out.get(*l), Some(1) | Some(-1)));
    out.insert("No Finding".to_string(), if sick { 0 } else { 1 });
    out
}

/// Labels of one report with the embedded lexicon under the CheXpert convention. An empty (or
/// whitespace-only) report gets no labels at all.
pub fn label_report(text: &str) -> BTreeMap<String, i8> {
    label_with(Extractor::builtin(), text)
}

/// Labels of one report with the embedded lexicon under `convention`.
pub fn label_report_as(text: &str, convention: Convention) -> BTreeMap<String, i8> {
    label_with(Extractor::builtin_for(convention), text)
}

/// Labels of one report with a given extractor.
pub fn label_with(extractor: &Extractor, text: &str) -> BTreeMap<String, i8> {
    if text.trim().is_empty() {
        return BTreeMap::new();
    }
    label_entities(extractor, &extractor.extract(text))
}

/// Labels of many reports in parallel (rayon), in input order, under the CheXpert convention.
pub fn label_reports<S: AsRef<str> + Sync>(texts: &[S]) -> Vec<BTreeMap<String, i8>> {
    label_reports_as(texts, Convention::Chexpert)
}

/// Labels of many reports in parallel (rayon), in input order, under `convention`.
pub fn label_reports_as<S: AsRef<str> + Sync>(
    texts: &[S],
    convention: Convention,
) -> Vec<BTreeMap<String, i8>> {
    let x = Extractor::builtin_for(convention);
    texts.par_iter().map(|t| label_with(x, t.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(text: &str) -> BTreeMap<String, i8> {
        label_report(text)
    }

    #[test]
    fn negation_uncertainty_and_double_negation() {
        assert_eq!(l("No pleural effusion.")["Pleural Effusion"], 0);
        assert_eq!(l("Pneumothorax is not seen.")["Pneumothorax"], 0);
        assert_eq!(l("No change in the small left effusion.")["Pleural Effusion"], 1);
        assert_eq!(l("Possible early pneumonia.")["Pneumonia"], -1);
        assert_eq!(l("Pneumonia cannot be excluded.")["Pneumonia"], -1);
        assert_eq!(l("Atelectasis versus consolidation.")["Consolidation"], -1);
        assert_eq!(l("Atelectasis versus consolidation.")["Atelectasis"], -1);
        let nf = CHEXPERT_14.iter().position(|n| *n == "No Finding").unwrap();
        let sd = CHEXPERT_14.iter().position(|n| *n == "Support Devices").unwrap();
        let v = label_vector(&l("Normal chest. ET tube in place."));
        assert_eq!((v[nf], v[sd]), (1.0, 1.0), "{v:?}");
        let v = label_vector(&l("Small left pleural effusion."));
        assert_eq!(v[nf], 0.0);
        assert_eq!(v.iter().sum::<f32>(), 1.0);
        assert_eq!(label_vector(&BTreeMap::new())[nf], 1.0);
        let r = l("No pneumothorax, but there is a small right effusion.");
        assert_eq!((r["Pneumothorax"], r["Pleural Effusion"]), (0, 1));
    }

    #[test]
    fn no_finding_rule() {
        let r = l("Endotracheal tube in place. Lungs are clear. No effusion.");
        assert_eq!(r["Support Devices"], 1);
        assert_eq!(r["No Finding"], 1);
        assert_eq!(l("Mild cardiomegaly.")["No Finding"], 0);
        assert_eq!(l("Possible small effusion.")["No Finding"], 0);
        assert!(l("   ").is_empty());
        // Aggregation: a positive mention beats a negative one.
        assert_eq!(l("Small left effusion. No right effusion.")["Pleural Effusion"], 1);
    }

    #[test]
    fn extra_labels_and_hierarchy() {
        let r =
            l("8 mm nodule in the right upper lobe. Moderate hiatal hernia. Mild dextroscoliosis.");
        assert_eq!(r["Nodule"], 1);
        assert_eq!(r["Lung Lesion"], 1);
        assert_eq!(r["Hernia"], 1);
        assert_eq!(r["Scoliosis"], 1);
        let r = l("Calcified granuloma in the left lung.");
        assert_eq!(r["Granuloma"], 1);
        assert!(!r.contains_key("Nodule"));
        assert!(all_labels().iter().all(|x| !x.is_empty()));
        assert_eq!(all_labels().len(), 25);
    }

    #[test]
    fn parallel_matches_serial() {
        let texts = vec!["No effusion.", "Large right pneumothorax.", "", "Possible pneumonia."];
        let par = label_reports(&texts);
        let ser: Vec<_> = texts.iter().map(|t| label_report(t)).collect();
        assert_eq!(par, ser);
    }
}
