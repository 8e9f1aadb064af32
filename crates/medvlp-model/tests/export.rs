//! Export -> re-import: a medvlp model written as an open_clip directory or a transformers
//! VisionTextDualEncoder directory, read back by the importers, gives the same embeddings; what
//! the target cannot express is refused with the detail named.

use candle_core::{DType, Device, Tensor};
use medvlp_model::config::Pooling;
use medvlp_model::encode::JointEncoder;
use medvlp_model::interop::export::{export, ExportFormat};
use medvlp_model::interop::{self, Family};
use medvlp_model::{model_dir, MedVlp, ModelConfig, ParamStore};
use std::path::{Path, PathBuf};

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medvlp-export-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/interop/hf_dual_encoder/tokenizer.json")
}

/// A tiny grayscale model with random weights (biases and norms included) saved as a directory.
fn model(tag: &str, vision: Pooling, text: Pooling) -> (PathBuf, ModelConfig, ParamStore) {
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    cfg.vision_config.pooling = vision;
    cfg.text_config.pooling = text;
    let store = ParamStore::new(7, DType::F32, &dev);
    MedVlp::new(&cfg, &store).unwrap();
    // Non-trivial values everywhere: zero biases and unit norms would hide mapping mistakes.
    for (i, (_, v)) in store.vars().into_iter().enumerate() {
        let r = Tensor::randn(0f32, 0.3, v.shape(), &dev).unwrap();
        let base = if i % 3 == 0 { (v.as_tensor() + 1.0).unwrap() } else { v.as_tensor().clone() };
        v.set(&(base + r).unwrap()).unwrap();
    }
    let dir = tempdir(tag).join("model");
    model_dir::save(&dir, &cfg, &store, Some(&tokenizer())).unwrap();
    (dir, cfg, store)
}

fn embeddings(m: &dyn JointEncoder, px: &Tensor, ids: &Tensor, mask: &Tensor) -> (Tensor, Tensor) {
    (m.image_embeds(px).unwrap(), m.text_embeds(ids, mask).unwrap())
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let cos = (a * b).unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
    eprintln!(
        "{what}: max abs diff {d:.2e}, min cosine {:.7}",
        cos.iter().cloned().fold(1.0, f32::min)
    );
    assert!(d <= 1e-4, "{what}: max abs diff {d}");
    assert!(cos.iter().all(|c| *c >= 0.99999), "{what}: cosines {cos:?}");
}

fn inputs(cfg: &ModelConfig) -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let s = cfg.vision_config.image_size;
    let px = Tensor::randn(0f32, 1.0, (3, 1, s, s), &dev).unwrap();
    let tok =
        medvlp_data::tokenizer::Tokenizer::from_file(&tokenizer(), cfg.text_config.max_length)
            .unwrap();
    let b = tok
        .encode_batch(&[
            "No acute cardiopulmonary process.",
            "Small left pleural effusion; XXXX ___ 3.5 cm.",
            "Heart size normal",
        ])
        .unwrap();
    let ids = Tensor::from_vec(b.input_ids.clone(), (b.batch, b.len), &dev).unwrap();
    let mask = Tensor::from_vec(
        b.attention_mask.iter().map(|&m| m as f32).collect::<Vec<_>>(),
        (b.batch, b.len),
        &dev,
    )
    .unwrap();
    (px, ids, mask)
}

#[test]
fn open_clip_export_reimports_to_the_same_embeddings() {
    for (tag, vp, tp) in [
        ("oc-mean", Pooling::Mean, Pooling::Mean),
        ("oc-cls", Pooling::Cls, Pooling::Cls),
        ("oc-pooler", Pooling::Cls, Pooling::Pooler),
    ] {
        let (dir, cfg, _) = model(tag, vp, tp);
        let out = dir.parent().unwrap().join("open_clip");
        export(&dir, ExportFormat::OpenClip, &out).unwrap();
        let orig = model_dir::load(&dir, DType::F32, &Device::Cpu, false).unwrap();
        let back = interop::load(&out, &Device::Cpu).unwrap();
        assert_eq!(back.family, Family::OpenClip);
        let (px, ids, mask) = inputs(&cfg);
        let (a_img, a_txt) = embeddings(&orig.model, &px, &ids, &mask);
        // open_clip reads RGB: the gray image replicated.
        let rgb = Tensor::cat(&[&px, &px, &px], 1).unwrap();
        let (b_img, b_txt) = embeddings(&back, &rgb, &ids, &mask);
        assert_close(&format!("{tag} image"), &a_img, &b_img);
        assert_close(&format!("{tag} text"), &a_txt, &b_txt);
        assert!(
            (back.logit_scale
                - orig.model.logit_scale_value().unwrap().to_scalar::<f32>().unwrap() as f64)
                .abs()
                < 1e-3
        );
        assert_eq!(back.preprocess.channels, 3);
    }
}

#[test]
fn hf_export_reimports_to_the_same_embeddings() {
    let (dir, cfg, _) = model("hf", Pooling::Cls, Pooling::Pooler);
    let out = dir.parent().unwrap().join("hf");
    export(&dir, ExportFormat::Hf, &out).unwrap();
    let orig = model_dir::load(&dir, DType::F32, &Device::Cpu, false).unwrap();
    let back = interop::load(&out, &Device::Cpu).unwrap();
    assert_eq!(back.family, Family::HfDualEncoder);
    let (px, ids, mask) = inputs(&cfg);
    let (a_img, a_txt) = embeddings(&orig.model, &px, &ids, &mask);
    let (b_img, b_txt) = embeddings(&back, &px, &ids, &mask);
    assert_close("hf image", &a_img, &b_img);
    assert_close("hf text", &a_txt, &b_txt);
}

#[test]
fn what_the_target_cannot_compute_is_refused_by_name() {
    let (dir, _, _) = model("refuse", Pooling::Mean, Pooling::Mean);
    let out = dir.parent().unwrap().join("hf");
    let e = format!("{:#}", export(&dir, ExportFormat::Hf, &out).unwrap_err());
    assert!(e.contains("mean-pools its patches") && e.contains("tanh pooler"), "{e}");
    assert!(!out.join("model.safetensors").exists(), "nothing written on refusal");

    let mut cfg = ModelConfig::preset("tiny-convnet").unwrap();
    cfg.projection = medvlp_model::config::ProjectionKind::Mlp;
    let store = ParamStore::new(1, DType::F32, &Device::Cpu);
    MedVlp::new(&cfg, &store).unwrap();
    let d = tempdir("refuse-conv").join("model");
    model_dir::save(&d, &cfg, &store, Some(&tokenizer())).unwrap();
    let e = format!(
        "{:#}",
        export(&d, ExportFormat::OpenClip, &d.parent().unwrap().join("oc")).unwrap_err()
    );
    assert!(e.contains("ConvNet image encoder") && e.contains("MLP projection"), "{e}");
}
