//! Datasets: the manifest format, one adapter per public chest X-ray dataset, and `prepare`,
//! which runs an adapter and writes the manifest, a summary, the split and label-fraction lists.
//!
//! Adapters stream studies into a [`Sink`] so that a MIMIC-sized dataset is written as it is read
//! (memory holds the label tables and study ids, not the reports).

pub mod chexpert;
pub mod covidx;
pub mod generic;
pub mod iu_xray;
pub mod manifest;
pub mod mimic;
pub mod nih;
pub mod padchest;
pub mod rsna;
pub mod sections;
pub mod siim;
pub mod vindr;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

pub use crate::hash::{hash64, unit_hash};
use anyhow::{bail, Context, Result};
use serde::Serialize;

pub use manifest::{read_manifest, ImageRef, ManifestReader, ManifestWriter, Split, Study};

/// Which images to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViewFilter {
    #[default]
    All,
    Frontal,
    Pa,
    Ap,
}

impl std::str::FromStr for ViewFilter {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "all" => ViewFilter::All,
            "frontal" => ViewFilter::Frontal,
            "pa" => ViewFilter::Pa,
            "ap" => ViewFilter::Ap,
            _ => bail!("unknown view filter {s:?} (frontal|pa|ap|all)"),
        })
    }
}

/// Normalised view family of a dataset's view string.
pub fn view_family(view: &str) -> Option<&'static str> {
    let v = view.trim().to_ascii_uppercase();
    if v == "PA" || v.starts_with("PA ") || v == "POSTEROANTERIOR" || v == "POSTERO-ANTERIOR" {
        Some("PA")
    } else if v == "AP"
        || v.starts_with("AP_")
        || v.starts_with("AP ")
        || v == "ANTEROPOSTERIOR"
        || v == "ANTERO-POSTERIOR"
    {
        Some("AP")
    } else if v == "FRONTAL" {
        Some("FRONTAL")
    } else if v == "LATERAL"
        || v == "LL"
        || v == "RL"
        || v == "L"
        || v == "LAT"
        || v.starts_with("LATERAL")
    {
        Some("LATERAL")
    } else {
        None
    }
}

impl ViewFilter {
    pub fn keeps(self, view: Option<&str>) -> bool {
        let fam = view.and_then(view_family);
        match self {
            ViewFilter::All => true,
            ViewFilter::Frontal => matches!(fam, Some("PA" | "AP" | "FRONTAL")),
            ViewFilter::Pa => fam == Some("PA"),
            ViewFilter::Ap => fam == Some("AP"),
        }
    }
}

/// CheXpert-style handling of uncertain (-1) labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UncertaintyPolicy {
    /// Keep -1 in the manifest (the loss decides).
    #[default]
    Keep,
    /// U-Ignore: drop the label (masked, like "not mentioned").
    Ignore,
    /// U-Zeros: -1 -> 0.
    Zeros,
    /// U-Ones: -1 -> 1.
    Ones,
}

impl std::str::FromStr for UncertaintyPolicy {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "keep" | "umulticlass" | "multiclass" => UncertaintyPolicy::Keep,
            "uignore" | "ignore" => UncertaintyPolicy::Ignore,
            "uzeros" | "zeros" | "uzeroes" => UncertaintyPolicy::Zeros,
            "uones" | "ones" => UncertaintyPolicy::Ones,
            _ => bail!("unknown uncertainty policy {s:?} (keep|u-ignore|u-zeros|u-ones)"),
        })
    }
}

impl UncertaintyPolicy {
    pub fn apply(self, labels: &mut BTreeMap<String, i8>) {
        match self {
            UncertaintyPolicy::Keep => {}
            UncertaintyPolicy::Ignore => labels.retain(|_, v| *v != -1),
            UncertaintyPolicy::Zeros => {
                labels.values_mut().filter(|v| **v == -1).for_each(|v| *v = 0)
            }
            UncertaintyPolicy::Ones => {
                labels.values_mut().filter(|v| **v == -1).for_each(|v| *v = 1)
            }
        }
    }
}

/// Options of `prepare`.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub dataset: String,
    pub root: PathBuf,
    pub out: PathBuf,
    pub views: ViewFilter,
    pub seed: u64,
    pub uncertainty: UncertaintyPolicy,
    /// Fractions of patients for validate/test when the dataset has no official split.
    pub val_frac: f64,
    pub test_frac: f64,
    /// MIMIC: use the NegBio labels instead of CheXpert labeller ones.
    pub negbio: bool,
    /// Generic adapter: input file and column names.
    pub generic: generic::GenericColumns,
}

impl PrepareOptions {
    pub fn new(dataset: &str, root: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        PrepareOptions {
            dataset: dataset.to_string(),
            root: root.into(),
            out: out.into(),
            views: ViewFilter::All,
            seed: 0,
            uncertainty: UncertaintyPolicy::Keep,
            val_frac: 0.1,
            test_frac: 0.1,
            negbio: false,
            generic: Default::default(),
        }
    }
}

pub const DATASETS: &[&str] = &[
    "mimic", "chexpert", "nih", "rsna", "siim", "covidx", "vindr", "padchest", "iu-xray", "generic",
];

/// Counts written to `<out>.summary.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub dataset: String,
    pub manifest: String,
    pub studies: usize,
    pub images: usize,
    pub patients: usize,
    pub splits: BTreeMap<String, usize>,
    pub official_split: bool,
    /// label -> {"1": n, "0": n, "-1": n}
    pub labels: BTreeMap<String, BTreeMap<String, usize>>,
    /// reason -> count
    pub dropped: BTreeMap<String, usize>,
    /// reason -> up to 5 examples (file:line or id)
    pub dropped_examples: BTreeMap<String, Vec<String>>,
    pub label_fraction_lists: BTreeMap<String, String>,
}

/// Receives studies from an adapter: filters views, enforces the report rule, assigns splits,
/// writes the manifest and counts.
pub struct Sink {
    opts: PrepareOptions,
    writer: ManifestWriter,
    /// The adapter's dataset has reports: a study with neither findings nor impression is dropped.
    pub has_reports: bool,
    pub official_split: bool,
    summary: Summary,
    patients: HashSet<String>,
    seen_ids: HashSet<String>,
    train_ids: Vec<String>,
}

impl Sink {
    fn new(opts: PrepareOptions) -> Result<Self> {
        let writer = ManifestWriter::create(&opts.out)?;
        Ok(Sink {
            summary: Summary {
                dataset: opts.dataset.clone(),
                manifest: opts.out.display().to_string(),
                ..Default::default()
            },
            opts,
            writer,
            has_reports: false,
            official_split: false,
            patients: HashSet::new(),
            seen_ids: HashSet::new(),
            train_ids: Vec::new(),
        })
    }

    pub fn options(&self) -> &PrepareOptions {
        &self.opts
    }

    /// Record a dropped row/study with its reason and where it came from.
    pub fn drop(&mut self, reason: &str, at: impl std::fmt::Display) {
        *self.summary.dropped.entry(reason.to_string()).or_default() += 1;
        let ex = self.summary.dropped_examples.entry(reason.to_string()).or_default();
        if ex.len() < 5 {
            ex.push(at.to_string());
        }
    }

    /// Emit one study (filters, split and writing happen here).
    pub fn emit(&mut self, mut s: Study) -> Result<()> {
        if !self.seen_ids.insert(s.id.clone()) {
            self.drop("duplicate study id", &s.id);
            return Ok(());
        }
        let views = self.opts.views;
        let before = s.images.len();
        s.images.retain(|im| views.keeps(im.view.as_deref()));
        if before > 0 && s.images.is_empty() {
            self.drop("no image with the requested view", &s.id);
            return Ok(());
        }
        s.sections.retain(|_, v| !v.trim().is_empty());
        if self.has_reports {
            match s.findings_impression() {
                Some(t) => s.text = Some(t),
                None => {
                    self.drop("no findings or impression", &s.id);
                    return Ok(());
                }
            }
        }
        self.opts.uncertainty.apply(&mut s.labels);
        if s.split.is_none() {
            let key = s.patient_id.as_deref().unwrap_or(&s.id);
            let u = unit_hash(self.opts.seed, key);
            s.split = Some(if u < self.opts.test_frac {
                Split::Test
            } else if u < self.opts.test_frac + self.opts.val_frac {
                Split::Validate
            } else {
                Split::Train
            });
        }
        let split = s.split.unwrap_or(Split::Train);
        *self.summary.splits.entry(split.as_str().to_string()).or_default() += 1;
        if split == Split::Train {
            self.train_ids.push(s.id.clone());
        }
        self.summary.studies += 1;
        self.summary.images += s.images.len();
        if let Some(p) = &s.patient_id {
            if !self.patients.contains(p) {
                self.patients.insert(p.clone());
            }
        }
        for (k, v) in &s.labels {
            *self.summary.labels.entry(k.clone()).or_default().entry(v.to_string()).or_default() +=
                1;
        }
        self.writer.write(&s)
    }

    fn finish(mut self) -> Result<Summary> {
        self.writer.finish()?;
        self.summary.patients = self.patients.len();
        self.summary.official_split = self.official_split;
        // Label fractions: train studies ranked by a seeded hash; the 1% list is a prefix of the 10%.
        let seed = self.opts.seed;
        let mut ranked: Vec<(u64, &String)> =
            self.train_ids.iter().map(|id| (hash64(seed ^ 0x5eed_f4ac, id), id)).collect();
        ranked.sort();
        for (name, frac) in [("1pct", 0.01), ("10pct", 0.10)] {
            let n = ((ranked.len() as f64 * frac).ceil() as usize).min(ranked.len());
            let path = sibling(&self.opts.out, &format!("train_{name}.txt"));
            let mut ids: Vec<&str> = ranked[..n].iter().map(|(_, id)| id.as_str()).collect();
            ids.sort_unstable();
            let mut text = ids.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            self.summary.label_fraction_lists.insert(name.to_string(), path.display().to_string());
        }
        let sp = sibling(&self.opts.out, "summary.json");
        std::fs::write(&sp, serde_json::to_string_pretty(&self.summary)?)
            .with_context(|| format!("cannot write {}", sp.display()))?;
        Ok(self.summary)
    }
}

/// `<dir>/<stem>.<suffix>` next to the manifest.
pub fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "manifest".into());
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// Run the adapter named in `opts.dataset`.
pub fn prepare(opts: PrepareOptions) -> Result<Summary> {
    if !opts.root.is_dir() {
        bail!("dataset root {} is not a directory", opts.root.display());
    }
    let name = opts.dataset.to_ascii_lowercase();
    let mut sink = Sink::new(opts)?;
    match name.as_str() {
        "mimic" | "mimic-cxr" => mimic::run(&mut sink)?,
        "chexpert" => chexpert::run(&mut sink)?,
        "nih" | "chestx-ray14" | "nih-cxr14" => nih::run(&mut sink)?,
        "rsna" | "rsna-pneumonia" => rsna::run(&mut sink)?,
        "siim" | "siim-acr" => siim::run(&mut sink)?,
        "covidx" => covidx::run(&mut sink)?,
        "vindr" | "vindr-cxr" | "vinbigdata" => vindr::run(&mut sink)?,
        "padchest" => padchest::run(&mut sink)?,
        "iu-xray" | "iu" | "openi" => iu_xray::run(&mut sink)?,
        "generic" => generic::run(&mut sink)?,
        other => bail!("unknown dataset {other:?}; one of {}", DATASETS.join(", ")),
    }
    sink.finish()
}

// ---------- helpers shared by adapters ----------

/// Open a file, transparently gunzipping `.gz`.
pub fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, f))))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
    }
}

/// First existing `root/<name>` or `root/<name>.gz` among candidates.
pub fn find_file(root: &Path, candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        for p in [root.join(c), root.join(format!("{c}.gz"))] {
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// First file under `root` (recursively, depth <= 3) whose name matches `pred`.
pub fn find_file_by(root: &Path, pred: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    fn walk(dir: &Path, depth: usize, pred: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in &entries {
            if p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(pred) {
                return Some(p.clone());
            }
        }
        if depth == 0 {
            return None;
        }
        entries.iter().filter(|p| p.is_dir()).find_map(|p| walk(p, depth - 1, pred))
    }
    walk(root, 3, pred)
}

/// Map file name -> path relative to `root`, for every file under `root` with one of `exts`.
/// Unreadable directories are skipped with a warning.
pub fn index_files(root: &Path, exts: &[&str]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", dir.display());
                continue;
            }
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                let lower = name.to_ascii_lowercase();
                if exts.iter().any(|x| lower.ends_with(x)) {
                    let rel =
                        p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/");
                    out.insert(name.to_string(), rel);
                }
            }
        }
    }
    out
}

/// A CSV reader over a plain or gzipped file.
pub type CsvReader = csv::Reader<Box<dyn Read>>;

/// A CSV reader that tolerates ragged rows, and the header names trimmed (SIIM's
/// ` EncodedPixels` has a leading space; a UTF-8 BOM is dropped).
pub fn csv_reader(path: &Path) -> Result<(CsvReader, Vec<String>)> {
    let mut r = csv::ReaderBuilder::new().flexible(true).from_reader(open_maybe_gz(path)?);
    let headers = r
        .headers()
        .with_context(|| format!("{}: cannot read CSV header", path.display()))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_string())
        .collect();
    Ok((r, headers))
}

/// Index of a column by (trimmed) name, with a clear error.
pub fn col(headers: &[String], path: &Path, names: &[&str]) -> Result<usize> {
    names.iter().find_map(|n| headers.iter().position(|h| h.eq_ignore_ascii_case(n))).with_context(
        || format!("{}: no column {:?} in header {:?}", path.display(), names, headers),
    )
}

/// Parse a label cell: "1"/"1.0" -> 1, "0"/"0.0" -> 0, "-1"/"-1.0" -> -1, blank -> None.
pub fn parse_label(cell: &str) -> Result<Option<i8>, String> {
    let c = cell.trim();
    if c.is_empty() || c.eq_ignore_ascii_case("nan") {
        return Ok(None);
    }
    match c.parse::<f64>().ok().map(|v| (v as i8, v)) {
        Some((x @ -1..=1, v)) if x as f64 == v => Ok(Some(x)),
        _ => Err(format!("bad label value {c:?}")),
    }
}

/// "file:line" for messages (line = 1-based physical line of the CSV record).
pub fn at(path: &Path, rec: &csv::StringRecord) -> String {
    let line = rec.position().map(|p| p.line()).unwrap_or(0);
    format!("{}:{}", path.display(), line)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// Run prepare on `root` and read the manifest back.
    pub fn run(opts: PrepareOptions) -> (Summary, Vec<Study>) {
        let out = opts.out.clone();
        let s = prepare(opts).unwrap();
        (s, read_manifest(&out).unwrap())
    }

    pub fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn copy_asset(asset: &str, root: &Path, rel: &str) -> bool {
        match crate::assets::asset_path(asset) {
            Some(p) => {
                write(root, rel, &std::fs::read(p).unwrap());
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_and_policies() {
        assert!(ViewFilter::Frontal.keeps(Some("PA")));
        assert!(ViewFilter::Frontal.keeps(Some("AP_horizontal")));
        assert!(ViewFilter::Frontal.keeps(Some("POSTEROANTERIOR")));
        assert!(!ViewFilter::Frontal.keeps(Some("LATERAL")));
        assert!(!ViewFilter::Frontal.keeps(None));
        assert!(ViewFilter::Pa.keeps(Some("pa")) && !ViewFilter::Pa.keeps(Some("AP")));
        assert!(ViewFilter::All.keeps(None));
        let mut l: BTreeMap<String, i8> = [("a".to_string(), -1), ("b".to_string(), 1)].into();
        let mut z = l.clone();
        UncertaintyPolicy::Zeros.apply(&mut z);
        assert_eq!(z["a"], 0);
        let mut o = l.clone();
        "U-Ones".parse::<UncertaintyPolicy>().unwrap().apply(&mut o);
        assert_eq!(o["a"], 1);
        UncertaintyPolicy::Ignore.apply(&mut l);
        assert!(!l.contains_key("a") && l["b"] == 1);
    }

    #[test]
    fn hashes_are_stable_and_uniformish() {
        assert_eq!(hash64(0, "abc"), hash64(0, "abc"));
        assert_ne!(hash64(0, "abc"), hash64(1, "abc"));
        let n = 10_000;
        let below = (0..n).filter(|i| unit_hash(3, &i.to_string()) < 0.1).count();
        assert!((800..1200).contains(&below), "{below}");
        assert_eq!(parse_label("-1.0"), Ok(Some(-1)));
        assert_eq!(parse_label(""), Ok(None));
        assert!(parse_label("2").is_err());
    }
}
