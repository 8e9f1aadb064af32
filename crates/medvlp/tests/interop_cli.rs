//! Imported checkpoints through the commands: `embed` (texts and images), `inspect`, `preview
//! --model`, `compare --models` on one synthetic manifest, `export` and `hf:` specs without a hub.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::run_ok;

fn medvlp() -> Command {
    let mut c = common::medvlp();
    c.env("RUST_LOG", "warn");
    c
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../medvlp-model/tests/data/interop").join(name)
}

fn read_embeddings(p: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        })
        .collect()
}

#[test]
fn imported_checkpoints_work_in_every_command() {
    let tmp = common::tempdir("interop-cli");
    let ds = tmp.join("ds");
    run_ok(medvlp().args(["synth", "--n", "60", "--size", "64", "--seed", "3", "--out"]).arg(&ds));
    let manifest = ds.join("manifest.jsonl");
    let texts = tmp.join("texts.txt");
    std::fs::write(
        &texts,
        "No acute cardiopulmonary process.\nSmall right pleural effusion. XXXX ___\n",
    )
    .unwrap();
    for (name, dim) in [
        ("clip_openai", 32),
        ("clip_hf", 32),
        ("open_clip_timm_hf", 32),
        ("resnet_bert_mgca", 16),
        ("hf_dual_encoder", 32),
    ] {
        let out = tmp.join(format!("{name}-texts.jsonl"));
        run_ok(
            medvlp()
                .args(["embed", "--model"])
                .arg(fixture(name))
                .arg("--texts")
                .arg(&texts)
                .arg("--output")
                .arg(&out),
        );
        let e = read_embeddings(&out);
        assert_eq!(e.len(), 2, "{name}");
        for row in &e {
            assert_eq!(row.len(), dim, "{name}");
            assert!(
                (row.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4,
                "{name}: normalised"
            );
        }
        let out = tmp.join(format!("{name}-images.jsonl"));
        run_ok(
            medvlp()
                .args(["embed", "--model"])
                .arg(fixture(name))
                .arg("--images")
                .arg(&manifest)
                .arg("--output")
                .arg(&out),
        );
        assert_eq!(read_embeddings(&out).len(), 60, "{name}");
        let s = run_ok(medvlp().arg("inspect").arg(fixture(name)).arg("--summary"));
        assert!(s.contains("imported") && s.contains("preprocess"), "{s}");
    }
    let s = run_ok(
        medvlp()
            .args(["preview"])
            .arg(ds.join("images/s0000000.png"))
            .arg("--model")
            .arg(fixture("clip_hf"))
            .arg("--out")
            .arg(tmp.join("p.png")),
    );
    assert!(s.contains("3 channel(s)") && s.contains("0.48145"), "CLIP preprocessing: {s}");

    let models =
        format!("{},{}", fixture("clip_hf").display(), fixture("resnet_bert_mgca").display());
    let cmp = tmp.join("cmp");
    let s = run_ok(
        medvlp()
            .args(["compare", "--models", &models, "--data"])
            .arg(&manifest)
            .args(["--pool", "10", "--bootstrap", "20", "--out"])
            .arg(&cmp),
    );
    let table: Vec<&str> = s.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 4, "{s}");
    assert!(table[2].contains("clip_hf") && table[3].contains("resnet_bert_mgca"), "{s}");
    assert!(std::fs::read_to_string(cmp.join("compare.md")).unwrap().contains("--models"));
    assert!(cmp.join("eval").read_dir().unwrap().count() == 2);
}

#[test]
fn hub_specs_without_network_say_where_to_put_the_files() {
    let tmp = common::tempdir("interop-hub");
    let out = medvlp()
        .env("HF_HOME", &tmp)
        .env("HF_HUB_OFFLINE", "1")
        .args(["inspect", "hf:medvlp-test/nothing-here"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !e.contains("panicked"), "{e}");
    assert!(
        e.contains("medvlp-test/nothing-here") && e.contains("models--medvlp-test--nothing-here"),
        "{e}"
    );
}

#[test]
fn export_refuses_a_non_empty_folder_and_inexpressible_models() {
    let tmp = common::tempdir("interop-export");
    let tok = fixture("hf_dual_encoder/tokenizer.json");
    let m = tmp.join("m");
    run_ok(
        medvlp().args(["init", "--preset", "tiny", "--out"]).arg(&m).arg("--tokenizer").arg(&tok),
    );
    let out = medvlp()
        .args(["export", "--format", "hf", "--model"])
        .arg(&m)
        .arg("--out")
        .arg(tmp.join("hf"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && e.contains("cannot be exported to transformers")
            && e.contains("mean-pools"),
        "{e}"
    );
    let oc = tmp.join("oc");
    let s = run_ok(
        medvlp().args(["export", "--format", "open_clip", "--model"]).arg(&m).arg("--out").arg(&oc),
    );
    assert!(s.contains("local-dir:") && oc.join("open_clip_config.json").exists(), "{s}");
    let out = medvlp()
        .args(["export", "--format", "open_clip", "--model"])
        .arg(&m)
        .arg("--out")
        .arg(&oc)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    // The export reads back as an open_clip model.
    let s = run_ok(medvlp().arg("inspect").arg(&oc).arg("--summary"));
    assert!(s.contains("open_clip"), "{s}");
}
