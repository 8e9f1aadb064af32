//! Which studies each protocol sees: the studies of a manifest split, their embeddings in
//! manifest order ([`SplitEmbeddings`], filled by the model side), the classes a split can score,
//! label-fraction subsets ([`fraction_ids`]) and the fine-tuning splits ([`FinetuneSplits`]).
//! Plain data: manifests in, indices and indicator rows out.

use crate::probe;
use anyhow::{bail, Context, Result};
use medvlp_data::dataset::{read_manifest, sibling, Split, Study};
use medvlp_data::hash::sha256_hex;
use medvlp_data::loader::{Item, Loader};
use std::collections::BTreeMap;
use std::path::Path;

/// The studies of one split that have an image, in manifest order; an error names the manifest
/// when there are none.
pub fn split_studies(manifest: &Path, split: Split) -> Result<Vec<Study>> {
    let studies: Vec<Study> = read_manifest(manifest)?
        .into_iter()
        .filter(|s| s.split == Some(split) && !s.images.is_empty())
        .collect();
    if studies.is_empty() {
        bail!("{}: no {} studies with images", manifest.display(), split.as_str());
    }
    Ok(studies)
}

/// Embeddings of one split, in manifest order (studies whose image failed to load left out).
pub struct SplitEmbeddings {
    pub split: Split,
    pub ids: Vec<String>,
    pub images: Vec<Vec<f32>>,
    /// Report embeddings, `None` for studies without the text field.
    pub texts: Option<Vec<Option<Vec<f32>>>>,
    pub labels: Vec<BTreeMap<String, i8>>,
    /// sha256 of the sorted study IDs (recorded in the protocol).
    pub split_hash: String,
    /// Studies left out because their image failed to load.
    pub skipped: usize,
}

impl SplitEmbeddings {
    /// `studies` are the embedded studies, one per row of `images` (and of `texts`).
    pub fn new(
        split: Split,
        studies: &[&Study],
        images: Vec<Vec<f32>>,
        texts: Option<Vec<Option<Vec<f32>>>>,
        skipped: usize,
    ) -> Self {
        let ids: Vec<String> = studies.iter().map(|s| s.id.clone()).collect();
        let split_hash = {
            let mut sorted = ids.clone();
            sorted.sort();
            sha256_hex(sorted.join("\n").as_bytes())
        };
        SplitEmbeddings {
            split,
            ids,
            images,
            texts,
            labels: studies.iter().map(|s| s.labels.clone()).collect(),
            split_hash,
            skipped,
        }
    }

    /// Indicator matrix for `classes`: 1 is positive; 0, -1 (uncertain) and absent are negative.
    pub fn indicators(&self, classes: &[String]) -> Vec<Vec<bool>> {
        indicators(&self.labels, classes)
    }

    /// Classes with at least one positive and one negative in this split.
    pub fn defined_classes<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a String>,
    ) -> Vec<String> {
        candidates
            .into_iter()
            .filter(|c| {
                let pos = self.labels.iter().filter(|l| l.get(*c) == Some(&1)).count();
                pos > 0 && pos < self.labels.len()
            })
            .cloned()
            .collect()
    }
}

/// Indicator rows of label maps: 1 is positive; 0, -1 (uncertain) and absent are negative.
pub fn indicators(labels: &[BTreeMap<String, i8>], classes: &[String]) -> Vec<Vec<bool>> {
    labels.iter().map(|l| classes.iter().map(|c| l.get(c) == Some(&1)).collect()).collect()
}

/// The training IDs of a label fraction: `prepare`'s fixed lists (`<manifest>.train_1pct.txt`,
/// `.train_10pct.txt`) when they exist, else a seeded subset keeping a positive per class.
/// `ids` and `labels` (indicators of the classes) are the training studies'. Returns the indices
/// into `ids` and where they came from (recorded in the protocol).
pub fn fraction_ids(
    manifest: &Path,
    ids: &[String],
    labels: &[Vec<bool>],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, String)> {
    if fraction >= 1.0 {
        return Ok(((0..ids.len()).collect(), "all".into()));
    }
    let name = format!("train_{}pct.txt", (fraction * 100.0).round() as u32);
    let list = sibling(manifest, &name);
    if list.exists() {
        let text = std::fs::read_to_string(&list)
            .with_context(|| format!("reading {}", list.display()))?;
        let wanted: std::collections::HashSet<&str> =
            text.lines().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
        let idx: Vec<usize> =
            (0..ids.len()).filter(|&i| wanted.contains(ids[i].as_str())).collect();
        if !idx.is_empty() {
            return Ok((idx, list.display().to_string()));
        }
        tracing::warn!(
            "{}: none of its IDs are training studies here; using a seeded subset",
            list.display()
        );
    }
    Ok((
        probe::subsample_indices(ids.len(), labels, fraction, seed)?,
        format!("seeded subset (seed {seed})"),
    ))
}

/// The data of the fine-tuning protocol: loader items of the training, validation and test
/// studies and their indicator rows for the classes defined on the test split. Test items are in
/// the order of the embedded test split, so that scores line up with its labels.
pub struct FinetuneSplits {
    pub classes: Vec<String>,
    pub train: Vec<Item>,
    pub train_ids: Vec<String>,
    pub train_labels: Vec<Vec<bool>>,
    pub val: Vec<Item>,
    pub val_labels: Vec<Vec<bool>>,
    pub test: Vec<Item>,
    pub test_labels: Vec<Vec<bool>>,
}

impl FinetuneSplits {
    /// Items from `manifest` (images under `root`); `classes` are narrowed to those with
    /// positives and negatives in `test`.
    pub fn new(
        manifest: &Path,
        root: &Path,
        test: &SplitEmbeddings,
        classes: &[String],
    ) -> Result<Self> {
        let studies = read_manifest(manifest)?;
        let items = |s: Split| Loader::items_from_studies(&studies, root, Some(s));
        let train = items(Split::Train);
        let classes = test.defined_classes(classes);
        if classes.is_empty() {
            bail!("fine-tuning: no class has positives and negatives in the test split");
        }
        let test_items: Vec<Item> = {
            let all = items(test.split);
            let by_id: std::collections::HashMap<&str, &Item> =
                all.iter().map(|i| (i.id.as_str(), i)).collect();
            test.ids.iter().map(|id| (*by_id[id.as_str()]).clone()).collect()
        };
        let val = items(Split::Validate);
        let item_labels = |items: &[Item]| -> Vec<Vec<bool>> {
            items
                .iter()
                .map(|i| classes.iter().map(|k| i.labels.get(k) == Some(&1)).collect())
                .collect()
        };
        Ok(FinetuneSplits {
            val_labels: item_labels(&val),
            test_labels: test.indicators(&classes),
            train_ids: train.iter().map(|i| i.id.clone()).collect(),
            train_labels: item_labels(&train),
            classes,
            train,
            val,
            test: test_items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(id: &str, split: Split, labels: &[(&str, i8)]) -> Study {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "images": [{"path": format!("{id}.png")}],
            "split": split.as_str(),
            "labels": labels.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        }))
        .unwrap()
    }

    #[test]
    fn split_embeddings_classes_and_hash() {
        let a = study("a", Split::Test, &[("Edema", 1), ("Atelectasis", -1)]);
        let b = study("b", Split::Test, &[("Edema", 0)]);
        let e = SplitEmbeddings::new(Split::Test, &[&b, &a], vec![vec![1.0], vec![2.0]], None, 1);
        assert_eq!(e.ids, ["b", "a"]);
        // The hash is of the sorted IDs: independent of the order.
        let e2 = SplitEmbeddings::new(Split::Test, &[&a, &b], vec![vec![2.0], vec![1.0]], None, 0);
        assert_eq!(e.split_hash, e2.split_hash);
        assert_eq!(e.split_hash, sha256_hex(b"a\nb"));
        let classes: Vec<String> = ["Edema", "Atelectasis"].map(String::from).to_vec();
        // Uncertain (-1) and absent are negative.
        assert_eq!(e.indicators(&classes), [[false, false], [true, false]]);
        assert_eq!(e.defined_classes(&classes), ["Edema"]);
    }

    #[test]
    fn fractions_use_the_fixed_lists_when_they_match() {
        let dir = std::env::temp_dir().join(format!("medvlp-eval-splits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("manifest.jsonl");
        let ids: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        let labels: Vec<Vec<bool>> = (0..20).map(|i| vec![i % 4 == 0]).collect();
        let (all, src) = fraction_ids(&manifest, &ids, &labels, 1.0, 0).unwrap();
        assert_eq!((all.len(), src.as_str()), (20, "all"));
        // No list: a seeded subset with a positive.
        let (a, src) = fraction_ids(&manifest, &ids, &labels, 0.1, 7).unwrap();
        assert_eq!(src, "seeded subset (seed 7)");
        assert!(a.iter().any(|&i| labels[i][0]));
        assert_eq!(fraction_ids(&manifest, &ids, &labels, 0.1, 7).unwrap().0, a);
        // A list that names training studies is used as is.
        std::fs::write(dir.join("manifest.train_10pct.txt"), "s3\ns5\n\n").unwrap();
        let (l, src) = fraction_ids(&manifest, &ids, &labels, 0.1, 7).unwrap();
        assert_eq!(l, [3, 5]);
        assert!(src.ends_with("manifest.train_10pct.txt"), "{src}");
        // A list of unknown IDs falls back to the seeded subset.
        std::fs::write(dir.join("manifest.train_10pct.txt"), "x\n").unwrap();
        assert_eq!(fraction_ids(&manifest, &ids, &labels, 0.1, 7).unwrap().0, a);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn finetune_splits_follow_the_embedded_test_order() {
        let dir = std::env::temp_dir().join(format!("medvlp-eval-ft-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("m.jsonl");
        let studies = [
            study("t1", Split::Train, &[("Edema", 1)]),
            study("v1", Split::Validate, &[("Edema", 0)]),
            study("x1", Split::Test, &[("Edema", 1), ("Mass", 1)]),
            study("x2", Split::Test, &[("Edema", 0), ("Mass", 1)]),
        ];
        let text: String =
            studies.iter().map(|s| serde_json::to_string(s).unwrap() + "\n").collect();
        std::fs::write(&manifest, text).unwrap();
        let test = SplitEmbeddings::new(
            Split::Test,
            &[&studies[3], &studies[2]],
            vec![vec![0.0], vec![1.0]],
            None,
            0,
        );
        let classes: Vec<String> = ["Mass", "Edema"].map(String::from).to_vec();
        let f = FinetuneSplits::new(&manifest, &dir, &test, &classes).unwrap();
        // Mass is positive everywhere in the test split: left out.
        assert_eq!(f.classes, ["Edema"]);
        assert_eq!(f.test.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["x2", "x1"]);
        assert_eq!(f.test_labels, [[false], [true]]);
        assert_eq!(
            (f.train_ids.as_slice(), f.train_labels.as_slice()),
            (&["t1".to_string()][..], &[vec![true]][..])
        );
        assert_eq!(f.val_labels, [[false]]);
        assert_eq!(f.train[0].images[0], dir.join("t1.png"));
        let mass: Vec<String> = vec!["Mass".into()];
        assert!(FinetuneSplits::new(&manifest, &dir, &test, &mass).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
