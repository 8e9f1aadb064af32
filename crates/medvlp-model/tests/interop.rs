//! Imported checkpoint families against their own Python code: the fixtures in
//! `tests/data/interop` (made by `scripts/gen_interop_fixtures.py`) hold tiny random models in each
//! family's on-disk format with reference embeddings and token ids. Embeddings must match to
//! 1e-4 (cosine >= 0.99999) and the tokenizers must give identical ids on 100 report sentences.

use candle_core::{DType, Device, Tensor};
use medvlp_model::encode::JointEncoder;
use medvlp_model::interop::{self, Family};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/interop")
}

fn compare(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g = got.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let w = want.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let mut max = 0f64;
    for (gr, wr) in g.iter().zip(&w) {
        let (mut dot, mut ng, mut nw) = (0.0, 0.0, 0.0);
        for (a, b) in gr.iter().zip(wr) {
            max = max.max((a - b).abs());
            dot += a * b;
            ng += a * a;
            nw += b * b;
        }
        let cos = dot / (ng.sqrt() * nw.sqrt());
        assert!(cos >= 0.99999, "{what}: cosine {cos}");
    }
    assert!(max <= 1e-4, "{what}: max abs diff {max}");
    eprintln!("{what}: max abs diff {max:.2e}");
}

fn check(name: &str, family: Family) {
    let dir = fixtures().join(name);
    let dev = Device::Cpu;
    let m = interop::load(&dir, &dev).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert_eq!(m.family, family);
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &dev).unwrap();
    let img = m.image_features(&r["pixel_values"]).unwrap();
    compare(&format!("{name} image"), &img, &r["image_embeds"]);
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = r["attention_mask"].to_dtype(DType::F32).unwrap();
    let txt = m.text_features(&ids, &mask).unwrap();
    compare(&format!("{name} text"), &txt, &r["text_embeds"]);
    if let Some(s) = r.get("logit_scale") {
        let want =
            (s.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[0])
                .exp();
        assert!((m.logit_scale().unwrap() - want).abs() < 1e-4 * want, "{name}: logit scale");
    }
    // The normalised embeddings the commands use.
    let e = m.image_embeds(&r["pixel_values"]).unwrap().sqr().unwrap().sum(1).unwrap();
    for n in e.to_vec1::<f32>().unwrap() {
        assert!((n - 1.0).abs() < 1e-5);
    }
    // Tokenizer: identical ids, specials included, truncated at the context length.
    let tok = m.medvlp_tokenizer().unwrap();
    let sentences = std::fs::read_to_string(fixtures().join("sentences.txt")).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("token_ids.json")).unwrap())
            .unwrap();
    let want = want["ids"].as_array().unwrap();
    let lines: Vec<&str> = sentences.lines().collect();
    assert_eq!(lines.len(), 100);
    for (i, s) in lines.iter().enumerate() {
        let b = tok.encode_batch(&[s]).unwrap();
        let got: Vec<u64> = b.input_ids.iter().map(|&x| x as u64).collect();
        let w: Vec<u64> = want[i].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        assert_eq!(got, w, "{name}: token ids of sentence {i}: {s}");
    }
}

#[test]
fn openai_clip_state_dict_matches_python() {
    check("clip_openai", Family::OpenAiClip);
}

#[test]
fn hf_clip_directory_matches_transformers() {
    check("clip_hf", Family::HfClip);
}

#[test]
fn open_clip_builtin_matches_open_clip() {
    check("open_clip_builtin", Family::OpenClip);
}

#[test]
fn open_clip_timm_vit_with_hf_bert_matches_open_clip() {
    check("open_clip_timm_hf", Family::OpenClip);
}

#[test]
fn mgca_lightning_checkpoint_matches_its_code() {
    check("resnet_bert_mgca", Family::ResnetBert);
}

#[test]
fn hf_dual_encoder_matches_transformers() {
    check("hf_dual_encoder", Family::HfDualEncoder);
}

fn load_err(path: &Path) -> String {
    match interop::load(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn a_pickle_with_objects_is_refused_without_running_them() {
    let bad = fixtures().join("bad");
    let e = load_err(&bad.join("non_tensor.pt"));
    assert!(e.contains("non_tensor.pt") && e.contains("not a tensor"), "{e}");
    let e = load_err(&bad.join("not_a_state_dict.pt"));
    assert!(e.contains("not_a_state_dict.pt") && e.contains("not a state dict"), "{e}");
    let e = load_err(&bad.join("torchscript.pt"));
    assert!(e.contains("TorchScript"), "{e}");
}

/// A copy of fixture `name` in a fresh folder, with `edit` applied to its safetensors weights.
fn edited_copy(
    name: &str,
    tag: &str,
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) -> PathBuf {
    let src = fixtures().join(name);
    let dst = std::env::temp_dir().join(format!("medvlp-interop-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    let w = dst.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &w).unwrap();
    dst
}

#[test]
fn missing_extra_and_misshapen_tensors_are_named() {
    let dir = edited_copy("clip_hf", "missing", |t| {
        t.remove("text_projection.weight");
    });
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors")
            && e.contains("missing tensor text_projection.weight (expected shape [?, 64])"),
        "{e}"
    );

    let dir = edited_copy("clip_hf", "extra", |t| {
        t.insert(
            "vision_model.extra_adapter.weight".into(),
            Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
        );
        t.insert("text_model.bonus".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    });
    let e = load_err(&dir);
    assert!(
        e.contains("2 tensors this architecture does not use")
            && e.contains("text_model.bonus [3]")
            && e.contains("vision_model.extra_adapter.weight [4, 4]"),
        "{e}"
    );

    let dir = edited_copy("clip_hf", "shape", |t| {
        t.insert(
            "text_model.final_layer_norm.weight".into(),
            Tensor::zeros(63, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&dir);
    assert!(
        e.contains(
            "text_model.final_layer_norm.weight has shape [63], the architecture expects [64]"
        ),
        "{e}"
    );
}

#[test]
fn unknown_families_and_missing_pieces_are_one_sentence() {
    let dir = std::env::temp_dir().join(format!("medvlp-interop-unknown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("model_type 'llama' is not a family medvlp reads"),
        "{e}"
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("not a model this version reads"), "{e}");
    // A Lightning checkpoint alone: which tensors are which needs a key map.
    let ckpt = dir.join("last.ckpt");
    std::fs::copy(fixtures().join("resnet_bert_mgca/last.ckpt"), &ckpt).unwrap();
    let e = load_err(&ckpt);
    assert!(e.contains("needs a key map"), "{e}");
    // An OpenAI CLIP checkpoint without its BPE vocabulary.
    let pt = dir.join("model.pt");
    std::fs::remove_file(&ckpt).unwrap();
    std::fs::copy(fixtures().join("clip_openai/model.pt"), &pt).unwrap();
    let e = load_err(&pt);
    assert!(e.contains("bpe_simple_vocab_16e6.txt.gz"), "{e}");
    // A MGCA checkpoint read as OpenAI CLIP (no key map) is recognised as not CLIP.
    std::fs::remove_file(&pt).unwrap();
    std::fs::copy(fixtures().join("resnet_bert_mgca/last.ckpt"), dir.join("mgca.pt")).unwrap();
    let e = load_err(&dir.join("mgca.pt"));
    assert!(e.contains("not an OpenAI CLIP state dict"), "{e}");
}

#[test]
fn import_files_reject_unknown_keys_and_keymaps() {
    let dir = std::env::temp_dir().join(format!("medvlp-interop-toml-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("medvlp_import.toml"),
        "family = \"resnet-bert\"\nkeymap = \"mgca\"\ncheckpont = \"x.ckpt\"\n",
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(e.contains("medvlp_import.toml") && e.contains("checkpont"), "{e}");
    std::fs::write(
        dir.join("medvlp_import.toml"),
        "family = \"resnet-bert\"\nkeymap = \"gloria\"\n",
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(e.contains("no built-in key map 'gloria'") && e.contains("mgca"), "{e}");
}
