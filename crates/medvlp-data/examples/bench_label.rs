//! Labeler throughput benchmark.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run -p medvlp-data --release --example bench_label -- [N] [FILE]
//! ```
//! Labels N reports (default 200000). Without FILE the reports are synthetic: 4-9 sentences
//! sampled from the labeler test set plus MIMIC/IU-style headers and placeholders (about 500
//! bytes each, close to real findings + impression sections). With FILE (one report per line)
//! its lines are cycled to N reports. Prints reports/s for labels only and for labels + entities
//! serialised as the `medvlp label` JSONL lines.

use std::time::Instant;

use medvlp_data::text::{label_entities, Extractor};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(200_000);
    let reports: Vec<String> = match args.get(2) {
        Some(path) => {
            let text = std::fs::read_to_string(path)?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            anyhow::ensure!(!lines.is_empty(), "{path} has no reports");
            (0..n).map(|i| lines[i % lines.len()].to_string()).collect()
        }
        None => synthetic(n),
    };
    let bytes: usize = reports.iter().map(|r| r.len()).sum();
    let x = Extractor::builtin();
    println!(
        "{} reports, {:.1} MB, mean {} bytes, {} rayon threads",
        reports.len(),
        bytes as f64 / 1e6,
        bytes / reports.len().max(1),
        rayon::current_num_threads()
    );

    let t = Instant::now();
    let labels: Vec<_> = reports.par_iter().map(|r| label_entities(x, &x.extract(r))).collect();
    let dt = t.elapsed().as_secs_f64();
    let positives: usize = labels.iter().map(|l| l.values().filter(|v| **v == 1).count()).sum();
    println!(
        "labels:            {dt:.2} s, {:.0} reports/s ({positives} positive labels)",
        reports.len() as f64 / dt
    );

    let t = Instant::now();
    let out_bytes: usize = reports
        .par_iter()
        .enumerate()
        .map(|(i, r)| {
            let ents = x.extract(r);
            let labels = label_entities(x, &ents);
            serde_json::to_string(&serde_json::json!({"id": i, "labels": labels, "entities": ents}))
                .map(|s| s.len() + 1)
                .unwrap_or(0)
        })
        .sum();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "labels + entities: {dt:.2} s, {:.0} reports/s ({:.1} MB of JSONL)",
        reports.len() as f64 / dt,
        out_bytes as f64 / 1e6
    );
    Ok(())
}

fn synthetic(n: usize) -> Vec<String> {
    let cases = include_str!("../tests/data/labeler_cases.jsonl");
    let sentences: Vec<String> = cases
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    (0..n)
        .map(|_| {
            let k = rng.random_range(4..10);
            let mut s = String::from("EXAMINATION: CHEST (PORTABLE AP)\nINDICATION: ___ year old with dyspnea.\nFINDINGS: ");
            for i in 0..k {
                if i == k - 2 {
                    s.push_str("\nIMPRESSION: ");
                }
                s.push_str(sentences.choose(&mut rng).map_or("", |x| x.as_str()));
                s.push(' ');
            }
            s
        })
        .collect()
}
