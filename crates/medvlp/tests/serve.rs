//! `medvlp serve` end to end: the release binary on an ephemeral loopback port with a tiny
//! model and a tiny synthetic index. Each route, each error class, auth on and off, 503 from a
//! tiny queue and the SIGTERM drain; the server's answers equal `medvlp embed` and
//! `medvlp index query` on the same inputs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::{medvlp, run_ok};

struct Fixture {
    dir: PathBuf,
    model: PathBuf,
    index: PathBuf,
    images: Vec<PathBuf>,
    reports: Vec<String>,
}

/// A tiny model with a tokenizer, 16 synthetic studies and their index (built once).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("medvlp-serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        run_ok(
            medvlp()
                .args(["synth", "--n", "16", "--size", "64", "--seed", "3", "--out"])
                .arg(&data),
        );
        let manifest = data.join("manifest.jsonl");
        let studies = medvlp_data::dataset::read_manifest(&manifest).unwrap();
        let reports: Vec<String> = studies.iter().map(|s| s.text.clone().unwrap()).collect();
        let images: Vec<PathBuf> = studies.iter().map(|s| data.join(&s.images[0].path)).collect();
        std::fs::write(dir.join("corpus.txt"), reports.join("\n").repeat(3)).unwrap();
        run_ok(
            medvlp()
                .args(["tokenizer", "train", "--vocab-size", "120", "--input"])
                .arg(dir.join("corpus.txt"))
                .arg("--out")
                .arg(dir.join("tok.json")),
        );
        let model = dir.join("model");
        run_ok(
            medvlp()
                .args(["init", "--preset", "tiny", "--tokenizer"])
                .arg(dir.join("tok.json"))
                .arg("--out")
                .arg(&model),
        );
        let index = dir.join("studies.idx");
        run_ok(
            medvlp()
                .args(["index", "build", "--model"])
                .arg(&model)
                .arg("--data")
                .arg(&manifest)
                .arg("--out")
                .arg(&index),
        );
        Fixture { dir, model, index, images, reports }
    })
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let f = fixture();
        let mut child = medvlp()
            .args(["serve", "--bind", "127.0.0.1:0", "--model"])
            .arg(&f.model)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// (status, headers, body) of a request.
struct Reply {
    status: u16,
    retry_after: Option<String>,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// A 4xx/5xx answer: JSON with `error` and `detail`.
    fn error(&self, status: u16, kind: &str) -> String {
        let v = self.json();
        assert_eq!((self.status, v["error"].as_str().unwrap()), (status, kind), "{v}");
        v["detail"].as_str().unwrap().to_string()
    }
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.unwrap();
    let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (retry_after, content_type) = (header("retry-after"), header("content-type"));
    Reply {
        status: r.status().as_u16(),
        retry_after,
        content_type: content_type.unwrap_or_default(),
        body: r.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap(),
    }
}

fn post(url: &str, content_type: &str, body: &[u8], token: Option<&str>) -> Reply {
    let mut req = agent().post(url).header("Content-Type", content_type);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    reply(req.send(body))
}

/// Writes `request` to the server and returns everything it answers.
fn raw_request(base: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

fn get(url: &str) -> Reply {
    reply(agent().get(url).call())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    d / (n(a) * n(b))
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// `medvlp embed` output rows, in input order.
fn cli_embed(kind: &str, input: &Path) -> Vec<Vec<f32>> {
    let out = input.with_extension("emb.jsonl");
    run_ok(
        medvlp()
            .args(["embed", "--model"])
            .arg(&fixture().model)
            .arg(format!("--{kind}"))
            .arg(input)
            .arg("--output")
            .arg(&out),
    );
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| floats(&serde_json::from_str::<serde_json::Value>(l).unwrap()["embedding"]))
        .collect()
}

fn multipart(files: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "medvlp-test-boundary-7d1c";
    let mut body = Vec::new();
    for (name, data) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn every_route_answers_and_matches_the_cli() {
    let f = fixture();
    let s = Server::start(&["--index", f.index.to_str().unwrap()]);
    assert_eq!(get(&s.url("/healthz")).status, 200);
    let ready = get(&s.url("/readyz")).json();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["index"]["count"], 16);
    let spec = get(&s.url("/openapi.json")).json();
    for route in ["/v1/embed/image", "/v1/embed/text", "/v1/zero-shot", "/v1/retrieve"] {
        assert!(spec["paths"][route].is_object(), "{route} missing from openapi.json");
    }
    let page = get(&s.url("/"));
    assert!(page.content_type.starts_with("text/html"));
    assert!(String::from_utf8_lossy(&page.body).contains("/v1/zero-shot"));

    // Images: one raw body, then a multipart form with two files; equal to `medvlp embed`.
    let list = f.dir.join("images.txt");
    let names: Vec<String> = f.images[..3].iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&list, names.join("\n")).unwrap();
    let cli = cli_embed("images", &list);
    let png = std::fs::read(&f.images[0]).unwrap();
    let one = post(&s.url("/v1/embed/image"), "image/png", &png, None).json();
    assert!(cosine(&floats(&one["items"][0]["embedding"]), &cli[0]) >= 0.99999, "{one}");
    let (ct, body) = multipart(&[
        ("a.png", std::fs::read(&f.images[1]).unwrap()),
        ("b.png", std::fs::read(&f.images[2]).unwrap()),
    ]);
    let two = post(&s.url("/v1/embed/image"), &ct, &body, None).json();
    assert_eq!(two["items"][1]["name"], "b.png");
    for k in 0..2 {
        let e = floats(&two["items"][k]["embedding"]);
        assert!(cosine(&e, &cli[k + 1]) >= 0.99999);
    }

    // Texts, equal to `medvlp embed --texts`.
    let texts = vec![f.reports[0].clone(), "No pleural effusion.".to_string()];
    // JSONL: a report may span several lines.
    let tfile = f.dir.join("texts.jsonl");
    let lines: Vec<String> =
        texts.iter().map(|t| serde_json::json!({"text": t}).to_string()).collect();
    std::fs::write(&tfile, lines.join("\n")).unwrap();
    let cli_t = cli_embed("texts", &tfile);
    let body = serde_json::to_vec(&texts).unwrap();
    let r = post(&s.url("/v1/embed/text"), "application/json", &body, None).json();
    for k in 0..2 {
        assert!(cosine(&floats(&r["embeddings"][k]), &cli_t[k]) >= 0.99999);
    }

    // Zero-shot (pos/neg): sigmoid((cos(img, pos) - cos(img, neg)) / T) from CLI embeddings,
    // each side the renormalised mean of its normalised prompt embeddings (chexpert5 lists
    // several prompts per side).
    let z = post(&s.url("/v1/zero-shot?prompts=chexpert5"), "image/png", &png, None).json();
    assert_eq!(z["mode"], "pos_neg");
    let scores = z["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 5);
    let t = z["temperature"].as_f64().unwrap();
    let first = &scores[0];
    let side = |v: &serde_json::Value, name: &str| -> Vec<f32> {
        let texts: Vec<String> = match v {
            serde_json::Value::String(one) => vec![one.clone()],
            many => many.as_array().unwrap().iter().map(|x| x.as_str().unwrap().into()).collect(),
        };
        let pf = f.dir.join(format!("prompts-{name}.txt"));
        std::fs::write(&pf, texts.join("\n")).unwrap();
        let mut mean = vec![0f32; cli[0].len()];
        for e in cli_embed("texts", &pf) {
            let n = e.iter().map(|x| x * x).sum::<f32>().sqrt();
            mean.iter_mut().zip(&e).for_each(|(m, x)| *m += x / n);
        }
        mean
    };
    let pos = side(&first["prompts"]["positive"], "pos");
    let neg = side(&first["prompts"]["negative"], "neg");
    let margin = cosine(&cli[0], &pos) - cosine(&cli[0], &neg);
    let expect = 1.0 / (1.0 + (-margin / t).exp());
    let got = first["score"].as_f64().unwrap();
    assert!((got - expect).abs() < 1e-4, "zero-shot {got} vs {expect} from the CLI");
    let inline = post(
        &s.url("/v1/zero-shot?labels=Edema,%20Pneumothorax&mode=single"),
        "image/png",
        &png,
        None,
    )
    .json();
    assert_eq!(inline["scores"][1]["label"], "Pneumothorax");
    assert_eq!(inline["mode"], "single");

    // Retrieval equals `medvlp index query`.
    let text = serde_json::json!({"text": f.reports[3], "k": 5});
    let r = post(&s.url("/v1/retrieve"), "application/json", text.to_string().as_bytes(), None);
    let hits = r.json()["hits"].as_array().unwrap().clone();
    assert_eq!(hits.len(), 5);
    let q = run_ok(
        medvlp()
            .args(["index", "query", "--index"])
            .arg(&f.index)
            .arg("--model")
            .arg(&f.model)
            .args(["--text", &f.reports[3], "-k", "5"]),
    );
    let cli_hits: Vec<serde_json::Value> =
        q.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (h, c) in hits.iter().zip(&cli_hits) {
        assert_eq!(h["id"], c["id"]);
        assert!((h["score"].as_f64().unwrap() - c["score"].as_f64().unwrap()).abs() < 1e-4);
    }
    let by_image = post(&s.url("/v1/retrieve?k=3"), "image/png", &png, None).json();
    assert_eq!(by_image["searched"], "reports");
    assert_eq!(by_image["hits"].as_array().unwrap().len(), 3);

    // What the model sees.
    let p = post(&s.url("/v1/preview"), "image/png", &png, None);
    assert_eq!(p.content_type, "image/png");
    let img = image::load_from_memory(&p.body).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.model.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(img.width() as u64, cfg["preprocess"]["image_size"].as_u64().unwrap());

    let m = String::from_utf8(get(&s.url("/metrics")).body).unwrap();
    assert!(m.contains("medvlp_requests_total{route=\"/v1/embed/image\",status=\"200\"} 2"), "{m}");
    assert!(m.contains("medvlp_batch_size_bucket") && m.contains("medvlp_queue_depth"));
    assert!(m.contains("medvlp_request_duration_seconds_bucket"));
}

#[test]
fn bad_inputs_get_a_json_4xx_naming_the_problem() {
    let f = fixture();
    let s = Server::start(&["--max-body-mib", "1"]);
    let png = std::fs::read(&f.images[0]).unwrap();
    let d = post(&s.url("/v1/embed/image"), "image/png", b"\x89PNG\r\n\x1a\nbroken", None)
        .error(400, "invalid_image");
    assert!(d.contains("upload"), "{d}");
    let cut = &png[..png.len() / 2];
    post(&s.url("/v1/embed/image"), "image/png", cut, None).error(400, "invalid_image");
    if let Some(dcm) = medvlp_data::assets::asset_path("dicom/RG1_UNCR.dcm") {
        let dcm = std::fs::read(dcm).unwrap();
        let d = post(&s.url("/v1/zero-shot"), "application/dicom", &dcm[..4000], None)
            .error(400, "invalid_image");
        assert!(d.contains("malformed DICOM"), "{d}");
    }
    post(&s.url("/v1/embed/image"), "image/png", b"", None).error(400, "empty_body");
    post(&s.url("/v1/embed/image"), "application/json", b"[]", None)
        .error(415, "wrong_content_type");
    post(&s.url("/v1/embed/text"), "text/plain", b"hello", None).error(415, "wrong_content_type");
    post(&s.url("/v1/embed/text"), "application/json", b"[", None).error(400, "invalid_json");
    post(&s.url("/v1/embed/text"), "application/json", b"[]", None).error(400, "empty_input");
    post(&s.url("/v1/embed/text"), "application/json", b"[\"a\", \" \"]", None)
        .error(400, "empty_text");
    let d = post(&s.url("/v1/zero-shot?prompts=nope"), "image/png", &png, None)
        .error(404, "unknown_prompt_set");
    assert!(d.contains("nope"));
    post(&s.url("/v1/zero-shot?prompts=disease"), "image/png", &png, None)
        .error(404, "unknown_prompt_set");
    post(&s.url("/v1/zero-shot?mode=best"), "image/png", &png, None).error(400, "bad_mode");
    post(&s.url("/v1/zero-shot?labels=,,"), "image/png", &png, None).error(400, "bad_labels");
    post(&s.url("/v1/retrieve"), "image/png", &png, None).error(404, "no_index");
    // An oversized body is refused from its Content-Length, before it is read (a client that is
    // still sending then sees a broken pipe, so the headers go out alone here).
    let raw = raw_request(
        &s.base,
        "POST /v1/embed/image HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\
         Content-Length: 2097152\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("\"error\":\"body_too_large\""), "{raw}");
    get(&s.url("/v2/nothing")).error(404, "not_found");
    // The server is still up and answering.
    assert_eq!(post(&s.url("/v1/embed/image"), "image/png", &png, None).status, 200);

    let s = Server::start(&["--index", f.index.to_str().unwrap()]);
    let q = serde_json::json!({"text": "effusion", "k": 0}).to_string();
    post(&s.url("/v1/retrieve"), "application/json", q.as_bytes(), None).error(400, "bad_k");
    post(&s.url("/v1/retrieve?k=x"), "image/png", &png, None).error(400, "bad_query");
}

#[test]
fn a_token_guards_the_api_but_not_the_probes() {
    let f = fixture();
    let tf = f.dir.join("token");
    std::fs::write(&tf, "s3cret-token\n").unwrap();
    let s = Server::start(&["--token-file", tf.to_str().unwrap()]);
    let body = b"[\"No effusion.\"]";
    post(&s.url("/v1/embed/text"), "application/json", body, None).error(401, "unauthorized");
    post(&s.url("/v1/embed/text"), "application/json", body, Some("s3cret"))
        .error(401, "unauthorized");
    assert_eq!(
        post(&s.url("/v1/embed/text"), "application/json", body, Some("s3cret-token")).status,
        200
    );
    assert_eq!(get(&s.url("/metrics")).status, 401);
    assert_eq!(get(&s.url("/healthz")).status, 200);
    assert_eq!(get(&s.url("/readyz")).status, 200);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = Server::start(&["--queue", "2", "--max-batch", "1"]);
    let body = serde_json::to_vec(&["a", "b", "c"]).unwrap();
    let r = post(&s.url("/v1/embed/text"), "application/json", &body, None);
    r.error(503, "overloaded");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    // Concurrent load on the tiny queue: every answer is 200 or 503, never anything else.
    let url = s.url("/v1/embed/text");
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                post(&url, "application/json", b"[\"x\", \"y\"]", None).status
            })
        })
        .collect();
    for h in handles {
        assert!(matches!(h.join().unwrap(), 200 | 503));
    }
    // A prompt ensemble far larger than the queue goes through it in chunks.
    let png = std::fs::read(&fixture().images[0]).unwrap();
    let z = post(&s.url("/v1/zero-shot?prompts=chexpert5&mode=ensemble"), "image/png", &png, None);
    assert_eq!(z.status, 200, "{}", String::from_utf8_lossy(&z.body));
    assert_eq!(z.json()["scores"].as_array().unwrap().len(), 5);
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    // A 1.5 s batching window keeps the first request in flight while SIGTERM arrives.
    let mut s = Server::start(&["--max-wait-ms", "1500", "--max-batch", "64"]);
    let url = s.url("/v1/embed/text");
    let slow = std::thread::spawn(move || post(&url, "application/json", b"[\"slow\"]", None));
    std::thread::sleep(Duration::from_millis(400));
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(100));
    post(&s.url("/v1/embed/text"), "application/json", b"[\"late\"]", None)
        .error(503, "shutting_down");
    let first = slow.join().unwrap();
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
