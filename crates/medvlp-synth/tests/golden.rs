//! Golden output of the synthetic benchmark: regenerates a fixed set of configs (every part,
//! every difficulty, 8- and 16-bit PNGs, label noise, follow-ups, the preview grid) at 64 px and
//! compares one SHA-256 over every file written (sorted relative paths + contents) with the
//! recorded digest. Any change to what the generator writes for a given seed, however small,
//! fails here: refactors must keep the random draws in the same order.
//!
//! A second test checks that the configs really exercise every finding, its variants (sides,
//! severities, kinds, devices) and every way a report states it (stated, hedged, label noise), so
//! the digest covers those paths of the phantom and the report writer.
//!
//! The digest also depends on the locked `image`/`png` versions (PNG bytes) and on the platform's
//! `f32` transcendental functions (`exp`, `powf`, `sin`); it was recorded on x86_64 Linux.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use medvlp_synth::findings::{AtelectasisKind, Severity};
use medvlp_synth::{
    generate, plan, report_study, write_preview_grid, Difficulty, Mention, StudyPlan, SynthConfig,
};
use sha2::{Digest, Sha256};

/// Recorded from the pre-move code (`medvlp_data::synth` at commit 4397517 + `cargo fmt`, i.e.
/// 82701c4). It must only change deliberately: when the generator's output for a seed is meant to
/// change (and `SYNTH_VERSION` is bumped with it), never as a side effect of a refactor.
const GOLDEN_SHA256: &str = "b8ebde1860c03cd9a47e93ad94fc6993bb43377f355db7708b1b502d2c72e871";

/// Preview grid tile size.
const TILE: u32 = 64;

/// The fixed configs: (subdirectory, config).
fn configs() -> Vec<(&'static str, SynthConfig)> {
    let base = SynthConfig { size: 64, ..SynthConfig::default() };
    vec![
        (
            "standard",
            SynthConfig {
                n: 1000,
                image_only: 100,
                text_only: 1000,
                seed: 1,
                label_noise: 0.2,
                followup_frac: 0.3,
                ..base.clone()
            },
        ),
        (
            "hard",
            SynthConfig {
                n: 400,
                image_only: 40,
                text_only: 400,
                seed: 2,
                difficulty: Difficulty::Hard,
                bits: 16,
                ..base.clone()
            },
        ),
        (
            "easy",
            SynthConfig {
                n: 120,
                image_only: 20,
                text_only: 20,
                seed: 3,
                difficulty: Difficulty::Easy,
                label_noise: 0.1,
                ..base
            },
        ),
    ]
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// SHA-256 over every file under `root`: for each file in sorted relative-path order, the path
/// (with `/` separators), a NUL, the length as u64 little-endian, then the contents.
fn digest_tree(root: &Path) -> (String, usize) {
    let mut files = Vec::new();
    walk(root, &mut files);
    let mut rel: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|p| {
            let r = p.strip_prefix(root).unwrap();
            let r = r.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>();
            (r.join("/"), p)
        })
        .collect();
    rel.sort();
    let mut h = Sha256::new();
    for (name, path) in &rel {
        let bytes = std::fs::read(path).unwrap();
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (hex, rel.len())
}

#[test]
fn output_matches_the_recorded_digest() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, cfg) in configs() {
        generate(&cfg, &tmp.path().join(name)).unwrap();
    }
    write_preview_grid(&tmp.path().join("preview.png"), TILE).unwrap();
    let (digest, n_files) = digest_tree(tmp.path());
    println!("golden digest {digest} over {n_files} files");
    // 3 configs x (images + 5 metadata files) + the preview grid.
    let expected_files: usize =
        configs().iter().map(|(_, c)| c.n + c.image_only + 5).sum::<usize>() + 1;
    assert_eq!(n_files, expected_files);
    assert_eq!(digest, GOLDEN_SHA256, "the synthetic benchmark's output changed");
}

/// Tags of what a study's image and report contain (finding, variant, report mention).
fn tags(
    p: &StudyPlan,
    mentions: Option<&std::collections::BTreeMap<String, Mention>>,
) -> Vec<String> {
    let f = &p.findings;
    let mut t = vec![format!("view/{:?}", p.acquisition.view)];
    let sev = |s: Severity| format!("{s:?}");
    if let Some(x) = &f.cardiomegaly {
        t.push(format!("cardiomegaly/{}", sev(x.severity)));
    }
    if let Some(x) = &f.effusion {
        t.push(format!("effusion/{}", sev(x.size)));
        t.push(format!("effusion/{:?}", x.side));
    }
    if let Some(x) = &f.pneumothorax {
        t.push(format!("pneumothorax/{}", sev(x.size)));
    }
    if let Some(x) = &f.consolidation {
        t.push(format!("consolidation/{}", sev(x.extent)));
        t.push(format!("consolidation/pneumonia={}", x.pneumonia));
        t.push(format!("consolidation/air_bronchograms={}", x.air_bronchograms));
    }
    if let Some(x) = &f.atelectasis {
        t.push(format!("atelectasis/{:?}", x.kind));
        if x.kind == AtelectasisKind::PlateLike {
            t.push(format!("atelectasis/plate/{:?}", x.side));
        }
    }
    if let Some(x) = &f.edema {
        t.push(format!("edema/{}", sev(x.severity)));
        t.push(format!("edema/kerley={}", x.kerley_lines));
        t.push(format!("edema/congestion={}", x.vascular_congestion));
    }
    if f.nodule.is_some() {
        t.push("nodule".into());
    }
    if f.mass.is_some() {
        t.push("mass".into());
    }
    if f.granuloma.is_some() {
        t.push("granuloma".into());
    }
    if f.devices.et_tube.is_some() {
        t.push("et_tube".into());
    }
    if let Some(x) = &f.devices.central_line {
        t.push(format!("line/{:?}", x.site));
    }
    if let Some(x) = &f.devices.pacemaker {
        t.push(format!("pacemaker/leads={}", x.leads));
    }
    if let Some(x) = &f.fracture {
        t.push(format!("fracture/healing={}", x.healing));
        t.push(format!("fracture/displaced={}", x.displaced));
        t.push(format!("fracture/count={}", x.count));
    }
    if p.prior.is_some() {
        t.push("followup".into());
    }
    for (k, m) in mentions.into_iter().flatten() {
        t.push(format!("mention/{k}/{m:?}"));
    }
    t
}

#[test]
fn golden_configs_cover_every_finding() {
    let mut seen_image: BTreeSet<String> = BTreeSet::new();
    let mut seen_report: BTreeSet<String> = BTreeSet::new();
    let mut parts: BTreeSet<String> = BTreeSet::new();
    let mut difficulties: BTreeSet<&str> = BTreeSet::new();
    for (_, cfg) in configs() {
        difficulties.insert(cfg.difficulty.as_str());
        let plans = plan(&cfg).unwrap();
        for p in &plans {
            parts.insert(format!("{:?}", p.part));
            if p.has_image() {
                seen_image.extend(tags(p, None));
            }
            if p.has_report() {
                let r = report_study(&cfg, &plans, p);
                seen_report.extend(tags(p, Some(&r.mentions)));
            }
        }
    }
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(difficulties.len(), 3);
    let mut required: Vec<String> = Vec::new();
    for s in ["Mild", "Moderate", "Severe"] {
        for k in ["cardiomegaly", "effusion", "pneumothorax", "consolidation", "edema"] {
            required.push(format!("{k}/{s}"));
        }
    }
    for x in [
        "view/Pa",
        "view/Ap",
        "effusion/Left",
        "effusion/Right",
        "effusion/Bilateral",
        "consolidation/pneumonia=true",
        "consolidation/pneumonia=false",
        "consolidation/air_bronchograms=true",
        "atelectasis/Lobar",
        "atelectasis/PlateLike",
        "atelectasis/plate/Left",
        "atelectasis/plate/Right",
        "atelectasis/plate/Bilateral",
        "edema/kerley=true",
        "edema/congestion=true",
        "nodule",
        "mass",
        "granuloma",
        "et_tube",
        "line/InternalJugular",
        "line/Subclavian",
        "pacemaker/leads=1",
        "pacemaker/leads=2",
        "fracture/healing=true",
        "fracture/healing=false",
        "fracture/displaced=true",
        "fracture/displaced=false",
        "fracture/count=1",
        "fracture/count=2",
        "fracture/count=3",
        "followup",
    ] {
        required.push(x.to_string());
    }
    let missing_image: Vec<&String> =
        required.iter().filter(|r| !seen_image.contains(*r)).collect();
    let mut required_report = required.clone();
    // Every way of stating every finding (devices are never hedged or left out, granulomas
    // never hedged as subtle).
    required_report.push("mention/devices/Stated".to_string());
    for k in medvlp_synth::report::KINDS.iter().filter(|k| **k != "devices") {
        for m in ["Stated", "Hedged", "NoiseHedged", "NoiseOmitted"] {
            if !(*k == "granuloma" && m == "Hedged") {
                required_report.push(format!("mention/{k}/{m}"));
            }
        }
    }
    let missing_report: Vec<&String> =
        required_report.iter().filter(|r| !seen_report.contains(*r)).collect();
    assert!(missing_image.is_empty(), "not in any image: {missing_image:?}");
    assert!(missing_report.is_empty(), "not in any report: {missing_report:?}");
}
