//! Writing, opening, searching and extending index files (the format is in the crate docs).

use crate::ann::{recall_at_10, AnnGraph};
use crate::matrix::{encode, Matrix};
use crate::{
    AnnInfo, Header, Hit, Modality, Record, Sections, Span, FIELDS, FORMAT_VERSION, MAGIC,
};
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Sections start on multiples of this many bytes.
const ALIGN: u64 = 64;
/// Rows used as queries when measuring a graph's recall.
const RECALL_QUERIES: usize = 200;
/// Headers are small (offsets and a few parameters); a larger length field means a corrupt file.
const MAX_HEADER: u64 = 1 << 20;

fn align(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// An open index: the file memory-mapped, its records parsed, its graphs decoded.
pub struct Index {
    path: PathBuf,
    header: Header,
    records: Vec<Record>,
    images: Arc<Matrix>,
    texts: Arc<Matrix>,
    /// Graphs over the images and over the texts.
    ann: Option<(AnnGraph, AnnGraph)>,
}

impl Index {
    /// Maps `path` and checks it (see the crate docs); every error names the file.
    pub fn open(path: &Path) -> Result<Index> {
        open_inner(path).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record of `row`; panics when `row >= len()`, like slice indexing.
    pub fn record(&self, row: usize) -> &Record {
        &self.records[row]
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Whether the index has HNSW graphs.
    pub fn has_ann(&self) -> bool {
        self.ann.is_some()
    }

    /// Row `row` of a matrix, widened to f32; panics when `row >= len()`.
    pub fn vector(&self, modality: Modality, row: usize) -> Vec<f32> {
        assert!(row < self.len(), "row {row} of an index of {} rows", self.len());
        self.matrix(modality).row(row).into_owned()
    }

    fn matrix(&self, modality: Modality) -> &Matrix {
        match modality {
            Modality::Image => &self.images,
            Modality::Text => &self.texts,
        }
    }

    /// The best `k` rows of the `modality` matrix for `query`, best first: through the HNSW graph
    /// when the index has one and `k` is at most its `ef_search`, exactly otherwise.
    pub fn search(&self, modality: Modality, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        let q = self.prepare(query, k)?;
        if let Some((images, texts)) = &self.ann {
            let graph = match modality {
                Modality::Image => images,
                Modality::Text => texts,
            };
            if k <= graph.ef_search {
                return Ok(graph.search(&q, k));
            }
        }
        Ok(self.matrix(modality).top_k(&[&q], k).pop().unwrap_or_default())
    }

    /// The exact best `k` rows (all of them when `k > len()`), best first; equal scores in row
    /// order.
    pub fn search_exact(&self, modality: Modality, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        let q = self.prepare(query, k)?;
        Ok(self.matrix(modality).top_k(&[&q], k).pop().unwrap_or_default())
    }

    /// [`Index::search_exact`] for many queries at once: each block of rows is read once for all
    /// of them.
    pub fn search_batch_exact(
        &self,
        modality: Modality,
        queries: &[Vec<f32>],
        k: usize,
    ) -> Result<Vec<Vec<Hit>>> {
        let qs = queries
            .iter()
            .enumerate()
            .map(|(i, q)| self.prepare(q, k).with_context(|| format!("query {i}")))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
        Ok(self.matrix(modality).top_k(&refs, k))
    }

    /// Errors, naming both hashes, unless the index was built with the model of `model_hash`.
    pub fn check_model(&self, model_hash: &str) -> Result<()> {
        if self.header.model_hash != model_hash {
            bail!(
                "{} was built with the model whose weights hash to {} but this model's hash to {}: \
                 query it with the model it was built with, or build a new index",
                self.path.display(),
                self.header.model_hash,
                model_hash
            );
        }
        Ok(())
    }

    /// The query normalised, after checking `k`, its length and its values.
    fn prepare(&self, query: &[f32], k: usize) -> Result<Vec<f32>> {
        if k == 0 {
            bail!("k must be at least 1");
        }
        if query.len() != self.header.dim {
            bail!(
                "the query has {} values but {} holds {}-dimensional embeddings",
                query.len(),
                self.path.display(),
                self.header.dim
            );
        }
        normalised(query).map_err(|why| anyhow!("the query {why}"))
    }
}

/// `v / |v|`, refusing non-finite values and zero vectors.
fn normalised(v: &[f32]) -> std::result::Result<Vec<f32>, String> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!("has a non-finite value ({}) at position {i}", v[i]));
    }
    let norm = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err("has norm 0".into());
    }
    Ok(v.iter().map(|&x| (x as f64 / norm) as f32).collect())
}

fn open_inner(path: &Path) -> Result<Index> {
    let file = File::open(path).context("cannot open the index")?;
    let meta = file.metadata().context("cannot read the index's metadata")?;
    if meta.is_dir() {
        bail!("is a folder, not an index file");
    }
    let file_len = meta.len();
    if file_len < 16 {
        bail!("not a medvlp index: {file_len} bytes, fewer than the 16-byte preamble");
    }
    // SAFETY: index files are only ever replaced by rename, never rewritten in place; a mapping
    // outlives the rename. Truncating the file under a live mapping would fault, as with any mmap.
    let map = Arc::new(unsafe { Mmap::map(&file) }.context("cannot memory-map the index")?);
    if &map[..8] != MAGIC {
        bail!("not a medvlp index (it does not start with {})", String::from_utf8_lossy(MAGIC));
    }
    let header_len = u64::from_le_bytes(map[8..16].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER || header_len > file_len - 16 {
        bail!(
            "corrupt or truncated: the header length field says {header_len} bytes, the file has \
             {file_len} bytes in all"
        );
    }
    let header_end = 16 + header_len;
    let header: Header = serde_json::from_slice(&map[16..header_end as usize])
        .context("the header is not a valid index header")?;
    if header.format_version != FORMAT_VERSION {
        bail!(
            "index format version {} is not supported (this build reads version {FORMAT_VERSION})",
            header.format_version
        );
    }
    if header.dim == 0 || header.count == 0 {
        bail!("the header says {} rows of dimension {}", header.count, header.dim);
    }
    if !FIELDS.contains(&header.field.as_str()) {
        bail!("the header's field {:?} is not one of {FIELDS:?}", header.field);
    }
    let matrix_len = (header.count as u64)
        .checked_mul(header.dim as u64)
        .and_then(|n| n.checked_mul(header.dtype.size() as u64))
        .context("the header's count x dim overflows")?;
    let s = &header.sections;
    if header.ann.is_some() != (s.ann_images.is_some() && s.ann_texts.is_some())
        || s.ann_images.is_some() != s.ann_texts.is_some()
    {
        bail!("the header's ANN description and ANN sections disagree");
    }
    // Sections in file order, each aligned, after the previous one, inside the file; the last
    // one ends the file.
    let mut spans: Vec<(&str, &Span, Option<u64>)> = vec![
        ("image matrix", &s.images, Some(matrix_len)),
        ("text matrix", &s.texts, Some(matrix_len)),
        ("records", &s.records, None),
    ];
    if let (Some(a), Some(b)) = (&s.ann_images, &s.ann_texts) {
        spans.push(("image graph", a, None));
        spans.push(("text graph", b, None));
    }
    let mut end = header_end;
    for (name, span, want) in &spans {
        if span.offset % ALIGN != 0 || span.offset < end {
            bail!(
                "inconsistent header: the {name} section starts at byte {}, which is not a \
                 64-byte boundary after byte {end}",
                span.offset
            );
        }
        if let Some(want) = want {
            if span.len != *want {
                bail!(
                    "inconsistent header: the {name} section is {} bytes, {} x {} {:?} values \
                     take {want}",
                    span.len,
                    header.count,
                    header.dim,
                    header.dtype
                );
            }
        }
        end = span.offset.checked_add(span.len).context("section offsets overflow")?;
        if end > file_len {
            bail!(
                "truncated: the {name} section ends at byte {end} but the file has {file_len} \
                 bytes"
            );
        }
    }
    if end != file_len {
        bail!("{} unexpected bytes after the last section (byte {end})", file_len - end);
    }
    let at = |span: &Span| &map[span.offset as usize..(span.offset + span.len) as usize];
    let records = parse_records(at(&s.records), header.count)?;
    let matrix = |span: &Span| {
        Arc::new(Matrix::mapped(
            map.clone(),
            span.offset as usize,
            header.count,
            header.dim,
            header.dtype,
        ))
    };
    let (images, texts) = (matrix(&s.images), matrix(&s.texts));
    let ann = match (&s.ann_images, &s.ann_texts) {
        (Some(a), Some(b)) => {
            let graph = |name: &str, span: &Span, m: &Arc<Matrix>| -> Result<AnnGraph> {
                let bytes = at(span);
                if span.sha256.as_deref() != Some(sha256_hex(bytes).as_str()) {
                    bail!("the {name} section is corrupt (its sha256 differs from the header's)");
                }
                AnnGraph::from_bytes(bytes, m.clone()).with_context(|| format!("{name} section"))
            };
            Some((graph("image graph", a, &images)?, graph("text graph", b, &texts)?))
        }
        _ => None,
    };
    Ok(Index { path: path.to_path_buf(), header, records, images, texts, ann })
}

fn parse_records(bytes: &[u8], count: usize) -> Result<Vec<Record>> {
    let body = bytes.strip_suffix(b"\n").context("the records section does not end a line")?;
    let mut records = Vec::with_capacity(count);
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if i == count {
            bail!("the records section has more than the header's {count} records");
        }
        let r: Record = serde_json::from_slice(line)
            .with_context(|| format!("record {} (row {i}) is not a valid record", i + 1))?;
        records.push(r);
    }
    if records.len() != count {
        bail!("the records section has {} records, the header says {count}", records.len());
    }
    Ok(records)
}

/// Writes a new index at `path`, replacing any file there atomically, and returns its header.
///
/// `header` supplies `model_hash`, `dim`, `dtype`, `field`, and in `ann` the graph parameters
/// (graphs are built when it is `Some`, and their measured recall filled in); `count`,
/// `format_version` and `sections` are set here. Row `i` of `image_rows` and `text_rows` belongs to
/// `records[i]`; rows are normalised, and a row of the wrong length, with a non-finite value or of
/// norm 0 is refused naming its record.
pub fn write(
    path: &Path,
    header: &Header,
    image_rows: &[Vec<f32>],
    text_rows: &[Vec<f32>],
    records: &[Record],
) -> Result<Header> {
    write_inner(path, header, image_rows, text_rows, records, 0)
        .map_err(|e| anyhow!("writing index {}: {e:#}", path.display()))
}

/// [`write`], taking the first `stored` rows as values read back from an index: they are written
/// as they are, since normalising them again would move them by a rounding step at every append.
fn write_inner(
    path: &Path,
    template: &Header,
    image_rows: &[Vec<f32>],
    text_rows: &[Vec<f32>],
    records: &[Record],
    stored: usize,
) -> Result<Header> {
    let (n, dim) = (records.len(), template.dim);
    if n == 0 {
        bail!("nothing to index (no records)");
    }
    if image_rows.len() != n || text_rows.len() != n {
        bail!("{n} records but {} image rows and {} text rows", image_rows.len(), text_rows.len());
    }
    if dim == 0 {
        bail!("the header's dim is 0");
    }
    if !FIELDS.contains(&template.field.as_str()) {
        bail!("field {:?} is not one of {FIELDS:?}", template.field);
    }
    if template.model_hash.is_empty() {
        bail!("the header has no model hash");
    }
    let mut ids = HashSet::with_capacity(n);
    for r in records {
        if r.id.is_empty() {
            bail!("a record has an empty id");
        }
        if !ids.insert(r.id.as_str()) {
            bail!("record id {:?} appears twice", r.id);
        }
    }
    let flat = |rows: &[Vec<f32>], what: &str| -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(n * dim);
        for (i, (row, r)) in rows.iter().zip(records).enumerate() {
            if row.len() != dim {
                bail!("the {what} row of {:?} has {} values, expected {dim}", r.id, row.len());
            }
            if i < stored {
                out.extend_from_slice(row);
                continue;
            }
            let v = normalised(row).map_err(|why| anyhow!("the {what} row of {:?} {why}", r.id))?;
            out.extend(v);
        }
        Ok(out)
    };
    let (image_bytes, image_values) = encode(&flat(image_rows, "image")?, template.dtype);
    let (text_bytes, text_values) = encode(&flat(text_rows, "text")?, template.dtype);
    let mut record_bytes = Vec::new();
    for r in records {
        serde_json::to_writer(&mut record_bytes, r)?;
        record_bytes.push(b'\n');
    }

    let mut header = template.clone();
    header.format_version = FORMAT_VERSION;
    header.count = n;
    let graphs = match &template.ann {
        None => None,
        Some(req) => {
            if req.kind != "hnsw" || req.ef_construction == 0 || req.ef_search == 0 {
                bail!(
                    "unsupported ANN request: kind {:?}, ef_construction {}, ef_search {} \
                     (kind \"hnsw\", both at least 1)",
                    req.kind,
                    req.ef_construction,
                    req.ef_search
                );
            }
            let t0 = std::time::Instant::now();
            let images = Arc::new(Matrix::owned(image_values, dim));
            let texts = Arc::new(Matrix::owned(text_values, dim));
            let gi = AnnGraph::build(images.clone(), req.ef_construction, req.ef_search, req.seed);
            let gt = AnnGraph::build(texts.clone(), req.ef_construction, req.ef_search, req.seed);
            let build_seconds = t0.elapsed().as_secs_f64();
            // Cross-modal queries, as the index is used: reports find images and vice versa.
            let nq = n.min(RECALL_QUERIES);
            let sample = |m: &Matrix| -> Vec<Vec<f32>> {
                (0..nq).map(|i| m.row(i * n / nq).into_owned()).collect()
            };
            let mut info = AnnInfo::hnsw(req.ef_construction, req.ef_search, req.seed);
            info.recall_at_10_images = recall_at_10(&gi, &sample(&texts));
            info.recall_at_10_texts = recall_at_10(&gt, &sample(&images));
            info.recall_queries = nq;
            info.build_seconds = build_seconds;
            header.ann = Some(info);
            Some((gi.to_bytes()?, gt.to_bytes()?))
        }
    };

    // The header holds the offsets, which depend on its length: grow the reserved room until the
    // header fits in it.
    let mut room = 0u64;
    let header_json = loop {
        let mut at = align(16 + room);
        let mut span = |len: usize, sha: Option<String>| {
            let s = Span { offset: at, len: len as u64, sha256: sha };
            at = align(at + len as u64);
            s
        };
        header.sections = Sections {
            images: span(image_bytes.len(), None),
            texts: span(text_bytes.len(), None),
            records: span(record_bytes.len(), None),
            ann_images: graphs.as_ref().map(|(a, _)| span(a.len(), Some(sha256_hex(a)))),
            ann_texts: graphs.as_ref().map(|(_, b)| span(b.len(), Some(sha256_hex(b)))),
        };
        let json = serde_json::to_vec(&header)?;
        if json.len() as u64 <= room {
            break json;
        }
        room = json.len() as u64 + ALIGN;
    };

    let mut parts: Vec<(&Span, &[u8])> = vec![
        (&header.sections.images, &image_bytes),
        (&header.sections.texts, &text_bytes),
        (&header.sections.records, &record_bytes),
    ];
    if let (Some((a, b)), Some(sa), Some(sb)) =
        (&graphs, &header.sections.ann_images, &header.sections.ann_texts)
    {
        parts.push((sa, a));
        parts.push((sb, b));
    }
    write_atomically(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&(header_json.len() as u64).to_le_bytes())?;
        w.write_all(&header_json)?;
        let mut pos = 16 + header_json.len() as u64;
        for (span, bytes) in &parts {
            w.write_all(&vec![0u8; (span.offset - pos) as usize])?;
            w.write_all(bytes)?;
            pos = span.offset + span.len;
        }
        Ok(())
    })?;
    Ok(header)
}

/// Writes through a temporary file in `path`'s folder, fsyncs it, renames it over `path` and
/// fsyncs the folder, so that readers see the old file or the new one, never a partial one.
fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().context("the path has no file name")?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| -> Result<()> {
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        fill(&mut w).with_context(|| format!("cannot write {}", tmp.display()))?;
        w.flush().with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(w);
        file.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename is durable once the folder is synced; folders cannot be opened for sync on
    // every platform, and the file itself is already safe, so a failure here is not an error.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Adds rows to the index at `path` (`medvlp index add`): same model (`model_hash`), same `dim`,
/// ids not yet in the index. Rewrites the file atomically, with graphs rebuilt (same parameters)
/// when it has them, and returns the new header.
pub fn append(
    path: &Path,
    model_hash: &str,
    image_rows: &[Vec<f32>],
    text_rows: &[Vec<f32>],
    records: &[Record],
) -> Result<Header> {
    let index = Index::open(path)?;
    index.check_model(model_hash)?;
    let existing: HashSet<&str> = index.records.iter().map(|r| r.id.as_str()).collect();
    if let Some(r) = records.iter().find(|r| existing.contains(r.id.as_str())) {
        bail!("{}: record id {:?} is already in the index", path.display(), r.id);
    }
    let mut template = index.header.clone();
    template.ann = template.ann.map(|a| AnnInfo::hnsw(a.ef_construction, a.ef_search, a.seed));
    let n = index.len();
    let all = |m: Modality, new: &[Vec<f32>]| -> Vec<Vec<f32>> {
        let old = index.matrix(m).rows(0, n);
        old.chunks_exact(index.header.dim).map(|r| r.to_vec()).chain(new.iter().cloned()).collect()
    };
    let images = all(Modality::Image, image_rows);
    let texts = all(Modality::Text, text_rows);
    let mut all_records = index.records.clone();
    all_records.extend_from_slice(records);
    drop(index);
    write_inner(path, &template, &images, &texts, &all_records, n)
        .map_err(|e| anyhow!("writing index {}: {e:#}", path.display()))
}
