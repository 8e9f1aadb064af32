//! medvlp models out to the tools the field uses: an open_clip model directory
//! (`open_clip_config.json` + `open_clip_model.safetensors`, a built-in ViT image tower and a
//! Hugging Face BERT text tower, loadable with `open_clip.create_model_and_transforms(
//! "local-dir:OUT")`) or a transformers `VisionTextDualEncoderModel` directory. Only the
//! embedding path is exported (training heads such as fusion, decoder and MLM are left out).
//! Every rewrite is exact algebra (the patch bias folded into the positions, a grayscale kernel
//! spread over RGB, an identity pooler); what the target cannot compute is refused, never
//! approximated.

use crate::config::{ModelConfig, Pooling, PositionEmbedding, ProjectionKind, VisionArch};
use crate::model_dir::{self, write_atomic, LoadedModel};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    OpenClip,
    Hf,
}

impl ExportFormat {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "open_clip" | "open-clip" => Ok(Self::OpenClip),
            "hf" | "transformers" => Ok(Self::Hf),
            other => bail!("--format '{other}' is not one of open_clip, hf"),
        }
    }
}

/// The details of `cfg` the target cannot express, as one sentence each.
pub fn inexpressible(cfg: &ModelConfig, format: ExportFormat) -> Vec<String> {
    let mut why = vec![];
    let target = match format {
        ExportFormat::OpenClip => "open_clip",
        ExportFormat::Hf => "transformers' VisionTextDualEncoderModel",
    };
    if cfg.vision_config.model_type == VisionArch::Convnet {
        why.push(format!(
            "the ConvNet image encoder has no {target} equivalent (export ViT models)"
        ));
    }
    if cfg.projection == ProjectionKind::Mlp {
        why.push(format!(
            "the MLP projection heads (fc1 with bias, GELU, fc2 with bias) have no {target} equivalent: its projections are bias-free linear maps"
        ));
    }
    if format == ExportFormat::Hf {
        if cfg.vision_config.pooling == Pooling::Mean {
            why.push(
                "the image encoder mean-pools its patches; VisionTextDualEncoderModel pools the ViT's [CLS] token".into(),
            );
        }
        if cfg.text_config.pooling != Pooling::Pooler {
            why.push(format!(
                "the text encoder pools by {}; VisionTextDualEncoderModel pools BERT through its tanh pooler (train with text_config.pooling = \"pooler\")",
                format!("{:?}", cfg.text_config.pooling).to_lowercase()
            ));
        }
    }
    why
}

fn f32t(store: &crate::ParamStore, name: &str) -> Result<Tensor> {
    Ok(store
        .get(name)
        .with_context(|| format!("the model has no {name}"))?
        .as_tensor()
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?)
}

/// The BERT config the text tower corresponds to (Hugging Face `config.json`).
fn bert_config(cfg: &ModelConfig, pad_id: u32) -> serde_json::Value {
    let t = &cfg.text_config;
    json!({
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "intermediate_size": t.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": t.max_position_embeddings,
        "type_vocab_size": t.type_vocab_size,
        "layer_norm_eps": t.layer_norm_eps,
        "pad_token_id": pad_id,
        "position_embedding_type": "absolute",
    })
}

/// `tokenizer_config.json` for the model's `tokenizer.json`, with its special tokens.
fn tokenizer_config(tok: &medvlp_data::tokenizer::Tokenizer) -> serde_json::Value {
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let mut v = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": tok.max_length(),
        "pad_token": tok.id_to_token(tok.pad_id),
        "mask_token": tok.id_to_token(tok.mask_id),
    });
    if let Some(c) = name(tok.cls_id) {
        v["cls_token"] = json!(c);
    }
    if let Some(s) = name(tok.sep_id) {
        v["sep_token"] = json!(s);
    }
    if let Some(u) = ["[UNK]", "<unk>"].iter().find(|u| tok.token_to_id(u).is_some()) {
        v["unk_token"] = json!(u);
    }
    v
}

fn save_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
        .context("serialising weights")?;
    write_atomic(path, &bytes)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
}

/// The text tower's tensors (`text_model.*` without the prefix). open_clip builds BERT with a
/// pooler only for `cls_pooler`, the pooling that uses it; that is the only case the model has one.
fn text_tensors(m: &LoadedModel) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (n, v) in m.store.vars() {
        if let Some(rest) = n.strip_prefix("text_model.") {
            out.insert(
                rest.to_string(),
                v.as_tensor().to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            );
        }
    }
    Ok(out)
}

/// Exports the medvlp model directory `model` to `out` in `format`; returns notes for the user
/// (what was left out, where the target's preprocessing differs).
pub fn export(model: &Path, format: ExportFormat, out: &Path) -> Result<Vec<String>> {
    if super::detect(model)? != super::Family::MedVlp {
        bail!(
            "{}: only medvlp model directories are exported (this is an imported checkpoint)",
            model.display()
        );
    }
    let m = model_dir::load(model, DType::F32, &Device::Cpu, false)?;
    let cfg = &m.config;
    let why = inexpressible(cfg, format);
    if !why.is_empty() {
        bail!(
            "{} cannot be exported to {}: {}",
            model.display(),
            match format {
                ExportFormat::OpenClip => "open_clip",
                ExportFormat::Hf => "transformers",
            },
            why.join("; ")
        );
    }
    let tok_path = m
        .tokenizer
        .clone()
        .with_context(|| format!("{} has no tokenizer.json", model.display()))?;
    let tok = medvlp_data::tokenizer::Tokenizer::from_file(&tok_path, cfg.text_config.max_length)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let left_out: Vec<String> = {
        let mut parts: Vec<String> = m
            .store
            .vars()
            .into_iter()
            .map(|(n, _)| n.split('.').next().unwrap_or_default().to_string())
            .filter(|p| {
                !matches!(
                    p.as_str(),
                    "vision_model"
                        | "text_model"
                        | "visual_projection"
                        | "text_projection"
                        | "logit_scale"
                )
            })
            .collect();
        parts.dedup();
        parts
    };
    match format {
        ExportFormat::OpenClip => export_open_clip(&m, &tok, &tok_path, out)?,
        ExportFormat::Hf => export_hf(&m, &tok, &tok_path, out)?,
    }
    let mut notes: Vec<String> = left_out
        .iter()
        .map(|p| format!("left out {p} (a training head, not used for embeddings)"))
        .collect();
    let pp = &cfg.preprocess;
    if pp.resize_shorter != pp.image_size {
        notes.push(format!(
            "preprocessing: medvlp resizes the shorter side to {} and centre-crops {}; the target's \
             image processor resizes to {} directly, so embed through the same crop for identical results",
            pp.resize_shorter, pp.image_size, pp.image_size
        ));
    }
    Ok(notes)
}

fn vit_parts(m: &LoadedModel) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let vc = &m.config.vision_config;
    let s = &m.store;
    let d = vc.hidden_size;
    let cls = f32t(s, "vision_model.embeddings.cls_token")?.reshape(d)?;
    let pos = match vc.position_embedding {
        PositionEmbedding::Learned => {
            f32t(s, "vision_model.embeddings.position_embeddings")?.reshape(((), d))?
        }
        PositionEmbedding::Sincos => {
            crate::vit::sincos_2d(d, vc.grid(), true, DType::F32, &Device::Cpu)?
        }
    };
    let w = f32t(s, "vision_model.embeddings.patch_embeddings.projection.weight")?;
    let b = f32t(s, "vision_model.embeddings.patch_embeddings.projection.bias")?;
    Ok((cls, pos, w, b))
}

fn export_open_clip(
    m: &LoadedModel,
    tok: &medvlp_data::tokenizer::Tokenizer,
    tok_path: &Path,
    out: &Path,
) -> Result<()> {
    let cfg = &m.config;
    let vc = &cfg.vision_config;
    let s = &m.store;
    let d = vc.hidden_size;
    let mut t = BTreeMap::new();
    let (cls, pos, w, b) = vit_parts(m)?;
    // open_clip's conv1 has no bias: the bias reaches every patch token, as the patch rows of
    // the position table do, so it is added there (the class row keeps its own).
    let pos = Tensor::cat(
        &[&pos.narrow(0, 0, 1)?, &pos.narrow(0, 1, vc.num_patches())?.broadcast_add(&b)?],
        0,
    )?;
    // open_clip's conv1 reads RGB; medvlp's grayscale models see the gray value replicated, so a
    // one-channel kernel becomes three kernels of a third each.
    let w = match vc.num_channels {
        3 => w,
        1 => (Tensor::cat(&[&w, &w, &w], 1)? / 3.0)?,
        c => bail!("a {c}-channel image encoder cannot be exported to open_clip (1 or 3)"),
    };
    t.insert("visual.conv1.weight".into(), w);
    t.insert("visual.class_embedding".into(), cls);
    t.insert("visual.positional_embedding".into(), pos);
    for i in 0..vc.num_hidden_layers {
        let p = format!("vision_model.encoder.layer.{i}.");
        let o = format!("visual.transformer.resblocks.{i}.");
        let g = |n: &str| f32t(s, &format!("{p}{n}"));
        t.insert(format!("{o}ln_1.weight"), g("layernorm_before.weight")?);
        t.insert(format!("{o}ln_1.bias"), g("layernorm_before.bias")?);
        let qkv_w = Tensor::cat(
            &[
                g("attention.attention.query.weight")?,
                g("attention.attention.key.weight")?,
                g("attention.attention.value.weight")?,
            ],
            0,
        )?;
        let qkv_b = Tensor::cat(
            &[
                g("attention.attention.query.bias")?,
                g("attention.attention.key.bias")?,
                g("attention.attention.value.bias")?,
            ],
            0,
        )?;
        t.insert(format!("{o}attn.in_proj_weight"), qkv_w);
        t.insert(format!("{o}attn.in_proj_bias"), qkv_b);
        t.insert(format!("{o}attn.out_proj.weight"), g("attention.output.dense.weight")?);
        t.insert(format!("{o}attn.out_proj.bias"), g("attention.output.dense.bias")?);
        t.insert(format!("{o}ln_2.weight"), g("layernorm_after.weight")?);
        t.insert(format!("{o}ln_2.bias"), g("layernorm_after.bias")?);
        t.insert(format!("{o}mlp.c_fc.weight"), g("intermediate.dense.weight")?);
        t.insert(format!("{o}mlp.c_fc.bias"), g("intermediate.dense.bias")?);
        t.insert(format!("{o}mlp.c_proj.weight"), g("output.dense.weight")?);
        t.insert(format!("{o}mlp.c_proj.bias"), g("output.dense.bias")?);
    }
    t.insert("visual.ln_post.weight".into(), f32t(s, "vision_model.layernorm.weight")?);
    t.insert("visual.ln_post.bias".into(), f32t(s, "vision_model.layernorm.bias")?);
    t.insert("visual.proj".into(), f32t(s, "visual_projection.weight")?.t()?.contiguous()?);
    for (n, v) in text_tensors(m)? {
        t.insert(format!("text.transformer.{n}"), v);
    }
    t.insert("text.proj.weight".into(), f32t(s, "text_projection.weight")?);
    t.insert("logit_scale".into(), f32t(s, "logit_scale")?);
    save_tensors(&out.join("open_clip_model.safetensors"), &t)?;

    // The text tower as a Hugging Face BERT folder (open_clip builds it from hf_model_name).
    let text_dir = out.join("text");
    std::fs::create_dir_all(&text_dir)?;
    write_json(&text_dir.join("config.json"), &bert_config(cfg, tok.pad_id))?;
    write_atomic(&text_dir.join("tokenizer.json"), &std::fs::read(tok_path)?)?;
    write_json(&text_dir.join("tokenizer_config.json"), &tokenizer_config(tok))?;
    write_atomic(&out.join("tokenizer.json"), &std::fs::read(tok_path)?)?;
    write_json(&out.join("tokenizer_config.json"), &tokenizer_config(tok))?;
    let text_abs = std::path::absolute(&text_dir)?.display().to_string();
    let pp = &cfg.preprocess;
    let rgb = |v: &[f32]| -> Vec<f32> {
        if v.len() == 1 {
            vec![v[0]; 3]
        } else {
            v.to_vec()
        }
    };
    let oc = json!({
        "model_cfg": {
            "embed_dim": cfg.projection_dim,
            "quick_gelu": false,
            "vision_cfg": {
                "image_size": vc.image_size,
                "patch_size": vc.patch_size,
                "width": d,
                "layers": vc.num_hidden_layers,
                "head_width": d / vc.num_attention_heads,
                "mlp_ratio": vc.intermediate_size as f64 / d as f64,
                "no_ln_pre": true,
                "pool_type": if vc.pooling == Pooling::Mean { "avg" } else { "tok" },
                "final_ln_after_pool": false,
                "norm_kwargs": {"eps": vc.layer_norm_eps},
            },
            "text_cfg": {
                "hf_model_name": text_abs,
                "hf_tokenizer_name": text_abs,
                "hf_model_pretrained": false,
                "hf_proj_type": "linear",
                "hf_pooler_type": match cfg.text_config.pooling {
                    Pooling::Cls => "cls_last_hidden_state_pooler",
                    Pooling::Mean => "mean_pooler",
                    Pooling::Pooler => "cls_pooler",
                },
                "context_length": cfg.text_config.max_length,
            },
        },
        "preprocess_cfg": {"mean": rgb(&pp.mean), "std": rgb(&pp.std), "interpolation": "bilinear", "resize_mode": "shortest"},
    });
    write_json(&out.join("open_clip_config.json"), &oc)?;
    Ok(())
}

fn export_hf(
    m: &LoadedModel,
    tok: &medvlp_data::tokenizer::Tokenizer,
    tok_path: &Path,
    out: &Path,
) -> Result<()> {
    let cfg = &m.config;
    let vc = &cfg.vision_config;
    let s = &m.store;
    let d = vc.hidden_size;
    let mut t = BTreeMap::new();
    let (cls, pos, w, b) = vit_parts(m)?;
    t.insert("vision_model.embeddings.cls_token".into(), cls.reshape((1, 1, d))?);
    t.insert("vision_model.embeddings.position_embeddings".into(), pos.unsqueeze(0)?);
    t.insert("vision_model.embeddings.patch_embeddings.projection.weight".into(), w);
    t.insert("vision_model.embeddings.patch_embeddings.projection.bias".into(), b);
    for (n, v) in s.vars() {
        if n.starts_with("vision_model.encoder.") || n.starts_with("vision_model.layernorm.") {
            t.insert(n, v.as_tensor().to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
        }
    }
    // ViT's pooler as the identity (`pooler_act = "linear"`): pooler_output is the [CLS] state.
    t.insert("vision_model.pooler.dense.weight".into(), Tensor::eye(d, DType::F32, &Device::Cpu)?);
    t.insert("vision_model.pooler.dense.bias".into(), Tensor::zeros(d, DType::F32, &Device::Cpu)?);
    for (n, v) in text_tensors(m)? {
        t.insert(format!("text_model.{n}"), v);
    }
    t.insert("visual_projection.weight".into(), f32t(s, "visual_projection.weight")?);
    t.insert("text_projection.weight".into(), f32t(s, "text_projection.weight")?);
    t.insert("logit_scale".into(), f32t(s, "logit_scale")?);
    save_tensors(&out.join("model.safetensors"), &t)?;
    let logit = f32t(s, "logit_scale")?.to_scalar::<f32>()?;
    let hf = json!({
        "model_type": "vision-text-dual-encoder",
        "architectures": ["VisionTextDualEncoderModel"],
        "projection_dim": cfg.projection_dim,
        "logit_scale_init_value": logit,
        "vision_config": {
            "model_type": "vit",
            "hidden_size": d,
            "num_hidden_layers": vc.num_hidden_layers,
            "num_attention_heads": vc.num_attention_heads,
            "intermediate_size": vc.intermediate_size,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "layer_norm_eps": vc.layer_norm_eps,
            "image_size": vc.image_size,
            "patch_size": vc.patch_size,
            "num_channels": vc.num_channels,
            "qkv_bias": true,
            "pooler_act": "linear",
            "pooler_output_size": d,
        },
        "text_config": bert_config(cfg, tok.pad_id),
    });
    write_json(&out.join("config.json"), &hf)?;
    write_atomic(&out.join("tokenizer.json"), &std::fs::read(tok_path)?)?;
    write_json(&out.join("tokenizer_config.json"), &tokenizer_config(tok))?;
    let pp = &cfg.preprocess;
    write_json(
        &out.join("preprocessor_config.json"),
        &json!({
            "image_processor_type": "ViTImageProcessor",
            "do_resize": true,
            "size": {"height": vc.image_size, "width": vc.image_size},
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "image_mean": pp.mean,
            "image_std": pp.std,
        }),
    )?;
    Ok(())
}
