//! Routes, the middleware every request passes (drain, auth, timeout, metrics) and the JSON
//! error type.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use medvlp_data::image::preprocess::{preprocess_eval, preprocess_gray, PreprocessConfig};
use medvlp_data::image::GrayImage;
use medvlp_data::text::prompts::{ExpandedClass, PromptFile, BUILTIN_PROMPTS};
use medvlp_eval::protocols::class_prompts;
use medvlp_eval::zeroshot::{zero_shot_scores, ClassPrompts, PromptMode};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::json;

use crate::engine::{EmbedError, Input, Overloaded};
use crate::AppState;

type Shared = Arc<AppState>;

/// Most labels an inline zero-shot request may name, and the longest label.
const MAX_LABELS: usize = 64;
const MAX_LABEL_CHARS: usize = 100;
/// Most texts per `/v1/embed/text` request and files per multipart request.
const MAX_ITEMS: usize = 256;
const MAX_K: usize = 1000;
/// Prompt sets whose embeddings are kept (inline label lists included).
const PROMPT_CACHE_ENTRIES: usize = 128;

pub type PromptCache = HashMap<String, Arc<Vec<(String, ClassPrompts, serde_json::Value)>>>;

/// A 4xx/5xx answer: `{"error": kind, "detail": what was wrong}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, kind, detail: detail.into() }
    }
    fn bad(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r =
            (self.status, Json(json!({"error": self.kind, "detail": self.detail}))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<EmbedError> for ApiError {
    fn from(e: EmbedError) -> Self {
        match e {
            EmbedError::Overloaded => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the model queue is full; retry shortly",
            ),
            EmbedError::Model(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", m)
            }
        }
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/embed/image", post(embed_image))
        .route("/v1/embed/text", post(embed_text))
        .route("/v1/zero-shot", post(zero_shot))
        .route("/v1/retrieve", post(retrieve))
        .route("/v1/preview", post(preview))
        .route("/v1/prompts", get(prompt_sets))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route (see /openapi.json)")
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

/// Drain, auth, timeout and metrics around every route.
async fn guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let start = Instant::now();
    s.metrics.in_flight.inc();
    let resp = if s.draining.load(Ordering::SeqCst) && route != "/healthz" {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is stopping")
            .into_response()
    } else if declared_length(req.headers()).is_some_and(|n| n > s.max_body_bytes as u64) {
        // Refused from the header, before a byte of the body is read.
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds {} bytes (--max-body-mib)", s.max_body_bytes),
        )
        .into_response()
    } else if needs_auth(&route) && !authorized(&s, req.headers()) {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs `Authorization: Bearer <token>`",
        )
        .into_response()
    } else {
        match tokio::time::timeout(s.timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("the request took longer than {:?}", s.timeout),
            )
            .into_response(),
        }
    };
    s.metrics.in_flight.dec();
    s.metrics.latency.with_label_values(&[&route]).observe(start.elapsed().as_secs_f64());
    s.metrics.requests.with_label_values(&[&route, resp.status().as_str()]).inc();
    resp
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn needs_auth(route: &str) -> bool {
    route.starts_with("/v1/") || route == "/metrics"
}

fn authorized(s: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &s.token else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq::constant_time_eq(given.as_bytes(), token.as_bytes())
}

async fn page() -> Response {
    let mut r = include_str!("assets/index.html").into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

async fn openapi() -> Response {
    let mut r = include_str!("assets/openapi.json").into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn readyz(State(s): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    if !s.engine.is_alive() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the model thread is not running",
        ));
    }
    Ok(Json(json!({
        "ready": true,
        "model_hash": s.model_hash,
        "index": s.index.as_ref().map(|i| json!({"count": i.len(), "dim": i.header().dim})),
    })))
}

async fn metrics(State(s): State<Shared>) -> Response {
    let mut r = s.metrics.render().into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

async fn prompt_sets() -> Json<serde_json::Value> {
    let names: Vec<&str> = BUILTIN_PROMPTS
        .iter()
        .filter(|(_, t)| t.contains("kind = \"zero-shot\""))
        .map(|(n, _)| *n)
        .collect();
    Json(json!({"prompt_sets": names, "modes": ["pos_neg", "single", "ensemble"]}))
}

// ---------------------------------------------------------------- inputs

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::bad("bad_query", e.body_text()))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

async fn body_bytes(s: &AppState, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, s.max_body_bytes).await.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds {} bytes or could not be read ({e})", s.max_body_bytes),
        )
    })
}

/// The uploaded files: a raw body (one file) or every file part of a multipart form.
async fn image_uploads(s: &AppState, req: Request) -> Result<Vec<(String, Bytes)>, ApiError> {
    let ct = content_type(req.headers());
    if ct == "multipart/form-data" {
        let mut form = axum::extract::Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad("bad_multipart", e.body_text()))?;
        let mut files = vec![];
        while let Some(field) = form.next_field().await.map_err(|e| {
            let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "bad_multipart"
            };
            ApiError::new(e.status(), kind, e.body_text())
        })? {
            let name = field
                .file_name()
                .or(field.name())
                .map_or_else(|| format!("part{}", files.len() + 1), str::to_string);
            let data = field.bytes().await.map_err(|e| {
                ApiError::new(e.status(), "bad_multipart", format!("{name}: {}", e.body_text()))
            })?;
            files.push((name, data));
            if files.len() > MAX_ITEMS {
                return Err(ApiError::bad("too_many_files", format!("at most {MAX_ITEMS} files")));
            }
        }
        if files.is_empty() {
            return Err(ApiError::bad("no_image", "the form has no file part"));
        }
        return Ok(files);
    }
    if ct == "application/json" || ct.starts_with("text/") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "wrong_content_type",
            format!("expected an image body (PNG, JPEG or DICOM) or multipart/form-data, got {ct}"),
        ));
    }
    let data = body_bytes(s, req.into_body()).await?;
    if data.is_empty() {
        return Err(ApiError::bad("empty_body", "the request has no image"));
    }
    // A DICOM file without its 128-byte preamble is recognised by name only.
    let name = if ct == "application/dicom" { "upload.dcm" } else { "upload" };
    Ok(vec![(name.to_string(), data)])
}

/// A decoded image: what `prepare`'s step made of it, and its decoding facts.
struct Prepared<T> {
    name: String,
    value: T,
    info: serde_json::Value,
}

/// Decodes, then runs `step` (eval preprocessing, or the preview picture) on the blocking
/// pool, `decode_threads` images at a time.
async fn prepare<T: Send + 'static>(
    s: &Shared,
    name: String,
    data: Bytes,
    step: fn(&GrayImage, &PreprocessConfig) -> T,
) -> Result<Prepared<T>, ApiError> {
    let _slot = s.decode_slots.acquire().await.map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is stopping")
    })?;
    let pp = s.preprocess.clone();
    tokio::task::spawn_blocking(move || {
        medvlp_data::guard::catch_quiet(|| {
            let d = medvlp_data::image::decode_bytes_scaled(
                &data,
                Path::new(&name),
                Some(pp.resize_shorter),
            )
            .map_err(|e| ApiError::bad("invalid_image", e.to_string()))?;
            let info = json!({
                "format": format!("{:?}", d.info.format),
                "width": d.info.source_width,
                "height": d.info.source_height,
                "photometric": d.info.photometric,
                "description": d.info.to_string(),
            });
            Ok(Prepared { value: step(&d.image, &pp), info, name })
        })
        .unwrap_or_else(|p| Err(ApiError::bad("invalid_image", format!("decoder failed: {p}"))))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// The one image of a request that takes exactly one.
async fn one_upload(s: &AppState, req: Request) -> Result<(String, Bytes), ApiError> {
    let mut files = image_uploads(s, req).await?;
    if files.len() != 1 {
        return Err(ApiError::bad("one_image", format!("expected one image, got {}", files.len())));
    }
    Ok(files.remove(0))
}

/// The request's one image, embedded; also returns its decoding facts.
async fn embed_one_image(
    s: &Shared,
    req: Request,
) -> Result<(serde_json::Value, Vec<f32>), ApiError> {
    let (name, data) = one_upload(s, req).await?;
    let p = prepare(s, name, data, preprocess_eval).await?;
    let e = s.engine.embed(vec![Input::Image(p.value)]).await?.remove(0);
    Ok((p.info, e))
}

// ---------------------------------------------------------------- routes

async fn embed_image(
    State(s): State<Shared>,
    req: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let files = image_uploads(&s, req).await?;
    let (mut facts, mut inputs) = (Vec::new(), Vec::new());
    for (name, data) in files {
        let p = prepare(&s, name, data, preprocess_eval).await?;
        facts.push((p.name, p.info));
        inputs.push(Input::Image(p.value));
    }
    let embeddings = s.engine.embed(inputs).await?;
    let dim = embeddings.first().map_or(0, Vec::len);
    let items: Vec<_> = facts
        .into_iter()
        .zip(embeddings)
        .map(|((name, info), e)| json!({"name": name, "image": info, "embedding": e}))
        .collect();
    Ok(Json(json!({"dim": dim, "items": items})))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TextsBody {
    List(Vec<String>),
    Object { texts: Vec<String> },
}

async fn json_body<T: serde::de::DeserializeOwned>(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<T, ApiError> {
    let ct = content_type(headers);
    if ct != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "wrong_content_type",
            format!("expected application/json ({what}), got {:?}", ct),
        ));
    }
    let data = body_bytes(s, body).await?;
    serde_json::from_slice(&data)
        .map_err(|e| ApiError::bad("invalid_json", format!("expected {what}: {e}")))
}

async fn embed_text(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let texts = match json_body::<TextsBody>(&s, &headers, body, "a list of strings").await? {
        TextsBody::List(t) | TextsBody::Object { texts: t } => t,
    };
    if texts.is_empty() {
        return Err(ApiError::bad("empty_input", "the list of texts is empty"));
    }
    if texts.len() > MAX_ITEMS {
        return Err(ApiError::bad("too_many_texts", format!("at most {MAX_ITEMS} texts")));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::bad("empty_text", format!("text {i} is empty")));
    }
    let embeddings = s.engine.embed(texts.into_iter().map(Input::Text).collect()).await?;
    let dim = embeddings.first().map_or(0, Vec::len);
    Ok(Json(json!({"dim": dim, "embeddings": embeddings})))
}

#[derive(Deserialize)]
struct ZeroShotQuery {
    prompts: Option<String>,
    labels: Option<String>,
    mode: Option<String>,
}

/// The classes of a request: a shipped prompt set, or an inline label list whose prompts are
/// the label and "no {label}" (as `eval` does for a class without a negative prompt).
fn requested_classes(q: &ZeroShotQuery) -> Result<(String, Vec<ExpandedClass>), ApiError> {
    match (&q.prompts, &q.labels) {
        (Some(_), Some(_)) => {
            Err(ApiError::bad("bad_query", "give `prompts` or `labels`, not both"))
        }
        (_, Some(labels)) => {
            let names: Vec<String> = labels
                .split(',')
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty())
                .collect();
            if names.is_empty() || names.len() > MAX_LABELS {
                return Err(ApiError::bad(
                    "bad_labels",
                    format!("`labels` must name 1 to {MAX_LABELS} comma-separated labels"),
                ));
            }
            if let Some(l) = names.iter().find(|l| l.chars().count() > MAX_LABEL_CHARS) {
                return Err(ApiError::bad(
                    "bad_labels",
                    format!("label {l:?} is longer than {MAX_LABEL_CHARS} characters"),
                ));
            }
            let classes = names
                .into_iter()
                .map(|name| {
                    let text = name.to_lowercase();
                    ExpandedClass {
                        name,
                        templates: vec![text.clone()],
                        ensemble: vec![],
                        negative: vec![format!("no {text}")],
                        positive: vec![text],
                    }
                })
                .collect();
            Ok(("inline".into(), classes))
        }
        (p, None) => {
            let name = p.as_deref().unwrap_or("chexpert5");
            // Only shipped prompt sets: a request never names a file on the server.
            let known = BUILTIN_PROMPTS.iter().any(|(n, _)| *n == name);
            let file = known.then(|| PromptFile::builtin(name)).transpose();
            match file {
                Ok(Some(PromptFile::ZeroShot(z))) => {
                    let classes = z
                        .expand()
                        .map_err(|e| ApiError::bad("bad_prompts", format!("{name}: {e:#}")))?;
                    Ok((name.to_string(), classes))
                }
                _ => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_prompt_set",
                    format!("{name:?} is not a shipped zero-shot prompt set (GET /v1/prompts)"),
                )),
            }
        }
    }
}

/// Prompt embeddings of every class, cached per prompt set and mode. Prompts go through the
/// same batching queue as requests.
async fn prompt_embeddings(
    s: &Shared,
    key: String,
    classes: Vec<ExpandedClass>,
    mode: PromptMode,
) -> Result<Arc<Vec<(String, ClassPrompts, serde_json::Value)>>, ApiError> {
    if let Some(hit) = s.prompt_cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(hit);
    }
    let s2 = s.clone();
    let built = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        // A class's ensemble can hold hundreds of prompts: queue them in chunks that fit.
        let chunk = s2.engine.capacity().clamp(1, 32);
        let embed = |texts: &[String]| -> anyhow::Result<Vec<Vec<f32>>> {
            let mut out = Vec::with_capacity(texts.len());
            for part in texts.chunks(chunk) {
                let replies = s2
                    .engine
                    .submit(part.iter().cloned().map(Input::Text).collect())
                    .map_err(anyhow::Error::new)?;
                for r in replies {
                    let e = r
                        .blocking_recv()
                        .map_err(|_| anyhow::anyhow!("the model thread stopped"))?;
                    out.push(e.map_err(anyhow::Error::msg)?);
                }
            }
            Ok(out)
        };
        classes
            .iter()
            .map(|c| {
                let (cp, shown) = class_prompts(c, mode, &embed).map_err(|e| {
                    if e.downcast_ref::<Overloaded>().is_some() {
                        ApiError::from(EmbedError::Overloaded)
                    } else {
                        ApiError::bad("bad_prompts", format!("{e:#}"))
                    }
                })?;
                Ok((c.name.clone(), cp, shown))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let built = Arc::new(built);
    if let Ok(mut c) = s.prompt_cache.lock() {
        if c.len() >= PROMPT_CACHE_ENTRIES {
            c.clear();
        }
        c.insert(key, built.clone());
    }
    Ok(built)
}

async fn zero_shot(
    State(s): State<Shared>,
    q: Result<Query<ZeroShotQuery>, QueryRejection>,
    req: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = query(q)?;
    let mode = PromptMode::parse(q.mode.as_deref().unwrap_or("pos_neg"))
        .map_err(|e| ApiError::bad("bad_mode", e.to_string()))?;
    let (set, classes) = requested_classes(&q)?;
    let key = format!("{set}|{}|{}", mode.as_str(), q.labels.as_deref().unwrap_or(""));
    let (info, image) = embed_one_image(&s, req).await?;
    let prompts = prompt_embeddings(&s, key, classes, mode).await?;
    let cps: Vec<ClassPrompts> = prompts.iter().map(|(_, c, _)| c.clone()).collect();
    let scores = zero_shot_scores(&[image], &cps, s.temperature).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", e.to_string())
    })?;
    let rows: Vec<_> = prompts
        .iter()
        .zip(&scores[0])
        .map(|((name, _, shown), score)| json!({"label": name, "score": score, "prompts": shown}))
        .collect();
    Ok(Json(json!({
        "prompt_set": set,
        "mode": mode.as_str(),
        "score": if mode == PromptMode::PosNeg { "probability of the positive prompt" } else { "cosine similarity" },
        "temperature": s.temperature,
        "image": info,
        "scores": rows,
    })))
}

#[derive(Deserialize)]
struct RetrieveQuery {
    k: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextQuery {
    text: String,
    k: Option<usize>,
}

async fn retrieve(
    State(s): State<Shared>,
    q: Result<Query<RetrieveQuery>, QueryRejection>,
    req: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = query(q)?;
    let Some(index) = &s.index else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_index",
            "this server has no index (start it with --index, built by `medvlp index build`)",
        ));
    };
    let (kind, embedding, k, modality) = if content_type(req.headers()) == "application/json" {
        let (parts, body) = req.into_parts();
        let t: TextQuery =
            json_body(&s, &parts.headers, body, "{\"text\": ..., \"k\": ...}").await?;
        if t.text.trim().is_empty() {
            return Err(ApiError::bad("empty_text", "`text` is empty"));
        }
        let e = s.engine.embed(vec![Input::Text(t.text)]).await?.remove(0);
        ("text", e, t.k.or(q.k), medvlp_index::Modality::Image)
    } else {
        let (_, e) = embed_one_image(&s, req).await?;
        ("image", e, q.k, medvlp_index::Modality::Text)
    };
    let k = k.unwrap_or(10);
    if k == 0 || k > MAX_K {
        return Err(ApiError::bad("bad_k", format!("k must be 1 to {MAX_K}")));
    }
    let hits = index.search(modality, &embedding, k).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "index_error", format!("{e:#}"))
    })?;
    let hits: Vec<_> = hits
        .iter()
        .enumerate()
        .map(|(rank, h)| {
            let r = index.record(h.row);
            json!({"rank": rank + 1, "id": r.id, "score": h.score, "text": r.text, "image": r.image})
        })
        .collect();
    Ok(Json(
        json!({"query": kind, "searched": if kind == "text" { "images" } else { "reports" }, "hits": hits}),
    ))
}

async fn preview(State(s): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let (name, data) = one_upload(&s, req).await?;
    let p = prepare(&s, name, data, |img, pp| preprocess_gray::<ChaCha8Rng>(img, pp, None)).await?;
    let g = p.value;
    let mut png = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(g.width, g.height, g.to_u8())
        .ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "image buffer")
        })?
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut r = png.into_inner().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    let info = p.info["description"].as_str().unwrap_or("").replace(['\r', '\n'], " ");
    if let Ok(v) = HeaderValue::from_str(&info) {
        r.headers_mut().insert("x-medvlp-decode", v);
    }
    Ok(r)
}
