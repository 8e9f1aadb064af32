//! Model directories: save -> load is bit-exact; metadata carries version, method and config hash;
//! damaged directories give errors that name the file.

use candle_core::{DType, Device, Tensor};
use medvlp_model::model_dir::{self, config_hash, weights_metadata, DirKind};
use medvlp_model::{MedVlp, ModelConfig, ParamStore};

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("medvlp-md-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn save_load_round_trips_bit_exactly() {
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    cfg.method = serde_json::json!({"name": "xlip", "w_mim": 1.0});
    let store = ParamStore::new(3, DType::F32, &dev);
    let model = MedVlp::new(&cfg, &store).unwrap();
    let dir = tempdir("rt");
    let tok = dir.join("src-tokenizer.json");
    std::fs::write(&tok, "{\"placeholder-free\": \"copied verbatim\"}").unwrap();
    model_dir::save(&dir, &cfg, &store, Some(&tok)).unwrap();
    assert_eq!(model_dir::detect(&dir).unwrap(), DirKind::MedVlp);
    assert_eq!(std::fs::read(dir.join("tokenizer.json")).unwrap(), std::fs::read(&tok).unwrap());

    let meta = weights_metadata(&dir.join("model.safetensors")).unwrap();
    assert_eq!(meta["medvlp_format_version"], "1");
    assert_eq!(meta["method"], "xlip");
    assert_eq!(meta["config_hash"], config_hash(&cfg));

    let loaded = model_dir::load(&dir, DType::F32, &dev, true).unwrap();
    assert_eq!(loaded.config, cfg);
    assert!(loaded.report.initialised.is_empty() && loaded.report.unused.is_empty());
    let a = store.vars();
    let b = loaded.store.vars();
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(b.iter()) {
        assert_eq!(na, nb);
        let x: Vec<u32> = va
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|f| f.to_bits())
            .collect();
        let y: Vec<u32> = vb
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|f| f.to_bits())
            .collect();
        assert_eq!(x, y, "{na} differs after round trip");
    }
    // Same outputs.
    let px = Tensor::rand(0f32, 1f32, (2, 1, 32, 32), &dev).unwrap();
    let e1 = model.image_embeds(&px).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let e2 =
        loaded.model.image_embeds(&px).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(e1, e2);
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn damaged_directories_are_errors_naming_the_file() {
    let dev = Device::Cpu;
    let cfg = ModelConfig::preset("tiny").unwrap();
    let store = ParamStore::new(1, DType::F32, &dev);
    MedVlp::new(&cfg, &store).unwrap();
    let dir = tempdir("bad");
    model_dir::save(&dir, &cfg, &store, None).unwrap();
    // truncated weights
    let w = dir.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", model_dir::load(&dir, DType::F32, &dev, true).err().unwrap());
    assert!(e.contains("model.safetensors"), "{e}");
    // the header alone (what `inspect` reads) tells the truncation too
    let e = format!("{:#}", model_dir::read_header(&w).err().unwrap());
    assert!(e.contains("truncated or damaged"), "{e}");
    // NaN weights are refused, naming the tensor
    let mut tensors = std::collections::HashMap::new();
    for (name, var) in store.vars() {
        tensors.insert(name, var.as_tensor().clone());
    }
    let nan = Tensor::new(&[f32::NAN, 1.0], &dev).unwrap();
    tensors.insert("logit_scale".to_string(), nan.narrow(0, 0, 1).unwrap().squeeze(0).unwrap());
    candle_core::safetensors::save(&tensors, &w).unwrap();
    let e = format!("{:#}", model_dir::load(&dir, DType::F32, &dev, false).err().unwrap());
    assert!(e.contains("logit_scale") && e.contains("NaN"), "{e}");
    // broken config
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"medvlp\", \"vision_config\": 3}")
        .unwrap();
    let e = format!("{:#}", model_dir::load(&dir, DType::F32, &dev, true).err().unwrap());
    assert!(e.contains("config.json"), "{e}");
    // no directory at all
    let e = format!("{:#}", model_dir::detect(&dir.join("nope")).err().unwrap());
    assert!(e.contains("nope"), "{e}");
}
