//! Models from the Hugging Face hub: `--model hf:ORG/NAME[@REV]` becomes a local directory.
//!
//! [`resolve_model`] returns any other path unchanged. For a hub spec it lists the repository at
//! REV (a branch, tag or commit; `main` by default) through the hub API, downloads the files a
//! model loader can use ([`wanted_files`]: configs, safetensors or else PyTorch weights,
//! tokenizers) with the `hf-hub` crate's synchronous client, and returns the snapshot directory
//! in the cache that `huggingface_hub` (Python) shares: `$HF_HOME/hub/models--ORG--NAME/snapshots/
//! <commit>/`, with `refs/REV` holding the commit. Files already in that snapshot are not fetched
//! again; a download goes to `blobs/<etag>.part` and is renamed to `blobs/<etag>` only once
//! complete (a later run resumes the `.part` with a Range request), and the snapshot entry is a
//! symlink made after the rename, so a killed download never leaves a half file under its name.
//!
//! Environment, as in `huggingface_hub`: `HF_HOME` (default `~/.cache/huggingface`, or
//! `$XDG_CACHE_HOME/huggingface`), `HF_HUB_CACHE` (default `$HF_HOME/hub`), `HF_ENDPOINT` (default
//! <https://huggingface.co>), `HF_TOKEN` (else the `$HF_HOME/token` file) and `HF_HUB_OFFLINE=1`,
//! which never touches the network and takes the snapshot that `refs/REV` names. When the hub
//! cannot be reached a cached snapshot is used too, with a warning. Every failure is one sentence
//! naming the repository, the endpoint and, where it helps, the cache folder to fill by hand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::api::RepoInfo;
use hf_hub::{Cache, Repo, RepoType};

/// The hub's address when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// How long the repository listing may take, connection included.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how [`resolve_with`] talks to the hub; [`HubSettings::from_env`] reads it from the
/// environment.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The hub's base URL, without a trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The hub cache, holding the `models--ORG--NAME` folders (`$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// A bearer token (`HF_TOKEN`, else the `$HF_HOME/token` file).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: use the cache only.
    pub offline: bool,
    /// Draw a progress bar per downloaded file.
    pub progress: bool,
    /// How many times a broken file download is resumed before giving up.
    pub retries: usize,
}

impl HubSettings {
    /// The settings from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings from `var` (an environment lookup), as `huggingface_hub` reads them.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let hf_home = match var("HF_HOME") {
            Some(home) => PathBuf::from(home),
            None => match (var("XDG_CACHE_HOME"), var("HOME")) {
                (Some(cache), _) => Path::new(&cache).join("huggingface"),
                (None, Some(home)) => Path::new(&home).join(".cache").join("huggingface"),
                (None, None) => bail!(
                    "neither HF_HOME nor HOME is set, so there is no Hugging Face cache folder; set HF_HOME"
                ),
            },
        };
        let cache_dir = var("HF_HUB_CACHE").map_or_else(|| hf_home.join("hub"), PathBuf::from);
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path =
                    var("HF_TOKEN_PATH").map_or_else(|| hf_home.join("token"), PathBuf::from);
                std::fs::read_to_string(path).ok()
            })
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|value| {
            matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
        });
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Ok(Self {
            endpoint: endpoint.trim().trim_end_matches('/').to_string(),
            cache_dir,
            token,
            offline,
            progress: true,
            retries: 3,
        })
    }
}

/// `spec` itself, or for `hf:ORG/NAME[@REV]` the snapshot directory of that repository in the
/// Hugging Face cache, downloading what is missing (settings from the environment).
pub fn resolve_model(spec: &Path) -> Result<PathBuf> {
    if hub_spec(spec).is_none() {
        return Ok(spec.to_path_buf());
    }
    resolve_with(spec, &HubSettings::from_env()?)
}

/// [`resolve_model`] with explicit settings.
pub fn resolve_with(spec: &Path, settings: &HubSettings) -> Result<PathBuf> {
    let Some(rest) = hub_spec(spec) else {
        return Ok(spec.to_path_buf());
    };
    let HubRepo { id, revision } = parse_spec(rest)?;
    let repo_dir = settings.cache_dir.join(Repo::model(id.clone()).folder_name());
    let context = Context {
        id: &id,
        revision: &revision,
        endpoint: &settings.endpoint,
        repo_dir: &repo_dir,
        token_set: settings.token.is_some(),
    };

    if settings.offline {
        return cached_snapshot(&repo_dir, &revision).ok_or_else(|| {
            anyhow!(
                "HF_HUB_OFFLINE is set and the cache has no snapshot of {id}@{revision}; put the files \
                 in {}/snapshots/<commit>/ and write <commit> to {}, unset HF_HUB_OFFLINE to \
                 download them from {}, or pass the local directory",
                repo_dir.display(),
                repo_dir.join("refs").join(&revision).display(),
                settings.endpoint
            )
        });
    }

    let api = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(settings.progress)
        .with_retries(settings.retries)
        .build()
        .map_err(|e| anyhow!("cannot set up the Hugging Face hub client: {e}"))?;

    // The listing, at the commit REV points to now.
    let listed = api
        .repo(Repo::with_revision(id.clone(), RepoType::Model, revision.clone()))
        .info_request()
        .timeout(LIST_TIMEOUT)
        .call();
    let info: RepoInfo = match listed {
        Ok(response) => response.into_json().map_err(|e| {
            anyhow!(
                "{} answered the listing of {id}@{revision} with something that is not the hub's \
                 JSON ({}); check HF_ENDPOINT",
                settings.endpoint,
                one_line(&e.to_string())
            )
        })?,
        Err(e) => {
            let text = e.to_string();
            let response = e
                .into_response()
                .map(|r| (r.status(), r.header("x-error-code").map(str::to_string)));
            let failure = Failure::from_parts(&text, response);
            if let Failure::Network(reason) = &failure {
                if let Some(dir) = cached_snapshot(&repo_dir, &revision) {
                    tracing::warn!(
                        "cannot reach {} ({reason}); using the cached snapshot {} of {id}@{revision}",
                        settings.endpoint,
                        dir.display()
                    );
                    return Ok(dir);
                }
            }
            return Err(context.error(failure, None));
        }
    };
    let commit = info.sha.trim().to_string();
    if !safe_component(&commit) {
        bail!(
            "{} gave {id}@{revision} the commit `{commit}`, which cannot name a cache folder; check HF_ENDPOINT",
            settings.endpoint
        );
    }
    let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let files = wanted_files(&names);
    if files.is_empty() {
        bail!(
            "{id}@{revision} on {} has no file a model loader can use (config.json, *.safetensors, \
             pytorch_model.bin, tokenizer files…) among its {} files",
            settings.endpoint,
            names.len()
        );
    }

    let snapshot = repo_dir.join("snapshots").join(&commit);
    let missing: Vec<&String> = files.iter().filter(|file| !snapshot.join(file).exists()).collect();
    if !missing.is_empty() {
        tracing::info!(
            "downloading {} of {} files of {id}@{revision} ({commit}) into {}",
            missing.len(),
            files.len(),
            snapshot.display()
        );
    }
    // Download by commit so every file comes from the same snapshot even if REV moves meanwhile.
    let at_commit = api.repo(Repo::with_revision(id.clone(), RepoType::Model, commit.clone()));
    for file in missing {
        let target = snapshot.join(file);
        if std::fs::symlink_metadata(&target).is_ok() {
            // A dangling link (its blob was deleted): hf-hub would not replace it.
            std::fs::remove_file(&target).ok();
        }
        let path = match at_commit.download(file) {
            Ok(path) => path,
            Err(ApiError::RequestError(e)) => {
                let text = e.to_string();
                let response = (*e)
                    .into_response()
                    .map(|r| (r.status(), r.header("x-error-code").map(str::to_string)));
                return Err(context.error(Failure::from_parts(&text, response), Some(file)));
            }
            Err(e) => {
                return Err(
                    context.error(Failure::Interrupted(one_line(&e.to_string())), Some(file))
                )
            }
        };
        if path != target {
            bail!(
                "{} served {file} of {id} from another commit than the listed {commit} ({}); run again",
                settings.endpoint,
                path.display()
            );
        }
    }
    if revision != commit {
        Cache::new(settings.cache_dir.clone())
            .repo(Repo::with_revision(id.clone(), RepoType::Model, revision.clone()))
            .create_ref(&commit)
            .map_err(|e| {
                anyhow!("cannot write {}: {e}", repo_dir.join("refs").join(&revision).display())
            })?;
    }
    Ok(snapshot)
}

/// What follows `hf:` in `spec`, when it is a hub spec.
fn hub_spec(spec: &Path) -> Option<&str> {
    spec.to_str()?.strip_prefix("hf:")
}

/// A repository and revision named by a hub spec.
#[derive(Debug, PartialEq)]
struct HubRepo {
    id: String,
    revision: String,
}

/// `ORG/NAME[@REV]` (what follows `hf:`).
fn parse_spec(rest: &str) -> Result<HubRepo> {
    let malformed = || {
        anyhow!(
            "`hf:{rest}` is not a hub model: write hf:ORG/NAME or hf:ORG/NAME@REV (REV a branch, tag \
             or commit), e.g. hf:microsoft/BiomedVLP-CXR-BERT-general"
        )
    };
    let (id, revision) = match rest.split_once('@') {
        Some((id, revision)) => (id, revision),
        None => (rest, "main"),
    };
    let (org, name) = id.split_once('/').ok_or_else(malformed)?;
    let part_ok = |part: &str| {
        !part.is_empty()
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !part.starts_with(['-', '.'])
            && !part.ends_with(['-', '.'])
            && !part.contains("--")
            && !part.contains("..")
    };
    let revision_ok = !revision.is_empty()
        && revision.len() <= 256
        && revision.split('/').all(safe_component)
        && !revision.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '\\' | '@' | ':' | '?' | '#')
        });
    if !part_ok(org) || !part_ok(name) || id.len() > 96 || !revision_ok {
        return Err(malformed());
    }
    Ok(HubRepo { id: id.to_string(), revision: revision.to_string() })
}

/// A non-empty path component that stays in its folder.
fn safe_component(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains(['/', '\\'])
}

/// Whether `s` looks like a full git commit hash.
fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cached snapshot that `revision` names: `snapshots/<revision>` for a commit, else the
/// commit in `refs/<revision>`, when that folder exists.
fn cached_snapshot(repo_dir: &Path, revision: &str) -> Option<PathBuf> {
    let snapshots = repo_dir.join("snapshots");
    if is_commit(revision) && snapshots.join(revision).is_dir() {
        return Some(snapshots.join(revision));
    }
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
    let commit = commit.trim();
    let dir = snapshots.join(commit);
    (safe_component(commit) && dir.is_dir()).then_some(dir)
}

/// The files of a repository (its `siblings`' `rfilename`s, in order) that a model loader can
/// use: configs, safetensors weights (PyTorch `.bin` weights only when there are none), other
/// checkpoints, tokenizer and preprocessor files. Paths that would leave the snapshot are dropped.
pub fn wanted_files(names: &[String]) -> Vec<String> {
    let has_safetensors = names.iter().any(|n| n.ends_with(".safetensors"));
    names
        .iter()
        .filter(|name| {
            let relative_ok = name.split('/').all(safe_component);
            let base = name.rsplit('/').next().unwrap_or(name);
            relative_ok && wanted_name(base, has_safetensors)
        })
        .cloned()
        .collect()
}

/// Whether a file called `base` (its name without folders) is one to download.
fn wanted_name(base: &str, has_safetensors: bool) -> bool {
    const EXACT: &[&str] = &[
        "config.json",
        "open_clip_config.json",
        "open_clip_pytorch_model.bin",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
    ];
    const SUFFIXES: &[&str] =
        &[".safetensors", ".safetensors.index.json", ".pt", ".ckpt", ".pth", ".txt.gz", ".toml"];
    // A trainer's resume state next to the weights, never a model.
    const TRAINER_STATE: &[&str] = &["optimizer.pt", "scheduler.pt", "scaler.pt"];
    if TRAINER_STATE.contains(&base) || (base.starts_with("rng_state") && base.ends_with(".pth")) {
        return false;
    }
    let pytorch_weights = base == "pytorch_model.bin"
        || base == "pytorch_model.bin.index.json"
        || (base.starts_with("pytorch_model-") && base.ends_with(".bin"));
    EXACT.contains(&base)
        || SUFFIXES.iter().any(|suffix| base.ends_with(suffix))
        || (pytorch_weights && !has_safetensors)
}

/// Why a hub request failed.
#[derive(Debug)]
enum Failure {
    /// No answer: DNS, connection refused, timeout, TLS (the reason).
    Network(String),
    /// An HTTP error status, with the hub's `X-Error-Code` when it sent one.
    Status(u16, Option<String>),
    /// A download that broke off or could not be written (the reason).
    Interrupted(String),
}

impl Failure {
    /// From a ureq error's text and, for an error status, its status and `X-Error-Code`.
    fn from_parts(text: &str, response: Option<(u16, Option<String>)>) -> Self {
        match response {
            Some((status, code)) => Self::Status(status, code),
            None => {
                // ureq writes `URL: kind: message`; the URL is said elsewhere.
                let reason = match text.split_once(": ") {
                    Some((url, reason)) if url.contains("://") && !url.contains(' ') => reason,
                    _ => text,
                };
                Self::Network(one_line(reason))
            }
        }
    }
}

/// What an error message names.
struct Context<'a> {
    id: &'a str,
    revision: &'a str,
    endpoint: &'a str,
    repo_dir: &'a Path,
    token_set: bool,
}

impl Context<'_> {
    /// The one-sentence error for `failure` while listing (`file` None) or downloading `file`.
    fn error(&self, failure: Failure, file: Option<&str>) -> anyhow::Error {
        let Self { id, revision, endpoint, repo_dir, token_set } = self;
        let what = match file {
            Some(file) => format!("{file} of {id}@{revision}"),
            None => format!("{id}@{revision}"),
        };
        let token_advice = if *token_set {
            "HF_TOKEN is set but does not give access: accept the repository's terms with that \
             account or use another token"
        } else {
            "set HF_TOKEN to a token of an account with access"
        };
        match failure {
            Failure::Network(reason) => anyhow!(
                "cannot reach {endpoint} to download {id} ({reason}); put the files in {}/snapshots/<commit>/, \
                 write <commit> to {} and set HF_HUB_OFFLINE=1, or pass the local directory",
                repo_dir.display(),
                repo_dir.join("refs").join(revision).display()
            ),
            Failure::Interrupted(reason) => anyhow!(
                "the download of {what} from {endpoint} stopped ({reason}); run again to resume it"
            ),
            Failure::Status(status, code) => match (status, code.as_deref(), file) {
                (_, Some("RevisionNotFound"), _) => {
                    anyhow!("revision {revision} does not exist in {id} on {endpoint} (HTTP {status})")
                }
                (_, Some("RepoNotFound"), _) if status == 401 && !token_set => anyhow!(
                    "{id} does not exist on {endpoint}, or it is private (HTTP 401): check the name, \
                     or set HF_TOKEN to a token of an account with access"
                ),
                (_, Some("RepoNotFound"), _) => {
                    anyhow!("{id} does not exist on {endpoint} (HTTP {status}): check the name")
                }
                (_, Some("GatedRepo"), _) | (401 | 403, _, _) => anyhow!(
                    "{id} on {endpoint} is gated or private (HTTP {status} for {what}): {token_advice}, \
                     after accepting its terms at {endpoint}/{id}"
                ),
                (404, _, Some(file)) => anyhow!(
                    "{endpoint} lists {file} in {id}@{revision} but answers HTTP 404 for it; run again later"
                ),
                (404, _, None) => anyhow!(
                    "{id} or its revision {revision} does not exist on {endpoint} (HTTP 404): check the name"
                ),
                _ => anyhow!(
                    "{endpoint} answered HTTP {status} for {what}; run again later, or pass the local directory"
                ),
            },
        }
    }
}

/// `text` on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    /// The fake repository `medvlp-test/tiny`.
    const FILES: &[(&str, &[u8])] = &[
        (".gitattributes", b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"),
        ("README.md", b"# tiny\n"),
        ("config.json", br#"{"model_type": "tiny", "hidden_size": 8}"#),
        ("flax_model.msgpack", b"\x81\xa4flax\xc3"),
        ("model.safetensors", b"\x02\x00\x00\x00\x00\x00\x00\x00{}0123456789abcdef-weights"),
        ("pytorch_model.bin", b"PK\x03\x04 superseded by safetensors"),
        ("text/vocab.txt", b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nlung\n"),
        ("tokenizer.json", br#"{"version": "1.0", "model": {"type": "WordPiece"}}"#),
    ];
    const WANTED: &[&str] =
        &["config.json", "model.safetensors", "text/vocab.txt", "tokenizer.json"];

    /// One request the fake hub received.
    #[derive(Debug, Clone)]
    struct Request {
        path: String,
        range: Option<String>,
    }

    /// A hub on 127.0.0.1 serving `medvlp-test/tiny` (and `medvlp-test/gated`, whose files
    /// answer 401), one thread per connection, `Connection: close`.
    struct FakeHub {
        addr: SocketAddr,
        requests: Arc<Mutex<Vec<Request>>>,
        /// Break off the next full download of model.safetensors halfway.
        truncate_next: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeHub {
        fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let truncate_next = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (requests, truncate_next, stop) =
                    (requests.clone(), truncate_next.clone(), stop.clone());
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let (requests, truncate_next) = (requests.clone(), truncate_next.clone());
                        std::thread::spawn(move || serve(stream, &requests, &truncate_next));
                    }
                })
            };
            Self { addr, requests, truncate_next, stop, thread: Some(thread) }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn requests(&self) -> Vec<Request> {
            self.requests.lock().unwrap().clone()
        }

        fn paths(&self) -> Vec<String> {
            self.requests().into_iter().map(|r| r.path).collect()
        }
    }

    impl Drop for FakeHub {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            if let Some(thread) = self.thread.take() {
                thread.join().unwrap();
            }
        }
    }

    /// Answers one request on `stream`.
    fn serve(mut stream: TcpStream, requests: &Mutex<Vec<Request>>, truncate_next: &AtomicBool) {
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head);
        let mut lines = head.split("\r\n");
        let path =
            lines.next().and_then(|line| line.split_whitespace().nth(1)).unwrap_or("").to_string();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let range = headers.get("range").cloned();
        requests.lock().unwrap().push(Request { path: path.clone(), range: range.clone() });

        let (status, mut extra, body) = route(&path);
        let mut body = body.to_vec();
        let mut truncate = false;
        if status == 200 && !path.starts_with("/api/") {
            let total = body.len();
            if let Some((start, end)) = range.as_deref().and_then(|r| parse_range(r, total)) {
                if path.ends_with("/model.safetensors")
                    && start == 0
                    && end + 1 == total
                    && truncate_next.swap(false, Ordering::SeqCst)
                {
                    truncate = true;
                }
                body = body[start..=end].to_vec();
                extra.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
                return respond(&mut stream, 206, &extra, &body, truncate);
            }
        }
        respond(&mut stream, status, &extra, &body, truncate);
    }

    /// `bytes=A-B` or `bytes=A-` within `total` bytes.
    fn parse_range(range: &str, total: usize) -> Option<(usize, usize)> {
        let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
        let start: usize = start.parse().ok()?;
        let end =
            if end.is_empty() { total - 1 } else { end.parse::<usize>().ok()?.min(total - 1) };
        (start <= end).then_some((start, end))
    }

    /// Status, headers and body for `path`.
    fn route(path: &str) -> (u16, Vec<(&'static str, String)>, &'static [u8]) {
        let error =
            |status, code: &str| (status, vec![("X-Error-Code", code.to_string())], &b""[..]);
        if let Some(rest) = path.strip_prefix("/api/models/") {
            let Some((repo, revision)) = rest.split_once("/revision/") else {
                return error(404, "RepoNotFound");
            };
            if !matches!(repo, "medvlp-test/tiny" | "medvlp-test/gated") {
                return error(404, "RepoNotFound");
            }
            if revision != "main" && revision != SHA {
                return error(404, "RevisionNotFound");
            }
            let siblings: Vec<_> = if repo == "medvlp-test/gated" {
                vec![serde_json::json!({ "rfilename": "config.json" })]
            } else {
                FILES.iter().map(|(name, _)| serde_json::json!({ "rfilename": name })).collect()
            };
            let json = serde_json::json!({ "id": repo, "modelId": repo, "sha": SHA, "siblings": siblings });
            let body: &'static [u8] = serde_json::to_vec(&json).unwrap().leak();
            return (200, vec![("Content-Type", "application/json".into())], body);
        }
        if path.starts_with("/medvlp-test/gated/resolve/") {
            return error(401, "GatedRepo");
        }
        if let Some(rest) = path.strip_prefix("/medvlp-test/tiny/resolve/") {
            if let Some((revision, file)) = rest.split_once('/') {
                let found = FILES.iter().find(|(name, _)| *name == file);
                if let (true, Some((_, content))) = (revision == "main" || revision == SHA, found) {
                    let etag = format!("\"{:016x}{:08x}\"", fnv(content), content.len());
                    return (
                        200,
                        vec![
                            ("X-Repo-Commit", SHA.to_string()),
                            ("ETag", etag),
                            ("Accept-Ranges", "bytes".into()),
                        ],
                        content,
                    );
                }
            }
            return error(404, "EntryNotFound");
        }
        error(404, "RepoNotFound")
    }

    fn fnv(bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .fold(0xcbf29ce484222325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
    }

    /// Writes the response; `truncate` sends the full Content-Length but half the body.
    fn respond(
        stream: &mut TcpStream,
        status: u16,
        headers: &[(&str, String)],
        body: &[u8],
        truncate: bool,
    ) {
        let reason = match status {
            200 => "OK",
            206 => "Partial Content",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let sent = if truncate { &body[..body.len() / 2] } else { body };
        let _ = stream.write_all(out.as_bytes());
        let _ = stream.write_all(sent);
        let _ = stream.flush();
    }

    fn settings(endpoint: &str, home: &Path) -> HubSettings {
        HubSettings {
            endpoint: endpoint.to_string(),
            cache_dir: home.join("hub"),
            token: None,
            offline: false,
            progress: false,
            retries: 0,
        }
    }

    fn resolve(spec: &str, settings: &HubSettings) -> Result<PathBuf> {
        resolve_with(Path::new(spec), settings)
    }

    /// The files under `dir` (following the snapshot's symlinks), relative, with contents.
    fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
                if entry.path().is_dir() {
                    walk(&entry.path(), &format!("{name}/"), out);
                } else {
                    out.insert(name, std::fs::read(entry.path()).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, "", &mut out);
        out
    }

    fn expected_files() -> BTreeMap<String, Vec<u8>> {
        FILES
            .iter()
            .filter(|(name, _)| WANTED.contains(name))
            .map(|(name, content)| (name.to_string(), content.to_vec()))
            .collect()
    }

    fn snapshot_dir(home: &Path) -> PathBuf {
        home.join("hub/models--medvlp-test--tiny/snapshots").join(SHA)
    }

    #[test]
    fn downloads_the_model_files_into_the_hf_cache_then_works_offline() {
        let home = tempfile::tempdir().unwrap();
        let hub = FakeHub::start();
        let online = settings(&hub.url(), home.path());

        let dir = resolve("hf:medvlp-test/tiny", &online).unwrap();
        assert_eq!(dir, snapshot_dir(home.path()));
        assert_eq!(files_under(&dir), expected_files());
        let paths = hub.paths();
        assert_eq!(paths[0], "/api/models/medvlp-test/tiny/revision/main");
        for skipped in ["README.md", "flax_model.msgpack", "pytorch_model.bin", ".gitattributes"] {
            assert!(
                !paths.iter().any(|p| p.ends_with(skipped)),
                "{skipped} was fetched: {paths:?}"
            );
        }
        for wanted in WANTED {
            assert!(paths.contains(&format!("/medvlp-test/tiny/resolve/{SHA}/{wanted}")));
        }
        let repo_dir = home.path().join("hub/models--medvlp-test--tiny");
        assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), SHA);
        // The snapshot holds links to whole blobs; nothing half-downloaded is left.
        assert!(std::fs::symlink_metadata(dir.join("config.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        for blob in std::fs::read_dir(repo_dir.join("blobs")).unwrap() {
            assert!(!blob.unwrap().path().to_string_lossy().ends_with(".part"));
        }

        // Online again: only the listing, no file.
        let before = hub.requests().len();
        assert_eq!(resolve("hf:medvlp-test/tiny", &online).unwrap(), dir);
        assert_eq!(
            hub.paths()[before..],
            ["/api/models/medvlp-test/tiny/revision/main".to_string()]
        );

        // Offline: not a single request, same directory.
        let offline = HubSettings { offline: true, ..online.clone() };
        let before = hub.requests().len();
        assert_eq!(resolve("hf:medvlp-test/tiny", &offline).unwrap(), dir);
        assert_eq!(resolve(&format!("hf:medvlp-test/tiny@{SHA}"), &offline).unwrap(), dir);
        assert_eq!(hub.requests().len(), before);

        // The server gone: offline still works, and online falls back to the cache.
        drop(hub);
        assert_eq!(resolve("hf:medvlp-test/tiny", &offline).unwrap(), dir);
        assert_eq!(resolve("hf:medvlp-test/tiny", &online).unwrap(), dir);
        assert_eq!(files_under(&dir), expected_files());
    }

    #[test]
    fn a_commit_revision_downloads_that_commit() {
        let home = tempfile::tempdir().unwrap();
        let hub = FakeHub::start();
        let dir =
            resolve(&format!("hf:medvlp-test/tiny@{SHA}"), &settings(&hub.url(), home.path()))
                .unwrap();
        assert_eq!(dir, snapshot_dir(home.path()));
        assert_eq!(files_under(&dir), expected_files());
        assert_eq!(hub.paths()[0], format!("/api/models/medvlp-test/tiny/revision/{SHA}"));
        // No ref for a branch that was not asked for.
        let refs = home.path().join("hub/models--medvlp-test--tiny/refs");
        assert!(!refs.join("main").exists());
    }

    #[test]
    fn an_unknown_revision_or_repo_says_it_does_not_exist() {
        let home = tempfile::tempdir().unwrap();
        let hub = FakeHub::start();
        let online = settings(&hub.url(), home.path());

        let err = resolve("hf:medvlp-test/missing", &online).unwrap_err().to_string();
        assert!(err.contains("medvlp-test/missing does not exist"), "{err}");
        assert!(err.contains(&hub.url()), "{err}");
        assert!(!err.contains('\n'), "{err}");

        let err = resolve("hf:medvlp-test/tiny@v9", &online).unwrap_err().to_string();
        assert!(err.contains("revision v9 does not exist in medvlp-test/tiny"), "{err}");

        // A gated repository lists its files but refuses them.
        let err = resolve("hf:medvlp-test/gated", &online).unwrap_err().to_string();
        assert!(err.contains("gated or private"), "{err}");
        assert!(err.contains("HF_TOKEN"), "{err}");
    }

    #[test]
    fn an_unreachable_hub_with_nothing_cached_is_one_sentence_naming_the_cache() {
        let home = tempfile::tempdir().unwrap();
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let endpoint = format!("http://{closed}");
        let repo_dir = home.path().join("hub/models--medvlp-test--tiny");

        let err = resolve("hf:medvlp-test/tiny", &settings(&endpoint, home.path()))
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with(&format!("cannot reach {endpoint} to download medvlp-test/tiny (")),
            "{err}"
        );
        assert!(err.contains(&format!("{}/snapshots/<commit>/", repo_dir.display())), "{err}");
        assert!(err.contains("HF_HUB_OFFLINE=1"), "{err}");

        let offline = HubSettings { offline: true, ..settings(&endpoint, home.path()) };
        let err = resolve("hf:medvlp-test/tiny", &offline).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("medvlp-test/tiny@main"), "{err}");
        assert!(err.contains(&format!("{}/snapshots/<commit>/", repo_dir.display())), "{err}");
        assert!(err.contains(&endpoint), "{err}");
    }

    #[test]
    fn a_broken_download_leaves_no_file_under_its_name_and_resumes() {
        let home = tempfile::tempdir().unwrap();
        let hub = FakeHub::start();
        let online = settings(&hub.url(), home.path());
        hub.truncate_next.store(true, Ordering::SeqCst);

        let err = resolve("hf:medvlp-test/tiny", &online).unwrap_err().to_string();
        assert!(err.contains("model.safetensors of medvlp-test/tiny@main"), "{err}");
        assert!(err.contains("run again to resume"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let dir = snapshot_dir(home.path());
        assert!(!dir.join("model.safetensors").exists());
        let blobs = home.path().join("hub/models--medvlp-test--tiny/blobs");
        let parts: Vec<PathBuf> = std::fs::read_dir(&blobs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "part"))
            .collect();
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert!(!parts[0].with_extension("").exists());
        let half = std::fs::metadata(&parts[0]).unwrap().len();
        assert!(half > 0);

        // Refused offline: the snapshot is incomplete but `refs/main` is not written yet.
        let offline = HubSettings { offline: true, ..online.clone() };
        assert!(resolve("hf:medvlp-test/tiny", &offline).is_err());

        assert_eq!(resolve("hf:medvlp-test/tiny", &online).unwrap(), dir);
        assert_eq!(files_under(&dir), expected_files());
        let resumed = format!("bytes={half}-");
        assert!(
            hub.requests().iter().any(|r| r.path.ends_with("/model.safetensors")
                && r.range.as_deref() == Some(resumed.as_str())),
            "{:?}",
            hub.requests()
        );
    }

    #[test]
    fn malformed_specs_are_one_sentence() {
        let home = tempfile::tempdir().unwrap();
        // Nothing listens there; a malformed spec must fail before any request.
        let settings = settings("http://127.0.0.1:9", home.path());
        for spec in [
            "hf:",
            "hf:name-without-org",
            "hf:a/b@",
            "hf:/b",
            "hf:a/",
            "hf:a/b/c",
            "hf:a b/c",
            "hf:a/b@../../etc",
            "hf:../b",
        ] {
            let err = resolve(spec, &settings).unwrap_err().to_string();
            assert!(err.starts_with(&format!("`{spec}` is not a hub model")), "{err}");
            assert!(err.contains("hf:ORG/NAME@REV"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert_eq!(
            parse_spec("org/name@refs/pr/1").unwrap(),
            HubRepo { id: "org/name".into(), revision: "refs/pr/1".into() }
        );
        assert_eq!(parse_spec("org/name").unwrap().revision, "main");
    }

    #[test]
    fn other_paths_are_returned_unchanged() {
        for path in ["models/xlip", "/tmp/hf:x", "hf", "./hf:org/name"] {
            assert_eq!(resolve_model(Path::new(path)).unwrap(), PathBuf::from(path));
        }
    }

    #[test]
    fn file_selection() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let repo = names(&[
            "config.json",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
            "tf_model.h5",
            "flax_model.msgpack",
            "onnx/model.onnx",
            "README.md",
            "image.png",
            "open_clip_config.json",
            "open_clip_pytorch_model.bin",
            "bpe_simple_vocab_16e6.txt.gz",
            "merges.txt",
            "vocab.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "preprocessor_config.json",
            "medvlp.toml",
            "checkpoint/best.ckpt",
            "weights.pth",
            "optimizer.pt",
            "rng_state.pth",
            "encoder.pt",
            "../escape.safetensors",
        ]);
        assert_eq!(
            wanted_files(&repo),
            names(&[
                "config.json",
                "model-00001-of-00002.safetensors",
                "model.safetensors.index.json",
                "open_clip_config.json",
                "open_clip_pytorch_model.bin",
                "bpe_simple_vocab_16e6.txt.gz",
                "merges.txt",
                "vocab.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "preprocessor_config.json",
                "medvlp.toml",
                "checkpoint/best.ckpt",
                "weights.pth",
                "encoder.pt",
            ])
        );
        // Without safetensors the PyTorch weights are the weights.
        let bin_only = names(&[
            "config.json",
            "pytorch_model.bin",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json",
            "training_args.bin",
        ]);
        assert_eq!(wanted_files(&bin_only), bin_only[..4].to_vec());
    }

    #[test]
    fn settings_from_the_environment() {
        let vars = |pairs: &[(&str, &str)]| {
            let map: BTreeMap<String, String> =
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            move |name: &str| map.get(name).cloned()
        };
        let s = HubSettings::from_vars(vars(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert!(!s.offline);
        assert_eq!(s.token, None);

        let s = HubSettings::from_vars(vars(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "/data/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:8080/"),
            ("HF_TOKEN", " hf_abc \n"),
            ("HF_HUB_OFFLINE", "1"),
        ]))
        .unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/data/hf/hub"));
        assert_eq!(s.endpoint, "http://127.0.0.1:8080");
        assert_eq!(s.token.as_deref(), Some("hf_abc"));
        assert!(s.offline);

        let s =
            HubSettings::from_vars(vars(&[("HF_HOME", "/h"), ("HF_HUB_OFFLINE", "0")])).unwrap();
        assert!(!s.offline);

        // The token file under HF_HOME, as `huggingface-cli login` writes it.
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("token"), "hf_file\n").unwrap();
        let s =
            HubSettings::from_vars(vars(&[("HF_HOME", home.path().to_str().unwrap())])).unwrap();
        assert_eq!(s.token.as_deref(), Some("hf_file"));
    }
}
