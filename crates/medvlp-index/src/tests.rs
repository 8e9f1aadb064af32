use crate::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::Digest;
use std::path::Path;

/// Unit vectors uniform on the sphere (normalised Gaussians, Box-Muller).
fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..dim)
                .map(|_| {
                    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            id: format!("s{i}"),
            text: format!("report {i}: \"quoted\"\nsecond line"),
            image: Some(format!("img/{i}.png")),
        })
        .collect()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn build(path: &Path, n: usize, dim: usize, dtype: Dtype, ann: Option<AnnInfo>) -> Header {
    let mut h = Header::new("abc123", dim, dtype, "report");
    h.ann = ann;
    write(path, &h, &random_rows(n, dim, 1), &random_rows(n, dim, 2), &records(n)).unwrap()
}

/// Every row scored in f64, sorted by score then row.
fn brute_force(rows: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
    let qn = q.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let mut s: Vec<(f64, usize)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.iter().zip(q).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / qn, i))
        .collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    s.into_iter().take(k).map(|(_, i)| i).collect()
}

#[test]
fn exact_search_equals_brute_force() {
    let dir = tmp();
    for (n, dim) in [(1, 3), (255, 17), (256, 8), (257, 65), (700, 31)] {
        let path = dir.path().join(format!("i{n}.idx"));
        build(&path, n, dim, Dtype::F32, None);
        let index = Index::open(&path).unwrap();
        assert_eq!((index.len(), index.header().dim, index.header().count), (n, dim, n));
        let images: Vec<Vec<f32>> = (0..n).map(|r| index.vector(Modality::Image, r)).collect();
        let texts: Vec<Vec<f32>> = (0..n).map(|r| index.vector(Modality::Text, r)).collect();
        // Unnormalised queries: the index normalises them.
        let queries: Vec<Vec<f32>> = random_rows(7, dim, 9 + n as u64)
            .into_iter()
            .map(|q| q.iter().map(|x| x * 3.5).collect())
            .collect();
        for k in [1, 5, n, n + 10] {
            let batch = index.search_batch_exact(Modality::Image, &queries, k).unwrap();
            for (q, b) in queries.iter().zip(&batch) {
                for (m, rows) in [(Modality::Image, &images), (Modality::Text, &texts)] {
                    let hits = index.search_exact(m, q, k).unwrap();
                    let want = brute_force(rows, q, k);
                    assert_eq!(hits.len(), k.min(n));
                    let got: Vec<usize> = hits.iter().map(|h| h.row).collect();
                    // f32 and f64 sums may swap near-equal neighbours: compare scores then.
                    for (g, w) in got.iter().zip(&want) {
                        let (sg, sw) = (hits.iter().find(|h| h.row == *g).unwrap().score, {
                            let qn = q.iter().map(|x| x * x).sum::<f32>().sqrt();
                            rows[*w].iter().zip(q).map(|(a, b)| a * b).sum::<f32>() / qn
                        });
                        assert!(g == w || (sg - sw).abs() < 1e-5, "n {n} k {k}: {got:?} {want:?}");
                    }
                    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
                }
                assert_eq!(b, &index.search_exact(Modality::Image, q, k).unwrap());
            }
        }
    }
}

#[test]
fn equal_scores_come_in_row_order_and_search_is_deterministic() {
    let dir = tmp();
    let path = dir.path().join("ties.idx");
    let row = vec![0.6, 0.8, 0.0];
    let rows = vec![row.clone(); 600];
    let h = Header::new("h", 3, Dtype::F32, "impression");
    write(&path, &h, &rows, &rows, &records(600)).unwrap();
    let index = Index::open(&path).unwrap();
    let hits = index.search(Modality::Text, &row, 300).unwrap();
    assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), (0..300).collect::<Vec<_>>());
    assert!((hits[0].score - 1.0).abs() < 1e-6);
    for _ in 0..3 {
        assert_eq!(index.search(Modality::Text, &row, 300).unwrap(), hits);
    }
}

#[test]
fn bf16_halves_the_matrices_and_stays_within_1e_2_cosine() {
    let dir = tmp();
    let (n, dim) = (300, 129);
    let (p32, p16) = (dir.path().join("f32.idx"), dir.path().join("bf16.idx"));
    let h32 = build(&p32, n, dim, Dtype::F32, None);
    let h16 = build(&p16, n, dim, Dtype::Bf16, None);
    assert_eq!(h16.sections.images.len * 2, h32.sections.images.len);
    let (s32, s16) =
        (std::fs::metadata(&p32).unwrap().len(), std::fs::metadata(&p16).unwrap().len());
    assert!(s16 < s32 * 3 / 5, "{s16} vs {s32}");
    let (a, b) = (Index::open(&p32).unwrap(), Index::open(&p16).unwrap());
    assert_eq!(b.header().dtype, Dtype::Bf16);
    assert_eq!(a.records(), b.records());
    for m in [Modality::Image, Modality::Text] {
        for r in 0..n {
            let (x, y) = (a.vector(m, r), b.vector(m, r));
            let cos: f32 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
            assert!(cos > 1.0 - 1e-2, "row {r}: {cos}");
        }
        let q = random_rows(1, dim, 77).remove(0);
        let (ha, hb) = (a.search(m, &q, 5).unwrap(), b.search(m, &q, 5).unwrap());
        for (x, y) in ha.iter().zip(&hb) {
            let want: f32 = b.vector(m, y.row).iter().zip(&q).map(|(p, q)| p * q).sum();
            assert!((y.score - want).abs() < 1e-5);
            assert!((x.score - y.score).abs() < 1e-2);
        }
    }
}

fn err_of(path: &Path) -> String {
    match Index::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => format!("{e}"),
    }
}

#[test]
fn open_refuses_truncated_corrupt_and_garbage_files_naming_them() {
    let dir = tmp();
    let good = dir.path().join("good.idx");
    let h = build(&good, 50, 16, Dtype::Bf16, Some(AnnInfo::default()));
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.idx");
    let check = |content: &[u8], want: &str| {
        std::fs::write(&bad, content).unwrap();
        let e = err_of(&bad);
        assert!(e.contains("bad.idx") && e.contains(want), "{want}: {e}");
    };
    check(b"", "fewer than the 16-byte preamble");
    check(&[0x42; 4096], "not a medvlp index");
    check(b"{\"format_version\": 1}", "not a medvlp index");
    for cut in [20, 400, h.sections.texts.offset as usize + 10, bytes.len() - 1] {
        check(&bytes[..cut], "truncated");
    }
    let mut extra = bytes.clone();
    extra.extend_from_slice(b"junk");
    check(&extra, "4 unexpected bytes");
    let mut b = bytes.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    check(&b, "header length");
    let mut b = bytes.clone();
    b[16] = b'[';
    check(&b, "header");
    // A byte of the image graph: its checksum no longer matches.
    let mut b = bytes.clone();
    let at = h.sections.ann_images.as_ref().unwrap().offset as usize + 7;
    b[at] ^= 0x55;
    check(&b, "image graph section is corrupt");
    // A record that is no longer JSON.
    let mut b = bytes.clone();
    b[h.sections.records.offset as usize] = b'#';
    check(&b, "record 1");
    // A header that lies about the shape.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let hdr_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let json = &text[16..16 + hdr_len];
    let lied = json.replacen("\"dim\":16", "\"dim\":17", 1);
    assert_ne!(lied, json);
    let mut b = bytes.clone();
    b[16..16 + hdr_len].copy_from_slice(lied.as_bytes());
    check(&b, "inconsistent header");
    let lied = json.replacen("\"format_version\":1", "\"format_version\":7", 1);
    let mut b = bytes.clone();
    b[16..16 + hdr_len].copy_from_slice(lied.as_bytes());
    check(&b, "version 7");
    assert!(err_of(&dir.path().join("missing.idx")).contains("missing.idx"));
    assert!(err_of(dir.path()).contains("folder"));
    // The good file still opens, with its graphs.
    assert!(Index::open(&good).unwrap().has_ann());
}

#[test]
fn corrupt_graph_links_are_refused_even_with_a_matching_checksum() {
    let dir = tmp();
    let path = dir.path().join("g.idx");
    let h = build(&path, 40, 8, Dtype::F32, Some(AnnInfo::hnsw(100, 100, 0)));
    let mut bytes = std::fs::read(&path).unwrap();
    let span = h.sections.ann_texts.clone().unwrap();
    let (a, z) = (span.offset as usize, (span.offset + span.len) as usize);
    // postcard: ef_search (1 byte), the point count and the 40 points (1 byte each), layer zero's
    // node count, then its links: the first link becomes 0x7f, a point that does not exist.
    assert_eq!((bytes[a], bytes[a + 1], bytes[a + 42]), (100, 40, 40));
    assert!(bytes[a + 43] < 40);
    bytes[a + 43] = 0x7f;
    let sha: String =
        sha2::Sha256::digest(&bytes[a..z]).iter().map(|b| format!("{b:02x}")).collect();
    let hdr_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let json = String::from_utf8(bytes[16..16 + hdr_len].to_vec()).unwrap();
    let old = span.sha256.unwrap();
    let json = json.replace(&old, &sha);
    bytes[16..16 + hdr_len].copy_from_slice(json.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = err_of(&path);
    assert!(e.contains("g.idx") && e.contains("links outside"), "{e}");
}

#[test]
fn bad_queries_are_errors_not_panics() {
    let dir = tmp();
    let path = dir.path().join("q.idx");
    build(&path, 20, 8, Dtype::F32, Some(AnnInfo::default()));
    let index = Index::open(&path).unwrap();
    let q = vec![0.5f32; 8];
    let e = |r: anyhow::Result<Vec<Hit>>| format!("{}", r.unwrap_err());
    assert!(e(index.search(Modality::Image, &q, 0)).contains("k must be"));
    assert!(e(index.search_exact(Modality::Image, &q[..7], 3)).contains("7 values"));
    assert!(e(index.search(Modality::Text, &[f32::NAN; 8], 3)).contains("non-finite"));
    assert!(e(index.search(Modality::Text, &[0.0; 8], 3)).contains("norm 0"));
    let r = index.search_batch_exact(Modality::Image, &[q.clone(), vec![1.0; 3]], 2);
    assert!(format!("{:#}", r.unwrap_err()).contains("query 1"));
    let e = index.check_model("other").unwrap_err().to_string();
    assert!(e.contains("abc123") && e.contains("other") && e.contains("q.idx"), "{e}");
    index.check_model("abc123").unwrap();
    assert_eq!(index.search(Modality::Image, &q, 1000).unwrap().len(), 20);
}

#[test]
fn write_refuses_bad_rows_naming_the_record() {
    let dir = tmp();
    let path = dir.path().join("w.idx");
    let h = Header::new("h", 4, Dtype::F32, "report");
    let rows = random_rows(3, 4, 3);
    let fail = |img: &[Vec<f32>], recs: &[Record], want: &str| {
        let e = format!("{}", write(&path, &h, img, &rows, recs).unwrap_err());
        assert!(e.contains("w.idx") && e.contains(want), "{want}: {e}");
    };
    let mut nan = rows.clone();
    nan[1][2] = f32::NAN;
    fail(&nan, &records(3), "\"s1\"");
    let mut short = rows.clone();
    short[2].pop();
    fail(&short, &records(3), "3 values, expected 4");
    let mut dup = records(3);
    dup[2].id = "s0".into();
    fail(&rows, &dup, "appears twice");
    fail(&rows[..2], &records(3), "2 image rows");
    fail(&[], &[], "nothing to index");
    let mut bad = h.clone();
    bad.field = "findings".into();
    assert!(write(&path, &bad, &rows, &rows, &records(3)).is_err());
    assert!(!path.exists());
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn append_adds_rows_rebuilds_graphs_and_refuses_another_model() {
    let dir = tmp();
    let path = dir.path().join("a.idx");
    let (dim, n) = (12, 120);
    let (img, txt, recs) = (random_rows(n, dim, 5), random_rows(n, dim, 6), records(n));
    let mut h = Header::new("m1", dim, Dtype::F32, "report");
    h.ann = Some(AnnInfo::hnsw(64, 32, 7));
    write(&path, &h, &img[..80], &txt[..80], &recs[..80]).unwrap();
    let h2 = append(&path, "m1", &img[80..], &txt[80..], &recs[80..]).unwrap();
    assert_eq!(h2.count, n);
    let ann = h2.ann.clone().unwrap();
    assert_eq!((ann.ef_construction, ann.ef_search, ann.seed), (64, 32, 7));
    let index = Index::open(&path).unwrap();
    assert!(index.has_ann());
    assert_eq!(index.records(), &recs[..]);
    for r in [0, 79, 80, n - 1] {
        let v = index.vector(Modality::Text, r);
        assert!(v.iter().zip(&txt[r]).all(|(a, b)| (a - b).abs() < 1e-6));
        let top = index.search_exact(Modality::Image, &img[r], 1).unwrap();
        assert_eq!(top[0].row, r);
    }
    drop(index);
    let e = format!("{}", append(&path, "m2", &img[..1], &txt[..1], &records(1)).unwrap_err());
    assert!(e.contains("m1") && e.contains("m2"), "{e}");
    let e = format!("{}", append(&path, "m1", &img[..1], &txt[..1], &recs[3..4]).unwrap_err());
    assert!(e.contains("\"s3\" is already in the index"), "{e}");
    let wide = random_rows(1, dim + 1, 8);
    let mut new = records(1);
    new[0].id = "new".into();
    assert!(append(&path, "m1", &wide, &wide, &new).is_err());
    assert_eq!(Index::open(&path).unwrap().len(), n);
}

#[test]
fn hnsw_recall_at_10_on_2000_random_64d_vectors() {
    let dir = tmp();
    let path = dir.path().join("ann.idx");
    let h = build(&path, 2000, 64, Dtype::F32, Some(AnnInfo::default()));
    let info = h.ann.clone().unwrap();
    eprintln!("ann: {info:?}");
    assert!(info.recall_at_10_images >= 0.9 && info.recall_at_10_texts >= 0.9, "{info:?}");
    assert_eq!(info.recall_queries, 200);
    // Measured again through the public API with fresh queries.
    let index = Index::open(&path).unwrap();
    // serde_json's default float parsing may land one ulp off the written f64 (build_seconds).
    let (mut read, mut written) = (index.header().clone(), h.clone());
    let (a, b) = (read.ann.as_mut().unwrap(), written.ann.as_mut().unwrap());
    assert!((a.build_seconds - b.build_seconds).abs() <= 1e-9 * b.build_seconds.abs().max(1.0));
    (a.build_seconds, b.build_seconds) = (0.0, 0.0);
    assert_eq!(read, written);
    let queries = random_rows(100, 64, 1234);
    let mut found = 0;
    for q in &queries {
        let exact: Vec<usize> =
            index.search_exact(Modality::Image, q, 10).unwrap().iter().map(|h| h.row).collect();
        let approx = index.search(Modality::Image, q, 10).unwrap();
        assert!(approx.windows(2).all(|w| w[0].score >= w[1].score));
        found += approx.iter().filter(|h| exact.contains(&h.row)).count();
    }
    let recall = found as f32 / 1000.0;
    eprintln!("recall@10 on fresh queries: {recall}");
    assert!(recall >= 0.9, "{recall}");
}

#[test]
fn index_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Index>();
}

#[test]
fn appending_leaves_stored_bf16_rows_bit_identical() {
    let dir = tmp();
    let path = dir.path().join("b.idx");
    let (n, dim) = (30, 10);
    let (img, txt, recs) = (random_rows(n, dim, 11), random_rows(n, dim, 12), records(n));
    let h = Header::new("m", dim, Dtype::Bf16, "report");
    write(&path, &h, &img[..10], &txt[..10], &recs[..10]).unwrap();
    let before: Vec<Vec<f32>> =
        (0..10).map(|r| Index::open(&path).unwrap().vector(Modality::Image, r)).collect();
    append(&path, "m", &img[10..20], &txt[10..20], &recs[10..20]).unwrap();
    append(&path, "m", &img[20..], &txt[20..], &recs[20..]).unwrap();
    let index = Index::open(&path).unwrap();
    assert_eq!(index.len(), n);
    for (r, want) in before.iter().enumerate() {
        assert_eq!(&index.vector(Modality::Image, r), want, "row {r}");
    }
}
