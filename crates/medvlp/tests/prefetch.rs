//! The training batch prefetcher gives exactly the batches the pipeline gives, in order and out
//! of order (a resume asks for batch N first).

mod common;
use common::{medvlp, run_ok, tempdir};

use candle_core::{Device, Tensor};
use medvlp_data::dataset::Split;
use medvlp_data::image::preprocess::PreprocessConfig;
use medvlp_data::tokenizer::Tokenizer;
use medvlp_train::data_pipeline::{DataPipeline, PipelineConfig, Prefetcher};
use medvlp_train::recipe::Batch;

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap()
}

fn same(a: &Batch, b: &Batch) -> bool {
    flat(a.pixels.as_ref().unwrap()) == flat(b.pixels.as_ref().unwrap())
        && flat(&a.text.ids) == flat(&b.text.ids)
        && flat(&a.text.mask) == flat(&b.text.mask)
        && a.text.entities == b.text.entities
        && (a.n_paired, a.n_image_only, a.n_text_only)
            == (b.n_paired, b.n_image_only, b.n_text_only)
}

#[test]
fn prefetched_batches_equal_the_pipeline_in_any_order() {
    let tmp = tempdir("prefetch");
    let ds = tmp.join("ds");
    run_ok(
        medvlp()
            .args(["synth", "--n", "40", "--image-only", "12", "--text-only", "12", "--size", "64"])
            .arg("--out")
            .arg(&ds),
    );
    let corpus = tmp.join("reports.txt");
    let text: String = std::fs::read_to_string(ds.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{}\n", v["text"].as_str().unwrap_or("no acute findings"))
        })
        .collect();
    std::fs::write(&corpus, text).unwrap();
    let tok = tmp.join("tokenizer.json");
    run_ok(
        medvlp()
            .args(["tokenizer", "train", "--vocab-size", "200", "--input"])
            .arg(&corpus)
            .arg("--out")
            .arg(&tok),
    );
    let (m, io, to) =
        (ds.join("manifest.jsonl"), ds.join("image_only.jsonl"), ds.join("text_only.jsonl"));
    let pipeline = || {
        let pc = PipelineConfig {
            manifest: &m,
            root: None,
            image_only: Some(&io),
            text_only: Some(&to),
            split: Split::Train,
            batch_size: 8,
            image_only_rate: 0.25,
            text_only_rate: 0.25,
            text_augment: Default::default(),
            max_bad_fraction: 0.0,
            threads: 2,
            train: true,
            seed: 3,
            shard: (0, 1),
        };
        let tk = Tokenizer::from_file(&tok, 32).unwrap();
        DataPipeline::new(&pc, &PreprocessConfig::default(), tk, &Device::Cpu).unwrap()
    };
    let mut direct = pipeline();
    let mut pre = Prefetcher::new(pipeline());
    // In order across an epoch boundary, then a jump back (resume) and forward.
    for k in [0u64, 1, 2, 3, 4, 5, 6, 2, 3, 9, 10] {
        let (a, b) = (direct.batch(k).unwrap(), pre.batch(k).unwrap());
        assert!(same(&a, &b), "batch {k} differs");
        assert!(a.n_image_only > 0 && a.n_text_only > 0);
    }
    assert!(pre.with(|d| d.bad_samples().is_empty()).unwrap());
}
