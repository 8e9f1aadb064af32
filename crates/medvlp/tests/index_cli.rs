//! `medvlp index build|add|query|info` end to end on a small synthetic dataset and a freshly
//! initialised tiny model: results agree with a brute-force search over `medvlp embed`'s output,
//! bf16 halves the matrices, `add` extends an index to what a full build gives, and broken or
//! mismatched inputs fail with one clean error naming the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::run_ok;

fn medvlp() -> Command {
    let mut c = common::medvlp();
    c.env("RUST_LOG", "warn");
    c
}

fn tempdir(tag: &str) -> PathBuf {
    common::tempdir(&format!("index-{tag}"))
}

/// Runs a command that must fail with one error mentioning each of `want`, and no panic.
fn run_err(cmd: &mut Command, want: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "succeeded: {e}");
    assert!(!e.contains("panicked"), "{e}");
    for w in want {
        assert!(e.contains(w), "wanted {w:?} in: {e}");
    }
    e
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// `(id, score)` of each line of `index query`, checking the line's fields.
fn query_lines(out: &str) -> Vec<(String, f32)> {
    out.lines()
        .enumerate()
        .map(|(i, l)| {
            let v = json(l);
            assert_eq!(v["rank"], i + 1);
            assert!(v["text"].as_str().is_some_and(|t| !t.is_empty()), "{l}");
            assert!(v["image"].as_str().is_some_and(|p| Path::new(p).is_file()), "{l}");
            (v["id"].as_str().unwrap().to_string(), v["score"].as_f64().unwrap() as f32)
        })
        .collect()
}

fn read_embeddings(path: &Path) -> Vec<(String, Vec<f32>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v = json(l);
            let e = v["embedding"].as_array().unwrap();
            let id = match &v["id"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (id, e.iter().map(|x| x.as_f64().unwrap() as f32).collect())
        })
        .collect()
}

#[test]
fn index_build_query_add_and_info() {
    let tmp = tempdir("cli");
    let ds = tmp.join("ds");
    run_ok(medvlp().args(["synth", "--n", "24", "--size", "64", "--seed", "11", "--out"]).arg(&ds));
    let manifest = ds.join("manifest.jsonl");
    let studies = medvlp_data::dataset::read_manifest(&manifest).unwrap();
    let ids: Vec<String> = studies.iter().map(|s| s.id.clone()).collect();
    let corpus = tmp.join("corpus.txt");
    let reports: Vec<String> = studies.iter().map(|s| s.text.clone().unwrap()).collect();
    std::fs::write(&corpus, reports.join("\n")).unwrap();
    let tok = tmp.join("tok.json");
    run_ok(
        medvlp()
            .args(["tokenizer", "train", "--vocab-size", "200", "--input"])
            .arg(&corpus)
            .arg("--out")
            .arg(&tok),
    );
    let model = tmp.join("model");
    let other = tmp.join("other");
    for (dir, seed) in [(&model, "1"), (&other, "2")] {
        run_ok(
            medvlp()
                .args(["init", "--preset", "tiny", "--seed", seed, "--tokenizer"])
                .arg(&tok)
                .arg("--out")
                .arg(dir),
        );
    }
    let build = |data: &Path, out: &Path, extra: &[&str]| {
        let s = run_ok(
            medvlp()
                .args(["index", "build", "--batch-size", "8", "--model"])
                .arg(&model)
                .arg("--data")
                .arg(data)
                .arg("--out")
                .arg(out)
                .args(extra),
        );
        json(&s)
    };

    // Exact f32 index and a bf16 one with HNSW graphs.
    let f32_idx = tmp.join("f32.idx");
    let s = build(&manifest, &f32_idx, &[]);
    assert_eq!(s["count"], 24);
    assert_eq!(s["dtype"], "f32");
    assert!(s["ann"].is_null());
    let dim = s["dim"].as_u64().unwrap();
    let bf16_idx = tmp.join("bf16.idx");
    let s16 = build(&manifest, &bf16_idx, &["--dtype", "bf16", "--ann", "--field", "impression"]);
    eprintln!("f32 build: {s}\nbf16 + ann build: {s16}");
    let ann = &s16["ann"];
    assert_eq!(ann["kind"], "hnsw");
    for key in ["recall_at_10_images", "recall_at_10_texts"] {
        assert!(ann[key].as_f64().unwrap() >= 0.9, "{ann}");
    }
    let info = json(&run_ok(medvlp().args(["index", "info", "--index"]).arg(&bf16_idx)));
    assert_eq!(info["count"], 24);
    assert_eq!(info["dim"], dim);
    assert_eq!(info["dtype"], "bf16");
    assert_eq!(info["field"], "impression");
    assert_eq!(info["ann"], *ann);
    let info32 = json(&run_ok(medvlp().args(["index", "info", "--index"]).arg(&f32_idx)));
    let len = |h: &serde_json::Value| h["sections"]["images"]["len"].as_u64().unwrap();
    assert_eq!(len(&info32), 24 * dim * 4);
    assert_eq!(len(&info) * 2, len(&info32));

    // A study's own report, text -> image, against brute force over `medvlp embed`'s output.
    let img_emb = tmp.join("img.jsonl");
    run_ok(
        medvlp()
            .args(["embed", "--model"])
            .arg(&model)
            .arg("--images")
            .arg(&manifest)
            .arg("--output")
            .arg(&img_emb),
    );
    let images = read_embeddings(&img_emb);
    assert_eq!(images.len(), 24);
    let q_text = &reports[5];
    let q_file = tmp.join("q.jsonl");
    std::fs::write(&q_file, serde_json::json!({"id": "q", "text": q_text}).to_string()).unwrap();
    let q_emb = tmp.join("q-emb.jsonl");
    run_ok(
        medvlp()
            .args(["embed", "--model"])
            .arg(&model)
            .arg("--texts")
            .arg(&q_file)
            .arg("--output")
            .arg(&q_emb),
    );
    let q = &read_embeddings(&q_emb)[0].1;
    let mut brute: Vec<(f32, &str)> = images
        .iter()
        .map(|(id, e)| (e.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), id.as_str()))
        .collect();
    brute.sort_by(|a, b| b.0.total_cmp(&a.0));
    let query = |index: &Path, what: &str, value: &str, extra: &[&str]| {
        run_ok(
            medvlp()
                .args(["index", "query", "--index"])
                .arg(index)
                .arg("--model")
                .arg(&model)
                .args([what, value])
                .args(extra),
        )
    };
    let out = query(&f32_idx, "--text", q_text, &["-k", "5"]);
    let hits = query_lines(&out);
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0].0, brute[0].1, "{out}");
    for ((id, score), (want, _)) in hits.iter().zip(&brute) {
        assert!((score - want).abs() < 1e-4, "{id}: {score} vs {want}");
    }
    assert_eq!(query(&f32_idx, "--text", q_text, &["-k", "5"]), out, "not deterministic");
    // Through the graph (bf16): sorted, k hits, ids from the manifest, scores near exact.
    let approx = query_lines(&query(&bf16_idx, "--text", q_text, &["-k", "5"]));
    assert_eq!(approx.len(), 5);
    assert!(approx.windows(2).all(|w| w[0].1 >= w[1].1));
    assert!(approx.iter().all(|(id, _)| ids.contains(id)));
    assert!((approx[0].1 - brute[0].0).abs() < 2e-2);
    let exact = query_lines(&query(&bf16_idx, "--text", q_text, &["-k", "5", "--exact"]));
    assert_eq!(
        exact.iter().map(|h| &h.0).collect::<Vec<_>>(),
        approx.iter().map(|h| &h.0).collect::<Vec<_>>()
    );

    // Image -> report; k above the row count returns every row.
    let image = ds.join(&studies[3].images[0].path);
    let by_image = query_lines(&query(&f32_idx, "--image", image.to_str().unwrap(), &["-k", "40"]));
    assert_eq!(by_image.len(), 24);
    assert!(by_image.windows(2).all(|w| w[0].1 >= w[1].1));
    let mut seen: Vec<&String> = by_image.iter().map(|h| &h.0).collect();
    seen.sort();
    let mut all: Vec<&String> = ids.iter().collect();
    all.sort();
    assert_eq!(seen, all);

    // add: the first 16 studies, then the rest, equal a full build.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (part1, part2) = (ds.join("part1.jsonl"), ds.join("part2.jsonl"));
    std::fs::write(&part1, lines[..16].join("\n")).unwrap();
    std::fs::write(&part2, lines[16..].join("\n")).unwrap();
    let grown = tmp.join("grown.idx");
    assert_eq!(build(&part1, &grown, &["--ann"])["count"], 16);
    let add = |data: &Path, m: &Path| {
        let mut c = medvlp();
        c.args(["index", "add", "--model"])
            .arg(m)
            .arg("--data")
            .arg(data)
            .arg("--index")
            .arg(&grown);
        c
    };
    let s = json(&run_ok(&mut add(&part2, &model)));
    assert_eq!((s["added"].as_u64(), s["count"].as_u64()), (Some(8), Some(24)));
    assert!(s["ann"]["recall_at_10_images"].as_f64().unwrap() >= 0.9);
    let s = json(&run_ok(&mut add(&manifest, &model)));
    assert_eq!(
        (s["added"].as_u64(), s["skipped"]["already_indexed"].as_u64()),
        (Some(0), Some(24))
    );
    let full = query(&f32_idx, "--text", q_text, &["-k", "24", "--exact"]);
    assert_eq!(query(&grown, "--text", q_text, &["-k", "24", "--exact"]), full);

    // Refusals: another model, an index as its own input, k = 0, broken files.
    let e = run_err(&mut add(&part2, &other), &["grown.idx"]);
    let hashes: HashMap<&str, String> = [(&model, "m"), (&other, "o")]
        .iter()
        .map(|(d, k)| {
            let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
            (*k, medvlp_data::hash::sha256_hex(&bytes))
        })
        .collect();
    assert!(e.contains(&hashes["m"]) && e.contains(&hashes["o"]), "{e}");
    run_err(
        medvlp()
            .args(["index", "query", "--index"])
            .arg(&f32_idx)
            .arg("--model")
            .arg(&other)
            .args(["--text", "clear lungs"]),
        &["f32.idx", &hashes["o"]],
    );
    run_err(
        medvlp()
            .args(["index", "build", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&manifest)
            .arg("--out")
            .arg(&manifest),
        &["manifest.jsonl"],
    );
    run_err(
        medvlp()
            .args(["index", "query", "-k", "0", "--index"])
            .arg(&f32_idx)
            .arg("--model")
            .arg(&model)
            .args(["--text", "clear lungs"]),
        &["k must be"],
    );
    let missing = ds.join("nope.png");
    run_err(
        medvlp()
            .args(["index", "query", "--index"])
            .arg(&f32_idx)
            .arg("--model")
            .arg(&model)
            .arg("--image")
            .arg(&missing),
        &["nope.png"],
    );
    let bytes = std::fs::read(&bf16_idx).unwrap();
    let broken = tmp.join("broken.idx");
    std::fs::write(&broken, &bytes[..bytes.len() - 100]).unwrap();
    run_err(medvlp().args(["index", "info", "--index"]).arg(&broken), &["broken.idx", "truncated"]);
    std::fs::write(&broken, b"this is not an index at all").unwrap();
    run_err(
        medvlp()
            .args(["index", "query", "--index"])
            .arg(&broken)
            .arg("--model")
            .arg(&model)
            .args(["--text", "clear lungs"]),
        &["broken.idx", "not a medvlp index"],
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
