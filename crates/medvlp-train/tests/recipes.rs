//! Every recipe on the tiny config: finite loss, a gradient for every parameter of the model it
//! builds, the loss falls, and the stream bookkeeping (MCR single vs dual) holds.
// The fixtures' 6.28 is test data the loss thresholds were checked on, not a stand-in for TAU.
#![allow(clippy::approx_constant)]

use candle_core::{DType, Device, Tensor};
use medvlp_model::{MedVlp, ModelConfig, ParamStore};
use medvlp_train::optim::{AdamW, AdamWConfig};
use medvlp_train::recipe::{method, Batch, ObjectiveConfig, Stream, TextBatch, METHODS};
use rand::{Rng, SeedableRng};

fn batch(cfg: &ModelConfig, n_paired: usize, n_image_only: usize, n_text_only: usize) -> Batch {
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let s = cfg.vision_config.image_size;
    let n_img = n_paired + n_image_only;
    let rows = n_img + n_text_only;
    let mut px = Vec::with_capacity(n_img * s * s);
    for _ in 0..n_img {
        let (fx, fy, ph, off) = (
            rng.random_range(0.5..4.0f32),
            rng.random_range(0.5..4.0f32),
            rng.random_range(0.0..6.28f32),
            rng.random_range(-1.0..1.0f32),
        );
        for y in 0..s {
            for x in 0..s {
                px.push(off + ((fx * x as f32 + fy * y as f32) / s as f32 * 6.28 + ph).sin());
            }
        }
    }
    let l = 14;
    let (mut ids, mut mask, mut word_ids, mut entities) =
        (vec![0u32; rows * l], vec![0f32; rows * l], vec![], vec![]);
    for r in 0..rows {
        let n = 10 + r % 4;
        let mut w = vec![None; l];
        for t in 0..n {
            ids[r * l + t] = if t == 0 {
                2
            } else if t == n - 1 {
                3
            } else {
                rng.random_range(10..500)
            };
            mask[r * l + t] = 1.0;
            if t > 0 && t < n - 1 {
                w[t] = Some(((t - 1) / 2) as u32);
            }
        }
        word_ids.push(w);
        entities.push(vec![vec![1, 2], vec![5, 6]]);
    }
    let labels: Vec<f32> = (0..rows * 4).map(|k| ((k * 5 + k / 4) % 3 == 0) as u8 as f32).collect();
    Batch {
        pixels: Some(Tensor::from_vec(px, (n_img, 1, s, s), &dev).unwrap()),
        text: TextBatch {
            ids: Tensor::from_vec(ids, (rows, l), &dev).unwrap(),
            mask: Tensor::from_vec(mask, (rows, l), &dev).unwrap(),
            word_ids,
            entities,
            mask_id: 4,
        },
        labels: Some(Tensor::from_vec(labels, (rows, 4), &dev).unwrap()),
        n_paired,
        n_image_only,
        n_text_only,
    }
}

fn build(name: &str, cfg: &ObjectiveConfig) -> (ParamStore, MedVlp) {
    build_preset(name, cfg, "tiny")
}

fn build_preset(name: &str, cfg: &ObjectiveConfig, preset: &str) -> (ParamStore, MedVlp) {
    let m = method(name).unwrap();
    let mut mc = ModelConfig::preset(preset).unwrap();
    m.adapt_model(cfg, &mut mc);
    let store = ParamStore::new(1, DType::F32, &Device::Cpu);
    let model = MedVlp::new(&mc, &store).unwrap();
    (store, model)
}

#[test]
fn every_recipe_reaches_every_parameter_and_learns() {
    reaches_every_parameter_and_learns("tiny");
}

#[test]
fn every_recipe_reaches_every_parameter_and_learns_with_a_convnet() {
    reaches_every_parameter_and_learns("tiny-convnet");
}

fn reaches_every_parameter_and_learns(preset: &str) {
    for name in METHODS {
        let m = method(name).unwrap();
        let cfg = m.defaults();
        let (store, model) = build_preset(name, &cfg, preset);
        let b = batch(&model.config, 6, 2, 2);
        let out = m.loss(&model, &b, &cfg, 0).unwrap();
        let first = out.loss.to_scalar::<f32>().unwrap();
        assert!(first.is_finite(), "{name}: loss {first}");
        let grads = out.loss.backward().unwrap();
        let missing: Vec<String> = store
            .vars()
            .into_iter()
            .filter(|(_, v)| {
                grads
                    .get(v.as_tensor())
                    .map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0)
                    .unwrap_or(true)
            })
            .map(|(n, _)| n)
            .collect();
        assert!(missing.is_empty(), "{name} ({preset}): parameters without gradient: {missing:?}");
        let mut opt = AdamW::new(
            store.vars(),
            AdamWConfig { lr: 3e-3, weight_decay: 0.0, grad_clip: 1.0, ..Default::default() },
        )
        .unwrap();
        for step in 0..25 {
            let l = m.loss(&model, &b, &cfg, step).unwrap().loss;
            let g = opt.collect_grads(&l.backward().unwrap()).unwrap();
            opt.step(&g, 3e-3, 1.0).unwrap();
        }
        // Average over a few mask draws: masks are random per seed.
        let last: f32 = (0..4)
            .map(|s| m.loss(&model, &b, &cfg, 100 + s).unwrap().loss.to_scalar::<f32>().unwrap())
            .sum::<f32>()
            / 4.0;
        println!("{name} ({preset}): {first:.3} -> {last:.3}; parts {:?}", out.parts);
        assert!(last < 0.8 * first, "{name} ({preset}): loss {first} -> {last}");
    }
}

#[test]
fn mcr_single_stream_runs_one_encoder_pass_per_modality() {
    let m = method("mcr").unwrap();
    for (stream, expect) in [(Stream::Single, (1, 1)), (Stream::Dual, (2, 2))] {
        let cfg = ObjectiveConfig { stream, ..m.defaults() };
        let (_, model) = build("mcr", &cfg);
        let b = batch(&model.config, 6, 0, 0);
        let before = model.passes.get();
        m.loss(&model, &b, &cfg, 0).unwrap();
        let after = model.passes.get();
        assert_eq!((after.0 - before.0, after.1 - before.1), expect, "{stream:?}");
    }
}

#[test]
fn xlip_ablations_are_one_flag() {
    use medvlp_train::recipe::{MimMasking, MlmMasking};
    let m = method("xlip").unwrap();
    let base = m.defaults();
    for cfg in [
        ObjectiveConfig { mim_masking: MimMasking::Random, ..base.clone() },
        ObjectiveConfig { mlm_masking: MlmMasking::WholeWord, ..base.clone() },
        ObjectiveConfig { unpaired: 0.0, ..base.clone() },
    ] {
        let (_, model) = build("xlip", &cfg);
        let b = batch(&model.config, 6, 2, 2);
        let out = m.loss(&model, &b, &cfg, 0).unwrap();
        assert!(out.loss.to_scalar::<f32>().unwrap().is_finite());
        let names: Vec<&str> = out.parts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.contains(&"unpaired"), cfg.unpaired > 0.0, "{names:?}");
    }
}

#[test]
fn xlip_aux_fraction_reconstructs_a_subset_of_the_rows() {
    let m = method("xlip").unwrap();
    let part = |parts: &[(String, f64)], k: &str| {
        parts
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {k} in {parts:?}"))
    };
    for (fraction, reconstructs_row_5) in [(1.0, true), (0.5, false)] {
        let cfg = ObjectiveConfig { aux_fraction: fraction, ..m.defaults() };
        let (store, model) = build("xlip", &cfg);
        let b = batch(&model.config, 6, 2, 2);
        // Paired row 5 with other pixels: with half the rows (0, 1, 2 of the paired ones) it is
        // left out of AttMIM and EntMLM, so only the contrastive terms change.
        let mut other = b.clone();
        let px = b.pixels.as_ref().unwrap();
        let row5 = (px.narrow(0, 5, 1).unwrap() * -1.0).unwrap();
        other.pixels = Some(
            Tensor::cat(&[px.narrow(0, 0, 5).unwrap(), row5, px.narrow(0, 6, 2).unwrap()], 0)
                .unwrap(),
        );
        let (a, o) =
            (m.loss(&model, &b, &cfg, 3).unwrap(), m.loss(&model, &other, &cfg, 3).unwrap());
        assert!((part(&a.parts, "itc") - part(&o.parts, "itc")).abs() > 1e-6);
        for k in ["mim", "mlm"] {
            let changed = (part(&a.parts, k) - part(&o.parts, k)).abs() > 1e-6;
            assert_eq!(
                changed,
                reconstructs_row_5,
                "aux_fraction {fraction}: {k} {} vs {}",
                part(&a.parts, k),
                part(&o.parts, k)
            );
        }
        assert!(part(&a.parts, "mlm_text_only").is_finite());
        // Every parameter still receives a gradient.
        let grads = a.loss.backward().unwrap();
        let missing: Vec<String> = store
            .vars()
            .into_iter()
            .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
            .map(|(n, _)| n)
            .collect();
        assert!(missing.is_empty(), "aux_fraction {fraction}: {missing:?}");
    }
}
