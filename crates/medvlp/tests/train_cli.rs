//! `medvlp train` end to end on a small generated dataset: the run folder, `final/` as a model
//! directory that `embed` accepts, and exact resume after SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::medvlp;

fn tempdir(tag: &str) -> PathBuf {
    common::tempdir(&format!("train-{tag}"))
}

/// 40 studies (train/validate/test), 48x48 PNGs with a bright disc whose size follows
/// "cardiomegaly", reports saying so, plus image-only and text-only manifests.
fn dataset(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut paired = String::new();
    let mut image_only = String::new();
    let mut text_only = String::new();
    for i in 0..56u32 {
        let big = i % 3 == 0;
        let eff = i % 4 == 1;
        let r = if big { 14.0 } else { 8.0 };
        let img = image::GrayImage::from_fn(48, 48, |x, y| {
            let d = ((x as f32 - 26.0).powi(2) + (y as f32 - 26.0).powi(2)).sqrt();
            let noise = ((x * 7 + y * 13 + i * 31) % 17) as u8;
            let base = if d < r { 200 } else { 60 };
            let fluid = if eff && y > 36 && x < 20 { 80 } else { 0 };
            image::Luma([base + noise + fluid])
        });
        let path = format!("img/{i}.png");
        img.save(dir.join(&path)).unwrap();
        let report = match (big, eff) {
            (true, true) => "The heart is enlarged. Small right pleural effusion.",
            (true, false) => "Cardiomegaly. The lungs are clear. No pleural effusion.",
            (false, true) => "Normal heart size. Right pleural effusion is present.",
            (false, false) => {
                "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal."
            }
        };
        let split = match i % 10 {
            8 => "validate",
            9 => "test",
            _ => "train",
        };
        let labels = serde_json::json!({"Cardiomegaly": big as i8, "Pleural Effusion": eff as i8});
        let row = serde_json::json!({"id": format!("s{i}"), "patient_id": format!("p{i}"), "images": [{"path": path, "view": "PA"}],
            "text": report, "labels": labels, "split": split});
        if i < 40 {
            paired.push_str(&format!("{row}\n"));
        } else if i < 48 {
            let row = serde_json::json!({"id": format!("s{i}"), "images": [{"path": path}], "labels": labels, "split": split});
            image_only.push_str(&format!("{row}\n"));
        } else {
            let row = serde_json::json!({"id": format!("s{i}"), "text": report, "labels": labels, "split": split});
            text_only.push_str(&format!("{row}\n"));
        }
    }
    std::fs::write(dir.join("image_only.jsonl"), image_only).unwrap();
    std::fs::write(dir.join("text_only.jsonl"), text_only).unwrap();
    let m = dir.join("manifest.jsonl");
    std::fs::write(&m, paired).unwrap();
    m
}

fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/xlip-tiny.toml")
}

fn train_cmd(data: &Path, out: &Path, steps: u32) -> Command {
    let mut c = medvlp();
    c.arg("train").arg("--config").arg(config_path()).arg("--out").arg(out).args([
        format!("data.manifest={}", data.join("manifest.jsonl").display()),
        format!("data.image_only={}", data.join("image_only.jsonl").display()),
        format!("data.text_only={}", data.join("text_only.jsonl").display()),
        "data.batch_size=8".into(),
        "data.val_samples=8".into(),
        "data.threads=1".into(),
        "model.vocab_size=200".into(),
        format!("train.steps={steps}"),
        "train.checkpoint_every=4".into(),
        "train.validate_every=8".into(),
        "train.log_every=1".into(),
        "train.warmup_steps=2".into(),
        "seed=3".into(),
    ]);
    c.env("RUST_LOG", "warn");
    c
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "command failed:\n{err}");
    err
}

#[test]
fn train_writes_a_run_folder_and_resumes_exactly_after_sigkill() {
    let tmp = tempdir("run");
    let data = tmp.join("data");
    dataset(&data);
    let steps = 24;

    // Uninterrupted reference run.
    let a = tmp.join("a");
    run_ok(&mut train_cmd(&data, &a, steps));
    for f in [
        "config.toml",
        "metrics.jsonl",
        "tokenizer.json",
        "final/config.json",
        "final/model.safetensors",
        "final/tokenizer.json",
    ] {
        assert!(a.join(f).exists(), "{f} missing from the run folder");
    }
    let resolved = std::fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(
        resolved.contains("steps = 24") && resolved.contains("seed = 3"),
        "overrides not in the resolved config:\n{resolved}"
    );
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("loss").and_then(|x| x.as_f64()))
        .collect();
    assert!(losses.len() >= 20, "expected a loss per step:\n{metrics}");
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(
        metrics.contains("val_loss") && metrics.contains("val_recall@1"),
        "no validation record:\n{metrics}"
    );

    // The same run, killed with SIGKILL once a mid-run checkpoint exists, then resumed.
    let b = tmp.join("b");
    let mut child =
        train_cmd(&data, &b, steps).stderr(std::process::Stdio::null()).spawn().unwrap();
    let ckpt_root = b.join("checkpoints");
    let t0 = std::time::Instant::now();
    loop {
        let have = std::fs::read_dir(&ckpt_root)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("step-")))
            .unwrap_or(false);
        if have || t0.elapsed().as_secs() > 300 {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    let killed = !status.success();
    run_ok(train_cmd(&data, &b, steps).arg("--resume"));
    let wa = std::fs::read(a.join("final/model.safetensors")).unwrap();
    let wb = std::fs::read(b.join("final/model.safetensors")).unwrap();
    assert!(wa == wb, "resumed run (killed: {killed}) differs from the uninterrupted run");
    assert!(killed, "the run finished before it could be killed: the test did not exercise resume");

    // SIGTERM: the run writes a checkpoint, exits cleanly, and resumes to the same weights.
    let c = tmp.join("c");
    let child = train_cmd(&data, &c, steps).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !c.join("checkpoints").exists() && t0.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Interrupted: after the checkpoint, exit 143 (128 + SIGTERM) so that a scheduler can tell
    // it from a finished run; a run that finished before the signal exits 0.
    if err.contains("stopped at step") {
        assert_eq!(out.status.code(), Some(143), "SIGTERM exit code:\n{err}");
    } else {
        assert!(out.status.success() && err.contains("done:"), "{err}");
    }
    run_ok(train_cmd(&data, &c, steps).arg("--resume"));
    assert!(
        std::fs::read(c.join("final/model.safetensors")).unwrap() == wa,
        "run resumed after SIGTERM differs"
    );

    // A damaged newest checkpoint: --resume warns, falls back to the previous one and still
    // reaches the uninterrupted run's weights; metrics keep one record per step (the re-run
    // steps' old records move to metrics.replaced.jsonl); temporaries of a killed run go.
    let d = tmp.join("d");
    copy_dir(&a, &d);
    let _ = std::fs::remove_dir_all(d.join("final"));
    let newest = d.join("checkpoints/step-00000024/model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::create_dir_all(d.join(".best.partial-4242")).unwrap();
    let mut cmd = train_cmd(&data, &d, steps);
    cmd.env("RUST_LOG", "warn").arg("--resume");
    let err = run_ok(&mut cmd);
    assert!(err.contains("step-00000024") && err.contains("damaged"), "{err}");
    assert!(
        std::fs::read(d.join("final/model.safetensors")).unwrap() == wa,
        "fallback resume differs"
    );
    assert!(!d.join(".best.partial-4242").exists(), "temporary folder left behind");
    let steps_logged: Vec<u64> = std::fs::read_to_string(d.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .filter_map(|v| v["step"].as_u64())
        .collect();
    let mut unique = steps_logged.clone();
    unique.dedup();
    assert_eq!(steps_logged, unique, "a step logged twice after resume");
    assert_eq!(steps_logged.len(), 24);
    assert!(std::fs::read_to_string(d.join("metrics.replaced.jsonl"))
        .unwrap()
        .contains("\"step\":24"));

    // A fresh run into a folder that holds a run is refused; --overwrite moves the old one aside.
    let out = train_cmd(&data, &d, steps).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("holds a previous run"), "{err}");
    let metrics_before = std::fs::read(d.join("metrics.jsonl")).unwrap();
    run_ok(train_cmd(&data, &d, 8).arg("--overwrite"));
    let aside: Vec<PathBuf> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("d.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(aside[0].join("metrics.jsonl")).unwrap(), metrics_before);

    // final/ is a model directory the other commands accept.
    let texts = tmp.join("texts.txt");
    std::fs::write(&texts, "Cardiomegaly.\nNo pleural effusion.\n").unwrap();
    run_ok(
        medvlp()
            .args(["embed", "--model"])
            .arg(a.join("final"))
            .arg("--texts")
            .arg(&texts)
            .arg("--output")
            .arg(tmp.join("t.jsonl")),
    );
    run_ok(
        medvlp()
            .args(["embed", "--model"])
            .arg(a.join("final"))
            .arg("--images")
            .arg(data.join("manifest.jsonl"))
            .arg("--output")
            .arg(tmp.join("i.jsonl")),
    );
    let n = std::fs::read_to_string(tmp.join("i.jsonl")).unwrap().lines().count();
    assert_eq!(n, 40);
    run_ok(
        medvlp()
            .args(["embed", "--model"])
            .arg(a.join("final"))
            .arg("--images")
            .arg(data.join("img"))
            .arg("--output")
            .arg(tmp.join("f.jsonl")),
    );
    assert_eq!(std::fs::read_to_string(tmp.join("f.jsonl")).unwrap().lines().count(), 56);

    // ... and the evaluation commands.
    let ev = tmp.join("eval");
    run_ok(
        medvlp()
            .args(["eval", "all", "--model"])
            .arg(a.join("final"))
            .arg("--data")
            .arg(data.join("manifest.jsonl"))
            .args(["--bootstrap", "20", "--fractions", "0.5,1.0", "--out"])
            .arg(&ev),
    );
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(ev.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (task, metric) in [
        ("zero-shot", "auroc_macro"),
        ("linear-probe", "auroc_macro"),
        ("retrieval", "recall@1"),
        ("retrieval", "mean_rank"),
    ] {
        let r = recs
            .iter()
            .find(|r| r["task"] == task && r["metric"] == metric)
            .unwrap_or_else(|| panic!("no {task} {metric} in results"));
        assert!(r["value"].as_f64().unwrap().is_finite());
        assert_eq!(r["split"], "test");
        assert!(r["protocol"]["model"].as_str().unwrap().contains("final"));
    }
    let zs = recs.iter().find(|r| r["task"] == "zero-shot").unwrap();
    assert!(
        zs["protocol"]["prompts"].is_object()
            && !zs["protocol"]["prompt_hashes"].as_object().unwrap().is_empty(),
        "{zs}"
    );
    for f in [
        "summary.md",
        "zero_shot_roc_pos_neg.svg",
        "zero_shot_roc_pos_neg.png",
        "retrieval_recall.svg",
    ] {
        assert!(ev.join(f).exists(), "{f} missing");
    }
    run_ok(
        medvlp()
            .args(["eval", "finetune", "--model"])
            .arg(a.join("final"))
            .arg("--data")
            .arg(data.join("manifest.jsonl"))
            .args(["--bootstrap", "0", "--fractions", "1.0", "--epochs", "2", "--out"])
            .arg(tmp.join("ft")),
    );
    let ft = std::fs::read_to_string(tmp.join("ft/results.jsonl")).unwrap();
    assert!(ft.contains("\"finetune\"") && ft.contains("auroc_macro"), "{ft}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_bad_sample_counts_once_and_a_budget_stop_writes_a_checkpoint_first() {
    let tmp = tempdir("badsample");
    let data = tmp.join("data");
    dataset(&data);
    // One training image of 32 goes missing; 24 steps of 8 pass over it six times.
    std::fs::remove_file(data.join("img/0.png")).unwrap();
    let a = tmp.join("a");
    let err = run_ok(train_cmd(&data, &a, 24).arg("data.max_bad_fraction=0.05"));
    assert!(err.contains("1 bad samples skipped") && err.contains("0.png"), "{err}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "bad_samples")
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["count"], 1);
    assert!(records[0]["new"][0]["sample"].as_str().unwrap().ends_with("0.png"));
    // Past the budget: a checkpoint, then an error naming the file.
    let b = tmp.join("b");
    let out = train_cmd(&data, &b, 24).arg("data.max_bad_fraction=0").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("0.png") && err.contains("max_bad_fraction") && err.contains("--resume"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(b.join("checkpoints")).unwrap().count() >= 1,
        "no checkpoint written"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn train_rejects_bad_config_keys_and_missing_manifest() {
    let tmp = tempdir("bad");
    let out = medvlp()
        .arg("train")
        .arg("--config")
        .arg(config_path())
        .arg("--out")
        .arg(tmp.join("r"))
        .arg("train.stepz=3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("stepz") && !e.contains("panicked"), "{e}");
    let out = medvlp()
        .arg("train")
        .arg("--config")
        .arg(config_path())
        .arg("--out")
        .arg(tmp.join("r"))
        .arg("data.manifest=/nonexistent/m.jsonl")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("/nonexistent/m.jsonl") && !e.contains("panicked"), "{e}");
    // A key the recipe does not read is refused before any work, naming recipe, key and source.
    let out = medvlp()
        .arg("train")
        .arg("--config")
        .arg(config_path())
        .arg("--out")
        .arg(tmp.join("refused"))
        .arg("objectives.memory_query=text")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("recipe 'xlip' does not use objectives.memory_query")
            && e.contains("'objectives.memory_query=text'"),
        "{e}"
    );
    assert!(!tmp.join("refused").exists(), "nothing written for a refused config");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn training_augmentation_is_configurable_and_saved_with_the_model() {
    let tmp = tempdir("augment");
    let data = tmp.join("data");
    dataset(&data);
    let out = tmp.join("r");
    run_ok(
        train_cmd(&data, &out, 0)
            .args(["data.augment.rotation_deg=2.5", "data.augment.rrc_scale=[0.75, 1.0]"]),
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("final/config.json")).unwrap())
            .unwrap();
    let a = &cfg["preprocess"]["augment"];
    assert_eq!(a["rotation_deg"].as_f64(), Some(2.5), "{a}");
    assert_eq!(a["rrc_scale"][0].as_f64(), Some(0.75), "{a}");
    assert_eq!(a["hflip"].as_bool(), Some(false), "{a}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn image_encoder_initialises_from_hf_vit_safetensors() {
    let tmp = tempdir("vitinit");
    let data = tmp.join("data");
    dataset(&data);
    // An HF ViTModel-named file (`vit.` prefix, plus a pooler the model does not have), made from
    // a freshly initialised tiny model with a different seed.
    run_ok(
        medvlp().args(["init", "--preset", "tiny", "--seed", "99", "--out"]).arg(tmp.join("src")),
    );
    let src = candle_core::safetensors::load(
        tmp.join("src/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut vit: std::collections::HashMap<String, candle_core::Tensor> = src
        .iter()
        .filter_map(|(n, t)| {
            n.strip_prefix("vision_model.").map(|s| (format!("vit.{s}"), t.clone()))
        })
        .collect();
    let n_vit = vit.len();
    vit.insert(
        "pooler.dense.weight".into(),
        candle_core::Tensor::zeros((32, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
    );
    let file = tmp.join("vit.safetensors");
    candle_core::safetensors::save(&vit, &file).unwrap();
    let out = tmp.join("run");
    run_ok(train_cmd(&data, &out, 0).arg(format!("model.image_init={}", file.display())));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("init_report.json")).unwrap())
            .unwrap();
    let loaded: Vec<&str> =
        report["loaded"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(loaded.iter().filter(|n| n.starts_with("vision_model.")).count(), n_vit, "{report}");
    assert!(report["initialised"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("text_model.")));
    let got = candle_core::safetensors::load(
        out.join("final/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let name = "vision_model.encoder.layer.1.attention.attention.query.weight";
    let diff = (&got[name] - &src[name])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn quickstart_smoke_run_writes_report_table_and_model() {
    let tmp = tempdir("quickstart");
    let out = tmp.join("qs");
    let mut c = medvlp();
    c.args([
        "quickstart",
        "--preset",
        "tiny",
        "--n",
        "300",
        "--image-only",
        "60",
        "--text-only",
        "60",
        "--budget-minutes",
        "0.1",
        "--bootstrap",
        "10",
        "--pool",
        "40",
        "--compare",
        "clip",
        "--out",
    ])
    .arg(&out);
    let stdout = {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    for row in
        ["zero-shot AUROC, CheXpert-5 macro", "linear probe AUROC, 1% labels", "image->report R@10"]
    {
        let line = stdout
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no row {row}:\n{stdout}"));
        // Three models, each with a number.
        assert_eq!(line.matches('|').count(), 5, "{line}");
        assert!(!line.contains(" - |"), "missing value: {line}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| metric | random init | clip | xlip |"), "{report}");
    // The wall time comes with the CPU it was measured on, and the precision with the budget.
    assert!(report.contains("minutes on ") && report.contains(" threads."), "{report}");
    assert!(report.contains("(bf16)") || report.contains("(fp32)"), "{report}");
    let xlip_config = std::fs::read_to_string(out.join("runs/xlip/config.toml")).unwrap();
    let native = medvlp_model::nn::fused::bf16_gemm::path().native();
    let want = if native { "bf16" } else { "fp32" };
    assert!(xlip_config.contains(&format!("precision = \"{want}\"")), "{xlip_config}");
    for f in [
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "eval/xlip/results.jsonl",
        "eval/xlip/zero_shot_roc_pos_neg.svg",
        "data/manifest.jsonl",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn validation_never_ends_on_a_batch_of_one_study() {
    // 4 validation studies in batches of 3 used to end on a batch of 1: no contrastive pair, no
    // loss, and the run stopped at its first validation.
    let tmp = tempdir("val-one");
    let data = tmp.join("data");
    dataset(&data);
    let out = tmp.join("run");
    let o = train_cmd(&data, &out, 8)
        .args(["data.batch_size=3", "data.val_samples=6"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"kind\":\"validation\""), "{metrics}");
}
