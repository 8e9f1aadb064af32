//! End-to-end checks of the `medvlp` commands of the foundation: embed, inspect, init, tokenizer.

use medvlp_data::assets::asset_path;
use std::path::{Path, PathBuf};

mod common;
use common::{medvlp, run_ok};

fn tempdir(tag: &str) -> PathBuf {
    common::tempdir(&format!("cli-{tag}"))
}

fn read_embeddings(path: &Path) -> Vec<(serde_json::Value, Vec<f32>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let e = v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (v["id"].clone(), e)
        })
        .collect()
}

#[test]
fn embed_reproduces_minilm_reference_sentence_embeddings() {
    let Some(dir) = asset_path("minilm") else { return };
    let refs = candle_core::safetensors::load(
        dir.join("reference_outputs.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let meta =
        medvlp_model::model_dir::weights_metadata(&dir.join("reference_outputs.safetensors"))
            .unwrap();
    let sentences: Vec<String> = serde_json::from_str(&meta["sentences"]).unwrap();
    let expect: Vec<Vec<f32>> = refs["sentence_embedding"].to_vec2().unwrap();
    let tmp = tempdir("embed");
    // JSONL input with ids; one malformed line in the middle is skipped, not fatal.
    let mut lines: Vec<String> = sentences
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"id": format!("s{i}"), "text": s}).to_string())
        .collect();
    lines.insert(2, "{\"id\": \"broken\", \"text\": ".to_string());
    let input = tmp.join("texts.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = tmp.join("emb.jsonl");
    run_ok(
        medvlp()
            .args(["embed", "--model"])
            .arg(&dir)
            .arg("--texts")
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .args(["--batch-size", "3"]),
    );
    let got = read_embeddings(&out);
    assert_eq!(got.len(), 4);
    for (i, (id, e)) in got.iter().enumerate() {
        assert_eq!(id, &serde_json::json!(format!("s{i}")));
        let cos: f32 = e.iter().zip(&expect[i]).map(|(a, b)| a * b).sum();
        assert!(cos >= 0.99999, "sentence {i}: cosine {cos}");
    }
    // Plain text: ids are line numbers.
    let plain = tmp.join("texts.txt");
    std::fs::write(&plain, sentences.join("\n")).unwrap();
    run_ok(
        medvlp()
            .args(["embed", "--model"])
            .arg(&dir)
            .arg("--texts")
            .arg(&plain)
            .arg("--output")
            .arg(&out),
    );
    let got = read_embeddings(&out);
    assert_eq!(got[3].0, serde_json::json!(4));
    let cos: f32 = got[3].1.iter().zip(&expect[3]).map(|(a, b)| a * b).sum();
    assert!(cos >= 0.99999);
    // A line that is not UTF-8 is reported with its line number and skipped, as `label` does.
    let mut bytes = sentences[0].as_bytes().to_vec();
    bytes.extend_from_slice(b"\n\xff\xfe broken\n");
    bytes.extend_from_slice(sentences[1].as_bytes());
    std::fs::write(&plain, bytes).unwrap();
    let o = medvlp()
        .args(["embed", "--model"])
        .arg(&dir)
        .arg("--texts")
        .arg(&plain)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && e.contains("texts.txt:2: not valid UTF-8"), "{e}");
    let got = read_embeddings(&out);
    assert_eq!(
        got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
        [serde_json::json!(1), serde_json::json!(3)]
    );
}

#[test]
fn inspect_reads_hf_bert_and_medvlp_directories() {
    let tmp = tempdir("inspect");
    let model = tmp.join("model");
    let corpus = tmp.join("reports.txt");
    let text: String = (0..50)
        .map(|i| {
            format!(
                "Report {i}: small left pleural effusion, no pneumothorax. Heart size is normal.\n"
            )
        })
        .collect();
    std::fs::write(&corpus, text).unwrap();
    let tok = tmp.join("tokenizer.json");
    run_ok(
        medvlp()
            .args(["tokenizer", "train", "--input"])
            .arg(&corpus)
            .args(["--vocab-size", "120", "--out"])
            .arg(&tok),
    );
    assert!(tok.exists());
    run_ok(
        medvlp()
            .args(["init", "--preset", "tiny", "--out"])
            .arg(&model)
            .arg("--tokenizer")
            .arg(&tok),
    );
    let s = run_ok(medvlp().arg("inspect").arg(&model));
    assert!(s.contains("medvlp model"), "{s}");
    assert!(s.contains("vision_model.encoder"), "{s}");
    assert!(s.contains("text_model.embeddings.word_embeddings.weight"), "{s}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let vocab = cfg["text_config"]["vocab_size"].as_u64().unwrap();
    assert!(vocab <= 120 && vocab > 20, "vocab {vocab}");
    // The medvlp model embeds texts too (joint-space, unit norm).
    let input = tmp.join("t.txt");
    std::fs::write(&input, "small left pleural effusion\nno pneumothorax\n").unwrap();
    let out = tmp.join("e.jsonl");
    run_ok(
        medvlp()
            .args(["embed", "--model"])
            .arg(&model)
            .arg("--texts")
            .arg(&input)
            .arg("--output")
            .arg(&out),
    );
    let got = read_embeddings(&out);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1.len(), cfg["projection_dim"].as_u64().unwrap() as usize);
    let norm: f32 = got[0].1.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);

    if let Some(dir) = asset_path("minilm") {
        let s = run_ok(medvlp().arg("inspect").arg(&dir).arg("--summary"));
        assert!(s.contains("Hugging Face BERT"), "{s}");
        assert!(s.contains("encoder") && s.contains("22713728"), "{s}");
    }
}

#[test]
fn init_from_hf_bert_reports_loaded_and_new_tensors() {
    let Some(dir) = asset_path("minilm") else { return };
    let tmp = tempdir("init-hf");
    let model = tmp.join("m");
    let out = medvlp()
        .args(["init", "--preset", "tiny", "--out"])
        .arg(&model)
        .arg("--text-init")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    // 6 layers x 16 + 5 embedding tensors come from the checkpoint; the pooler is not used.
    assert!(err.contains("101 tensors loaded"), "{err}");
    assert!(err.contains("pooler.dense.weight"), "{err}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["text_config"]["hidden_size"], 384);
}

#[test]
fn bad_inputs_fail_cleanly_with_the_file_named() {
    let tmp = tempdir("bad");
    let out = medvlp().args(["inspect"]).arg(tmp.join("missing")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    let empty = tmp.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = medvlp()
        .args(["tokenizer", "train", "--input"])
        .arg(&empty)
        .arg("--out")
        .arg(tmp.join("t.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("empty.txt") && !e.contains("panicked"), "{e}");
}

#[test]
fn label_writes_labels_and_entities_and_reports_bad_lines() {
    let tmp = tempdir("label");
    let input = tmp.join("reports.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"text\": \"FINDINGS: Moderate cardiomegaly. No pleural effusion. Possible left lower lobe atelectasis.\"}\n{broken\n{\"id\": 7, \"text\": \"XXXX sternotomy wires. No acute cardiopulmonary abnormality.\"}\n",
    )
    .unwrap();
    let out = tmp.join("labels.jsonl");
    let err =
        medvlp().args(["label", "--input"]).arg(&input).arg("--output").arg(&out).output().unwrap();
    assert!(err.status.success(), "{}", String::from_utf8_lossy(&err.stderr));
    assert!(String::from_utf8_lossy(&err.stderr).contains("reports.jsonl:2"), "bad line not named");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[0]["labels"]["Cardiomegaly"], 1);
    assert_eq!(lines[0]["labels"]["Pleural Effusion"], 0);
    assert_eq!(lines[0]["labels"]["Atelectasis"], -1);
    let e = &lines[0]["entities"][0];
    let text = "FINDINGS: Moderate cardiomegaly. No pleural effusion. Possible left lower lobe atelectasis.";
    let (s, t) = (e["start"].as_u64().unwrap() as usize, e["end"].as_u64().unwrap() as usize);
    assert_eq!(&text[s..t], e["text"].as_str().unwrap());
    assert_eq!(lines[1]["id"], 7);
    assert_eq!(lines[1]["labels"]["Support Devices"], 1);
    // An output that names the input (here through a different spelling) is refused, the input
    // left as it was.
    let before = std::fs::read(&input).unwrap();
    let same = tmp.join(".").join("reports.jsonl");
    for cmd in [
        medvlp().args(["label", "--input"]).arg(&input).arg("--output").arg(&same).output(),
        medvlp()
            .args(["embed", "--model", "/nonexistent", "--texts"])
            .arg(&input)
            .arg("--output")
            .arg(&same)
            .output(),
    ] {
        let o = cmd.unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains("is the input file"), "{e}");
    }
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn prompts_list_and_show() {
    let list = run_ok(medvlp().args(["prompts", "list"]));
    for name in [
        "chexpert5",
        "chexpert14",
        "nih14",
        "rsna_pneumonia",
        "siim_pneumothorax",
        "covidx",
        "disease",
    ] {
        assert!(list.contains(name), "{name} missing:\n{list}");
    }
    let show = run_ok(medvlp().args(["prompts", "show", "chexpert5"]));
    assert!(show.contains("[Cardiomegaly]") && show.contains("ensemble"), "{show}");
    let out = medvlp().args(["prompts", "show", "/nonexistent.toml"]).output().unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nonexistent.toml")
    );
}

#[test]
fn synth_writes_a_small_benchmark_and_rejects_bad_input() {
    let tmp = tempdir("synth");
    let out = tmp.join("ds");
    let grid = tmp.join("grid.png");
    let stdout = run_ok(
        medvlp()
            .args([
                "synth",
                "--n",
                "12",
                "--image-only",
                "3",
                "--text-only",
                "2",
                "--size",
                "64",
                "--seed",
                "5",
                "--difficulty",
                "easy",
                "--out",
            ])
            .arg(&out)
            .arg("--preview")
            .arg(&grid),
    );
    assert!(stdout.contains("\"paired\": 12"), "{stdout}");
    let m = medvlp_data::dataset::read_manifest(out.join("manifest.jsonl")).unwrap();
    assert_eq!(m.len(), 12);
    assert!(m.iter().all(|s| out.join(&s.images[0].path).exists() && s.text.is_some()));
    assert_eq!(std::fs::read_to_string(out.join("text_only.jsonl")).unwrap().lines().count(), 2);
    assert_eq!(
        std::fs::read_to_string(out.join("ground_truth.jsonl")).unwrap().lines().count(),
        17
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("synth.json")).unwrap()).unwrap();
    assert_eq!(meta["config"]["difficulty"], "easy");
    assert!(image::open(&grid).is_ok());

    let fail = |args: &[&str], out: &Path, want: &str| {
        let o = medvlp().args(["synth"]).args(args).arg("--out").arg(out).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains(want) && !e.contains("panicked"),
            "{args:?}: {e}"
        );
    };
    fail(&["--n", "0"], &tmp.join("x"), "--n");
    fail(&["--n", "2", "--size", "32"], &tmp.join("x"), "size");
    fail(&["--n", "2", "--bits", "12"], &tmp.join("x"), "bits");
    fail(&["--n", "2", "--difficulty", "extreme"], &tmp.join("x"), "extreme");
    std::fs::write(tmp.join("file.txt"), "").unwrap();
    fail(&["--n", "2", "--size", "64"], &tmp.join("file.txt").join("sub"), "file.txt");
}

#[test]
fn eval_rejects_bad_inputs_with_clear_errors() {
    let tmp = tempdir("evalbad");
    let fails = |args: &[&str], want: &str| {
        let out = medvlp().args(args).output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && e.contains(want) && !e.contains("panicked"),
            "{args:?}: {e}"
        );
    };
    let m = tmp.join("m.jsonl");
    std::fs::write(
        &m,
        "{\"id\": \"a\", \"images\": [{\"path\": \"a.png\"}], \"split\": \"train\"}\n",
    )
    .unwrap();
    let ms = m.to_str().unwrap();
    fails(
        &["eval", "zero-shot", "--model", "/nonexistent/model", "--data", ms],
        "/nonexistent/model",
    );
    run_ok(medvlp().args(["init", "--preset", "tiny", "--out"]).arg(tmp.join("init")));
    let model = tmp.join("init");
    let ms_model = model.to_str().unwrap();
    // A model directory without a tokenizer cannot embed prompts.
    fails(&["eval", "zero-shot", "--model", ms_model, "--data", ms], "tokenizer.json");
    fails(&["eval", "retrieval", "--model", ms_model, "--data", ms, "--split", "nope"], "nope");
    // With a tokenizer: a manifest without test studies is named.
    let corpus = tmp.join("c.txt");
    std::fs::write(&corpus, "no pleural effusion\nmild cardiomegaly\n".repeat(20)).unwrap();
    run_ok(
        medvlp()
            .args(["tokenizer", "train", "--vocab-size", "60", "--input"])
            .arg(&corpus)
            .arg("--out")
            .arg(tmp.join("tok.json")),
    );
    run_ok(
        medvlp()
            .args(["init", "--preset", "tiny", "--tokenizer"])
            .arg(tmp.join("tok.json"))
            .arg("--out")
            .arg(tmp.join("init2")),
    );
    fails(
        &[
            "eval",
            "zero-shot",
            "--model",
            tmp.join("init2").to_str().unwrap(),
            "--data",
            ms,
            "--out",
            tmp.join("ev").to_str().unwrap(),
        ],
        "no test studies",
    );
    fails(
        &[
            "eval",
            "zero-shot",
            "--model",
            tmp.join("init2").to_str().unwrap(),
            "--data",
            ms,
            "--prompts",
            "disease",
        ],
        "not a zero-shot one",
    );
}

/// Patch the value of the first explicit-VR element with `tag` (little endian group, element).
fn patch_element(bytes: &mut [u8], tag: [u8; 4], value_offset: usize, value: &[u8]) {
    let at = bytes.windows(4).position(|w| w == tag).expect("tag present") + value_offset;
    bytes[at..at + value.len()].copy_from_slice(value);
}

#[test]
fn broken_images_fail_with_one_error_line_naming_the_file() {
    let Some(uncr) = asset_path("dicom/RG1_UNCR.dcm") else { return };
    let dcm = std::fs::read(uncr).unwrap();
    let tmp = tempdir("broken");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![("half.dcm", dcm[..dcm.len() / 2].to_vec())];
    let mut patched = |name, tag: [u8; 4], off, v: &[u8]| {
        let mut b = dcm.clone();
        patch_element(&mut b, tag, off, v);
        cases.push((name, b));
    };
    // PixelData (7FE0,0010) OW: the 4-byte length after VR and 2 reserved bytes.
    patched("huge_length.dcm", [0xE0, 0x7F, 0x10, 0x00], 8, &0xFFFF_FFF0u32.to_le_bytes());
    // US values after tag, VR and 2-byte length: fields dicom-rs panics on when zero.
    patched("rows0.dcm", [0x28, 0x00, 0x10, 0x00], 8, &[0, 0]);
    patched("bits_stored0.dcm", [0x28, 0x00, 0x01, 0x01], 8, &[0, 0]);
    patched("spp0.dcm", [0x28, 0x00, 0x02, 0x00], 8, &[0, 0]);
    patched("columns_huge.dcm", [0x28, 0x00, 0x11, 0x00], 8, &[0xFF, 0xFF]);
    let img = image::GrayImage::from_fn(96, 80, |x, y| image::Luma([(x + y) as u8]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    cases.push(("cut.jpg", jpeg[..jpeg.len() / 2].to_vec()));
    cases.push(("cut.png", png[..png.len() / 2].to_vec()));
    cases.push(("empty.dcm", Vec::new()));
    cases.push(("text.png", b"not an image\n".to_vec()));
    for (name, bytes) in cases {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = medvlp()
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .arg("preview")
            .arg(&path)
            .arg("--out")
            .arg(tmp.join("out.png"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name} must fail with exit 1: {err}");
        assert!(err.contains(name) && !err.contains("panick"), "{name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: one error line expected:\n{err}");
    }
}

#[test]
fn device_flags_go_through_one_parser() {
    let tmp = tempdir("device");
    let texts = tmp.join("t.txt");
    std::fs::write(&texts, "no effusion\n").unwrap();
    let fails = |args: &[&str], want: &str| {
        let o = medvlp().args(args).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(want), "{args:?}: {e}");
    };
    let t = texts.to_str().unwrap();
    let out = tmp.join("o.jsonl");
    let o = out.to_str().unwrap();
    fails(
        &["embed", "--model", "m", "--texts", t, "--output", o, "--device", "gpu0"],
        "unknown device",
    );
    run_ok(medvlp().args(["init", "--preset", "tiny", "--out"]).arg(tmp.join("m")));
    let m = tmp.join("m");
    let m = m.to_str().unwrap();
    fails(&["eval", "zero-shot", "--model", m, "--data", t, "--device", "tpu"], "unknown device");
    // A CUDA device on a CPU-only build, or (built with `cuda`) past the GPUs this machine has or
    // without a driver, stops at start with one sentence saying which, in every command.
    let want = if cfg!(feature = "cuda") {
        vec!["has no NVIDIA driver", "does not exist: this machine has", "sees no GPU"]
    } else {
        vec!["this medvlp was built without CUDA (build it with `--features cuda`"]
    };
    let run = tmp.join("run");
    for args in [
        vec!["embed", "--model", m, "--texts", t, "--output", o, "--device", "cuda:63"],
        vec!["eval", "zero-shot", "--model", m, "--data", t, "--device", "cuda:63"],
        vec!["bench", "train-step", "--preset", "tiny", "--device", "cuda:63"],
        vec!["train", "--config", "../../configs/clip-tiny.toml", "--device", "cuda:63"],
        vec!["quickstart", "--preset", "tiny", "--device", "cuda:63"],
        vec!["serve", "--model", m, "--device", "cuda:63"],
    ] {
        let mut c = medvlp();
        c.args(&args).env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
        if args[0] == "train" || args[0] == "quickstart" {
            c.arg("--out").arg(&run);
        }
        let out = c.output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {e}");
        assert!(want.iter().any(|w| lines[0].contains(w)), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
    assert!(!run.exists(), "a run that cannot start on its device writes nothing");
    // Started by a multi-process launcher: refused (not N independent runs in one folder), and a
    // malformed launcher variable is named.
    for (vars, want) in [
        (
            vec![
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "29500"),
            ],
            "rank 1 of 2",
        ),
        (vec![("SLURM_NTASKS", "4"), ("SLURM_PROCID", "x")], "SLURM_PROCID=\"x\""),
    ] {
        let out = medvlp()
            .args(["train", "--config", "../../configs/clip-tiny.toml", "--out"])
            .arg(&run)
            .envs(vars.iter().copied())
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && e.contains(want), "{vars:?}: {e}");
    }
    assert!(!run.exists());
}

/// `medvlp launch` starts N copies with torchrun's variables and exits with the code of a rank
/// that failed (here every rank refuses multi-process training, naming its rank).
#[test]
fn launch_starts_ranks_with_torchrun_variables() {
    let tmp = tempdir("launch");
    let out = medvlp()
        .args(["launch", "--nproc-per-node", "2", "--", "train", "--config"])
        .arg("../../configs/clip-tiny.toml")
        .arg("--out")
        .arg(tmp.join("run"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("rank 0 of 2") || e.contains("rank 1 of 2"), "{e}");
    assert!(e.contains("medvlp launch: rank"), "{e}");
    let bad = medvlp().args(["launch", "--nproc-per-node", "0", "--", "train"]).output().unwrap();
    assert!(!bad.status.success());
}
