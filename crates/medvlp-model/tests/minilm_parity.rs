//! Parity with a real checkpoint: all-MiniLM-L6-v2 loaded by medvlp against outputs and gradients
//! computed with Hugging Face transformers (`../shared/assets/minilm`).

use candle_core::{DType, Device, Tensor};
use medvlp_data::assets::asset_path;
use medvlp_data::tokenizer::Tokenizer;
use medvlp_model::bert::{ids_u32, masked_mean_pool};
use medvlp_model::model_dir::{load_hf_bert, weights_metadata};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn minilm_matches_transformers() {
    let Some(dir) = asset_path("minilm") else { return };
    let dev = Device::Cpu;
    let refs =
        candle_core::safetensors::load(dir.join("reference_outputs.safetensors"), &dev).unwrap();
    let bert = load_hf_bert(&dir, DType::F32, &dev, true).unwrap();
    assert!(bert.report.unused.is_empty(), "unused tensors: {:?}", bert.report.unused);
    let ids = ids_u32(&refs["input_ids"]).unwrap();
    let types = ids_u32(&refs["token_type_ids"]).unwrap();
    let mask = refs["attention_mask"].to_dtype(DType::F32).unwrap();
    let h = bert.model.forward(&ids, Some(&types), Some(&mask)).unwrap();
    let expect = &refs["last_hidden_state"];
    assert_eq!(h.dims(), expect.dims());

    // last_hidden_state on non-padding positions
    let m3 = mask.unsqueeze(2).unwrap();
    let diff = max_abs(&h.broadcast_mul(&m3).unwrap(), &expect.broadcast_mul(&m3).unwrap());
    println!("last_hidden_state max abs diff (non-padding) = {diff:.3e}");
    assert!(diff <= 1e-4, "last_hidden_state differs by {diff}");

    // pooler
    let pooled = bert.model.pool(&h).unwrap().unwrap();
    let dp = max_abs(&pooled, &refs["pooler_output"]);
    println!("pooler_output max abs diff = {dp:.3e}");
    assert!(dp <= 1e-4);

    // sentence embeddings
    let emb = masked_mean_pool(&h, &mask).unwrap();
    let cos: Vec<f32> =
        (emb * &refs["sentence_embedding"]).unwrap().sum(1).unwrap().to_vec1().unwrap();
    println!("sentence embedding cosines = {cos:?}");
    assert!(cos.iter().all(|&c| c >= 0.99999), "{cos:?}");

    // backward probe: loss = sum(h * R * mask)
    let r = &refs["backward_probe_R"];
    let loss = h.mul(r).unwrap().broadcast_mul(&m3).unwrap().sum_all().unwrap();
    let expect_loss = refs["backward_probe_loss"].to_vec1::<f32>().unwrap()[0];
    let got_loss = loss.to_scalar::<f32>().unwrap();
    assert!(
        (got_loss - expect_loss).abs() <= 1e-3 * expect_loss.abs().max(1.0),
        "loss {got_loss} vs {expect_loss}"
    );
    let grads = loss.backward().unwrap();
    let mut n = 0;
    for (k, g_ref) in refs.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let name = k.trim_start_matches("grad.");
        let var = bert.store.get(name).unwrap_or_else(|| panic!("no parameter {name}"));
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let num = (g - g_ref)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let den =
            g_ref.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        let rel = num / den.max(1e-12);
        println!("grad {name}: relative error {rel:.2e}");
        assert!(rel <= 1e-3, "gradient of {name}: relative error {rel}");
        n += 1;
    }
    assert_eq!(n, 7, "the probe holds 7 parameter gradients");
}

/// The tokenizer (with the file's baked-in padding to 128 overridden) reproduces the reference ids.
#[test]
fn minilm_tokenizer_reproduces_reference_ids() {
    let Some(dir) = asset_path("minilm") else { return };
    let meta = weights_metadata(&dir.join("reference_outputs.safetensors")).unwrap();
    let sentences: Vec<String> = serde_json::from_str(&meta["sentences"]).unwrap();
    let refs =
        candle_core::safetensors::load(dir.join("reference_outputs.safetensors"), &Device::Cpu)
            .unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), 64).unwrap();
    let texts: Vec<&str> = sentences.iter().map(|s| s.as_str()).collect();
    let b = tok.encode_batch(&texts).unwrap();
    let expect: Vec<Vec<i64>> = refs["input_ids"].to_vec2().unwrap();
    assert_eq!(b.len, expect[0].len(), "padded to the longest sentence");
    for (i, row) in expect.iter().enumerate() {
        let got: Vec<i64> = b.row(&b.input_ids, i).iter().map(|&x| x as i64).collect();
        assert_eq!(&got, row, "sentence {i}");
    }
    let mask: Vec<Vec<i64>> = refs["attention_mask"].to_vec2().unwrap();
    for (i, row) in mask.iter().enumerate() {
        let got: Vec<i64> = b.row(&b.attention_mask, i).iter().map(|&x| x as i64).collect();
        assert_eq!(&got, row);
    }
}
