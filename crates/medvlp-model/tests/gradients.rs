//! Finite-difference checks (f64, tiny shapes) of every layer's backward pass, and equality of the
//! custom CPU kernels with their composed reference implementations.

use candle_core::{DType, Device, Module, Tensor, Var};
use medvlp_model::config::{DecoderConfig, ModelConfig, PositionEmbedding, VisionConfig};
use medvlp_model::fusion::FusionLayer;
use medvlp_model::gradcheck::{check, probe_like};
use medvlp_model::heads::MlmHead;
use medvlp_model::mae_decoder::MaeDecoder;
use medvlp_model::masking::PatchMask;
use medvlp_model::nn::{self, additive_mask, ops, Attention};
use medvlp_model::vit::VisionTransformer;
use medvlp_model::ParamStore;
use rand::SeedableRng;

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-5;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let t = Tensor::zeros(shape, DType::F64, &Device::Cpu).unwrap();
    probe_like(&t, seed).unwrap()
}

fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&randn(shape, seed)).unwrap()
}

#[test]
fn layer_norm_gradient() {
    let x = var(&[3, 4, 8], 1);
    let w = var(&[8], 2);
    let b = var(&[8], 3);
    let probe = randn(&[3, 4, 8], 4);
    let vars = vec![("x".into(), x.clone()), ("w".into(), w.clone()), ("b".into(), b.clone())];
    let r = check(
        &vars,
        || (nn::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)? * &probe)?.sum_all(),
        200,
        EPS,
        TOL,
    )
    .unwrap();
    r.assert_passed("layer_norm");
}

#[test]
fn layer_norm_gelu_gradient() {
    let x = var(&[3, 4, 8], 11);
    let w = var(&[8], 12);
    let b = var(&[8], 13);
    let probe = randn(&[3, 4, 8], 14);
    let vars = vec![("x".into(), x.clone()), ("w".into(), w.clone()), ("b".into(), b.clone())];
    let r = check(
        &vars,
        || {
            (nn::layer_norm_gelu(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)? * &probe)?
                .sum_all()
        },
        200,
        EPS,
        TOL,
    )
    .unwrap();
    r.assert_passed("layer_norm_gelu");
}

#[test]
fn softmax_gradient() {
    let x = var(&[2, 3, 7], 5);
    let probe = randn(&[2, 3, 7], 6);
    let vars = vec![("x".into(), x.clone())];
    let r =
        check(&vars, || (nn::softmax_last_dim(x.as_tensor())? * &probe)?.sum_all(), 100, EPS, TOL)
            .unwrap();
    r.assert_passed("softmax");
}

#[test]
fn gelu_gradient() {
    let x = Var::from_tensor(&(randn(&[5, 9], 7) * 3.0).unwrap()).unwrap();
    let probe = randn(&[5, 9], 8);
    let vars = vec![("x".into(), x.clone())];
    let r =
        check(&vars, || (nn::gelu_erf(x.as_tensor())? * &probe)?.sum_all(), 100, EPS, TOL).unwrap();
    r.assert_passed("gelu");
}

#[test]
fn attention_with_padding_mask_gradient() {
    let store = ParamStore::new(1, DType::F64, &Device::Cpu);
    let att = Attention::new(8, 8, 2, store.var_builder().pp("att"), store.var_builder().pp("out"))
        .unwrap();
    let x = var(&[2, 5, 8], 9);
    // second sample: last two tokens are padding
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &Device::Cpu).unwrap();
    let am = additive_mask(&mask, DType::F64).unwrap();
    let probe = randn(&[2, 5, 8], 10);
    let mut vars = store.vars();
    vars.push(("x".into(), x.clone()));
    let r = check(
        &vars,
        || (att.forward(x.as_tensor(), None, Some(&am), false)?.0 * &probe)?.sum_all(),
        20,
        EPS,
        TOL,
    )
    .unwrap();
    r.assert_passed("attention");
    // Padded keys receive exactly zero attention.
    let (_, p) = att.forward(x.as_tensor(), None, Some(&am), true).unwrap();
    let p = p.unwrap().narrow(0, 1, 1).unwrap().narrow(3, 3, 2).unwrap();
    assert_eq!(p.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap(), 0.0);
}

#[test]
fn cross_attention_block_gradient() {
    let store = ParamStore::new(2, DType::F64, &Device::Cpu);
    let layer =
        FusionLayer::new(8, Some(6), 2, 16, 1e-12, store.var_builder().pp("fusion")).unwrap();
    let text = var(&[2, 4, 8], 11);
    let image = var(&[2, 5, 6], 12);
    let tmask = additive_mask(
        &Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 0, 0]], &Device::Cpu).unwrap(),
        DType::F64,
    )
    .unwrap();
    let probe = randn(&[2, 4, 8], 13);
    let mut vars = store.vars();
    vars.push(("text".into(), text.clone()));
    vars.push(("image".into(), image.clone()));
    let r = check(
        &vars,
        || {
            let out = layer.forward(
                text.as_tensor(),
                Some(&tmask),
                Some(image.as_tensor()),
                None,
                true,
            )?;
            (out.hidden * &probe)?.sum_all()
        },
        12,
        EPS,
        TOL,
    )
    .unwrap();
    r.assert_passed("cross-attention block");
    let out =
        layer.forward(text.as_tensor(), Some(&tmask), Some(image.as_tensor()), None, true).unwrap();
    assert_eq!(out.cross_probs.unwrap().dims(), &[2, 2, 4, 5]);
}

fn tiny_vision(pos: PositionEmbedding) -> VisionConfig {
    VisionConfig {
        model_type: Default::default(),
        conv_channels: vec![],
        pooling: Default::default(),
        image_size: 16,
        num_channels: 1,
        patch_size: 4,
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 16,
        position_embedding: pos,
        layer_norm_eps: 1e-6,
    }
}

#[test]
fn vit_with_patch_subset_gradient() {
    let store = ParamStore::new(3, DType::F64, &Device::Cpu);
    let cfg = tiny_vision(PositionEmbedding::Learned);
    let vit = VisionTransformer::new(&cfg, store.var_builder().pp("vision_model")).unwrap();
    let px = var(&[2, 1, 16, 16], 14);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mask = PatchMask::random(2, 16, 0.75, &mut rng, &Device::Cpu).unwrap();
    assert_eq!(mask.num_keep(), 4);
    let probe = randn(&[2, 5, 8], 15);
    let mut vars = store.vars();
    vars.push(("pixels".into(), px.clone()));
    let r = check(
        &vars,
        || (vit.forward_masked(px.as_tensor(), &mask)? * &probe)?.sum_all(),
        6,
        EPS,
        TOL,
    )
    .unwrap();
    r.assert_passed("vit (patch subset)");
    // Pixels of masked patches get no gradient; visible ones do.
    let loss =
        (vit.forward_masked(px.as_tensor(), &mask).unwrap() * &probe).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let gp = medvlp_model::vit::patchify(&g.get(px.as_tensor()).unwrap().clone(), 4).unwrap();
    let per_patch: Vec<Vec<f64>> = gp.abs().unwrap().sum(2).unwrap().to_vec2().unwrap();
    for (b, row) in per_patch.iter().enumerate() {
        for (p, g) in row.iter().enumerate() {
            let visible = mask.keep[b].contains(&p);
            assert_eq!(*g > 0.0, visible, "sample {b} patch {p}");
        }
    }
}

#[test]
fn vit_subset_equals_full_encoding_when_nothing_is_masked() {
    let store = ParamStore::new(4, DType::F64, &Device::Cpu);
    let cfg = tiny_vision(PositionEmbedding::Sincos);
    let vit = VisionTransformer::new(&cfg, store.var_builder()).unwrap();
    let px = randn(&[2, 1, 16, 16], 16);
    let all: Vec<Vec<usize>> = vec![(0..16).collect(), (0..16).collect()];
    let mask = PatchMask::from_keep(all, 16, &Device::Cpu).unwrap();
    let a = vit.forward(&px).unwrap();
    let b = vit.forward_masked(&px, &mask).unwrap();
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(d < 1e-12, "{d}");
}

/// `forward_cls` (the last block on the CLS token only) gives `forward(..)[:, 0]`, in f64 and in
/// f32 at a width where the fused attention and GEMM kernels run, for 1 and 3 blocks.
#[test]
fn vit_cls_path_equals_the_full_encoding_at_cls() {
    for (dtype, width, layers, tol) in
        [(DType::F64, 8, 2, 1e-12), (DType::F32, 64, 1, 2e-5), (DType::F32, 64, 3, 2e-5)]
    {
        let store = ParamStore::new(6, dtype, &Device::Cpu);
        let cfg = VisionConfig {
            hidden_size: width,
            num_hidden_layers: layers,
            intermediate_size: 4 * width,
            ..tiny_vision(PositionEmbedding::Learned)
        };
        let vit = VisionTransformer::new(&cfg, store.var_builder()).unwrap();
        let px = randn(&[3, 1, 16, 16], 17).to_dtype(dtype).unwrap();
        let full = vit.forward(&px).unwrap().narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let cls = vit.forward_cls(&px).unwrap();
        assert_eq!(cls.dims(), &[3, width]);
        let d = (full - cls).unwrap().abs().unwrap().max_all().unwrap();
        let d = d.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        assert!(d < tol, "{dtype:?} width {width}, {layers} blocks: {d}");
    }
}

/// `VisionEncoder::forward_pooled` is `pool(forward(..))` for each pooling.
#[test]
fn pooled_vision_forward_equals_pooling_the_features() {
    use medvlp_model::config::Pooling;
    use medvlp_model::vision::VisionEncoder;
    for pooling in [Pooling::Cls, Pooling::Mean] {
        let store = ParamStore::new(7, DType::F64, &Device::Cpu);
        let cfg = VisionConfig { pooling, ..tiny_vision(PositionEmbedding::Sincos) };
        let enc = VisionEncoder::new(&cfg, store.var_builder()).unwrap();
        let px = randn(&[2, 1, 16, 16], 18);
        let a = enc.pool(&enc.forward(&px).unwrap()).unwrap();
        let b = enc.forward_pooled(&px).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12, "{pooling:?}: {d}");
    }
}

#[test]
fn mae_decoder_restores_order_and_has_gradients() {
    let store = ParamStore::new(5, DType::F64, &Device::Cpu);
    let vcfg = tiny_vision(PositionEmbedding::Learned);
    let dcfg = DecoderConfig {
        hidden_size: 8,
        num_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 16,
        cross_attention: true,
    };
    let dec = MaeDecoder::new(&dcfg, &vcfg, 6, store.var_builder().pp("mae_decoder")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mask = PatchMask::random(2, 16, 0.5, &mut rng, &Device::Cpu).unwrap();
    let latent = var(&[2, 9, 8], 17);
    let text = var(&[2, 3, 6], 18);
    let probe = randn(&[2, 16, 16], 19);
    let mut vars = store.vars();
    vars.push(("latent".into(), latent.clone()));
    vars.push(("text".into(), text.clone()));
    let r = check(
        &vars,
        || {
            (dec.forward(latent.as_tensor(), &mask, Some((text.as_tensor(), None)))? * &probe)?
                .sum_all()
        },
        6,
        EPS,
        TOL,
    )
    .unwrap();
    r.assert_passed("mae decoder");
}

#[test]
fn mlm_head_gradient() {
    let store = ParamStore::new(6, DType::F64, &Device::Cpu);
    let mut tc = medvlp_model::config::TextConfig::preset("tiny").unwrap();
    tc.vocab_size = 11;
    tc.hidden_size = 8;
    let head = MlmHead::new(&tc, store.var_builder().pp("mlm_head")).unwrap();
    let emb = var(&[11, 8], 20);
    let h = var(&[5, 8], 21);
    let probe = randn(&[5, 11], 22);
    let mut vars = store.vars();
    vars.push(("word_embeddings".into(), emb.clone()));
    vars.push(("hidden".into(), h.clone()));
    let r = check(
        &vars,
        || (head.forward(h.as_tensor(), emb.as_tensor())? * &probe)?.sum_all(),
        20,
        EPS,
        TOL,
    )
    .unwrap();
    r.assert_passed("mlm head");
}

/// Custom kernels and the composed expressions agree (f32, values and gradients).
#[test]
fn kernels_match_composed_reference() {
    let dev = Device::Cpu;
    let x =
        Var::from_tensor(&(randn(&[4, 6, 33], 30) * 2.0).unwrap().to_dtype(DType::F32).unwrap())
            .unwrap();
    let w = Var::from_tensor(&randn(&[33], 31).to_dtype(DType::F32).unwrap()).unwrap();
    let b = Var::from_tensor(&randn(&[33], 32).to_dtype(DType::F32).unwrap()).unwrap();
    let probe = randn(&[4, 6, 33], 33).to_dtype(DType::F32).unwrap();
    type F = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;
    let cases: Vec<(&str, F, F)> = vec![
        (
            "layer_norm",
            |x, w, b| ops::layer_norm(x, w, b, 1e-5),
            |x, w, b| ops::layer_norm_composed(x, w, b, 1e-5),
        ),
        (
            "layer_norm_gelu",
            |x, w, b| ops::layer_norm_gelu(x, w, b, 1e-5),
            |x, w, b| ops::gelu_erf_composed(&ops::layer_norm_composed(x, w, b, 1e-5)?),
        ),
        (
            "softmax",
            |x, _, _| ops::softmax_last_dim(x),
            |x, _, _| ops::softmax_last_dim_composed(x),
        ),
        ("gelu", |x, _, _| ops::gelu_erf(x), |x, _, _| ops::gelu_erf_composed(x)),
    ];
    for (name, fast, slow) in cases {
        let yf = fast(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let ys = slow(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let dy = (&yf - &ys).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(dy < 1e-5, "{name}: forward differs by {dy}");
        let gf = (yf * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (ys * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (vn, v) in [("x", &x), ("w", &w), ("b", &b)] {
            match (gf.get(v.as_tensor()), gs.get(v.as_tensor())) {
                (Some(a), Some(c)) => {
                    let d = (a - c)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(d < 1e-4, "{name}: grad {vn} differs by {d}");
                }
                (None, None) => {}
                (a, c) => panic!(
                    "{name}: grad {vn} present in one only ({} vs {})",
                    a.is_some(),
                    c.is_some()
                ),
            }
        }
    }
    let _ = dev;
}

/// candle-nn's fused softmax drops the gradient (the trap this crate exists to avoid); ours does not.
#[test]
fn candle_fast_softmax_trap_is_avoided() {
    let x = Var::from_tensor(&randn(&[2, 5], 40).to_dtype(DType::F32).unwrap()).unwrap();
    let probe = randn(&[2, 5], 41).to_dtype(DType::F32).unwrap();
    let ours = (nn::softmax_last_dim(x.as_tensor()).unwrap() * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(ours.get(x.as_tensor()).is_some());
    let g = ours
        .get(x.as_tensor())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(g > 0.0);
    let lin = nn::Linear::from_parts(Tensor::ones((3, 5), DType::F32, &Device::Cpu).unwrap(), None);
    assert_eq!(lin.forward(x.as_tensor()).unwrap().dims(), &[2, 3]);
    let _ = ModelConfig::preset("tiny").unwrap();
}

#[test]
fn memory_read_gradient_and_top_k() {
    use medvlp_model::config::MemoryConfig;
    use medvlp_model::memory::CrossModalMemory;
    let store = ParamStore::new(9, DType::F64, &Device::Cpu);
    let cfg = MemoryConfig {
        slots: 12,
        top_k: 4,
        num_heads: 2,
        layers: vec![],
        query: Default::default(),
    };
    let mem = CrossModalMemory::new(&cfg, 6, 8, store.var_builder().pp("memory")).unwrap();
    let x = var(&[2, 3, 6], 50);
    let probe = randn(&[2, 3, 6], 51);
    let mut vars = store.vars();
    vars.push(("x".into(), x.clone()));
    let r = check(&vars, || (mem.read(x.as_tensor())? * &probe)?.sum_all(), 10, EPS, TOL).unwrap();
    r.assert_passed("memory read");
    // Only k of the slots feed a query: the value gradient touches at most b*h*l*k rows.
    let loss = (mem.read(x.as_tensor()).unwrap() * &probe).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let gm = g.get(&mem.memory).unwrap();
    assert_eq!(gm.dims(), &[12, 8]);
    // With k = slots the read equals plain softmax attention over the whole memory.
    let full =
        CrossModalMemory { config: MemoryConfig { top_k: 12, ..cfg.clone() }, ..mem.clone() };
    let y = full.read(x.as_tensor()).unwrap();
    let q = full
        .query
        .forward(x.as_tensor())
        .unwrap()
        .reshape((2, 3, 2, 4))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap();
    let k = full
        .key
        .forward(&full.memory)
        .unwrap()
        .reshape((12, 2, 4))
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap();
    let v = full
        .value
        .forward(&full.memory)
        .unwrap()
        .reshape((12, 2, 4))
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap();
    let p = nn::softmax_last_dim(&(q.broadcast_matmul(&k.t().unwrap()).unwrap() / 2.0).unwrap())
        .unwrap();
    let o = p.broadcast_matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((2, 3, 8)).unwrap();
    let expect = full.output.forward(&o).unwrap();
    let d = (y - expect).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(d < 1e-12, "{d}");
}

/// `BertModel::forward_cls` (the last layer on [CLS] only) equals `forward(..)[:, 0]` with padded
/// rows (the packed path), without padding, with a row whose first position is padding, and
/// through the pooler; f64 and f32.
#[test]
fn bert_cls_path_equals_the_full_encoding_at_cls() {
    let tc = medvlp_model::config::TextConfig::preset("tiny").unwrap();
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
        let store = ParamStore::new(8, dtype, &Device::Cpu);
        let bert = medvlp_model::bert::BertModel::new(&tc, true, store.var_builder()).unwrap();
        let (b, l) = (4, 9);
        let ids = Tensor::from_vec(
            (0..b * l).map(|i| (i * 53 % 900) as u32 + 5).collect::<Vec<_>>(),
            (b, l),
            &Device::Cpu,
        )
        .unwrap();
        let row = |i: usize, lens: &[usize]| (i % l < lens[i / l]) as u8 as f64;
        let masks = [
            [9usize, 4, 6, 1].as_slice(), // padded rows: the packed path
            &[9, 9, 9, 9],                // no padding
            &[9, 0, 6, 2],                // an empty row (its first position is padding)
        ];
        for lens in masks {
            let m: Vec<f64> = (0..b * l).map(|i| row(i, lens)).collect();
            let mask = Tensor::from_vec(m, (b, l), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let full = bert.forward(&ids, None, Some(&mask)).unwrap();
            let full = full.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
            let cls = bert.forward_cls(&ids, None, Some(&mask)).unwrap();
            let pooled =
                [bert.pool_cls(&full).unwrap().unwrap(), bert.pool_cls(&cls).unwrap().unwrap()];
            for (a, c) in [(full, cls), (pooled[0].clone(), pooled[1].clone())] {
                let d = (a - c).unwrap().abs().unwrap().max_all().unwrap();
                let d = d.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                assert!(d < tol, "{dtype:?}, lengths {lens:?}: {d}");
            }
        }
    }
}

/// The text encoder runs its layers on the real tokens only (padding removed): same hidden states
/// at every real position and the same parameter gradients as the padded computation, a
/// finite-difference check through the packed path, and zeros at the padding.
#[test]
fn bert_packed_tokens_match_padded_computation() {
    let tc = medvlp_model::config::TextConfig::preset("tiny").unwrap();
    let store = ParamStore::new(5, DType::F64, &Device::Cpu);
    let bert = medvlp_model::bert::BertModel::new(&tc, false, store.var_builder().pp("text_model"))
        .unwrap();
    let (b, l) = (3, 7);
    let lens = [7usize, 3, 5];
    let ids = Tensor::from_vec(
        (0..b * l).map(|i| (i * 37 % 900) as u32 + 5).collect::<Vec<_>>(),
        (b, l),
        &Device::Cpu,
    )
    .unwrap();
    let m: Vec<f64> = (0..b * l).map(|i| if i % l < lens[i / l] { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(m, (b, l), &Device::Cpu).unwrap();
    let m3 = mask.unsqueeze(2).unwrap();
    let padded = || -> candle_core::Result<Tensor> {
        let mut x = bert.embeddings.forward(&ids, None)?;
        let am = additive_mask(&mask, DType::F64)?;
        for layer in &bert.layers {
            x = layer.forward(&x, Some(&am))?;
        }
        Ok(x)
    };
    let (hp, hu) = (bert.forward(&ids, None, Some(&mask)).unwrap(), padded().unwrap());
    let d = (hp.broadcast_mul(&m3).unwrap() - hu.broadcast_mul(&m3).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(d < 1e-12, "real positions differ by {d}");
    let pad = hp
        .broadcast_mul(&(1.0 - &m3).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert_eq!(pad, 0.0, "padding positions are not zero");
    let probe = randn(&[b, l, tc.hidden_size], 50).broadcast_mul(&m3).unwrap();
    let gp = (hp * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let gu = (hu * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in store.vars() {
        let (a, c) = (gp.get(v.as_tensor()), gu.get(v.as_tensor()));
        let (Some(a), Some(c)) = (a, c) else { panic!("{name}: gradient missing") };
        let d = (a - c).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-10, "{name}: gradient differs by {d}");
    }
    // Two post-LN layers deep: central differences carry ~1e-5 relative error on the smallest
    // gradients, so the tolerance is 1e-4 (the analytic gradients equal the padded ones to 1e-10).
    let r = check(
        &store.vars(),
        || (bert.forward(&ids, None, Some(&mask))? * &probe)?.sum_all(),
        40,
        EPS,
        1e-4,
    )
    .unwrap();
    r.assert_passed("bert (packed tokens)");
}

/// The same finite-difference checks through the composed candle ops that a CUDA device runs
/// (`MEDVLP_KERNELS=composed`), so the GPU path's backward passes are verified on the CPU too.
#[test]
fn gradient_checks_pass_on_the_composed_path() {
    use medvlp_model::nn::fused::{with_kernels, Kernels};
    with_kernels(Kernels::Composed, || {
        layer_norm_gradient();
        layer_norm_gelu_gradient();
        softmax_gradient();
        gelu_gradient();
        attention_with_padding_mask_gradient();
        cross_attention_block_gradient();
        vit_with_patch_subset_gradient();
        mae_decoder_restores_order_and_has_gradients();
        mlm_head_gradient();
        memory_read_gradient_and_top_k();
    });
}
