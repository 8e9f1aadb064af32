//! Every recipe on the tiny config: finite loss, a gradient for every parameter of the model it
//! builds, the loss falls, and the stream bookkeeping (MCR single vs dual) holds.
// The fixtures' 6.28 is test data the loss thresholds were checked on, not a stand-in for TAU.
#![allow(clippy::approx_constant)]

use candle_core::{DType, Device, Tensor};
use medvlp_model::config::MemoryQuery;
use medvlp_model::{MedVlp, ModelConfig, ParamStore};
use medvlp_train::optim::{AdamW, AdamWConfig};
use medvlp_train::recipe::steps::{itc, mask_text, mlm, mlm_targets, row_rngs, select_rows, Terms};
use medvlp_train::recipe::{
    recipe, recipes, register, shipped_config, variants, Ablation, Batch, Method, MethodLoss,
    MlmMasking, ObjectiveConfig, Stream, TextBatch,
};
use medvlp_train::run_config::{objectives_with, RunConfig};
use rand::{Rng, SeedableRng};
use std::sync::Once;

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
        first_rows: [0; 3],
    }
}

/// The batch with its tensors on `dev`.
fn batch_to(b: &Batch, dev: &Device) -> Batch {
    let to = |t: &Tensor| t.to_device(dev).unwrap();
    Batch {
        pixels: b.pixels.as_ref().map(to),
        text: TextBatch { ids: to(&b.text.ids), mask: to(&b.text.mask), ..b.text.clone() },
        labels: b.labels.as_ref().map(to),
        ..b.clone()
    }
}

fn build(name: &str, cfg: &ObjectiveConfig) -> (ParamStore, MedVlp) {
    build_preset(name, cfg, "tiny")
}

fn build_preset(name: &str, cfg: &ObjectiveConfig, preset: &str) -> (ParamStore, MedVlp) {
    build_on(name, cfg, preset, &Device::Cpu)
}

fn build_on(name: &str, cfg: &ObjectiveConfig, preset: &str, dev: &Device) -> (ParamStore, MedVlp) {
    let m = recipe(name).unwrap();
    let mut mc = ModelConfig::preset(preset).unwrap();
    m.adapt_model(cfg, &mut mc);
    let store = ParamStore::new(1, DType::F32, dev);
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

/// On `MEDVLP_TEST_DEVICE` (the CPU unless bench/gpu-check.sh sets a GPU).
fn reaches_every_parameter_and_learns(preset: &str) {
    with_test_recipe();
    let dev = medvlp_model::runtime::test_device();
    for m in recipes() {
        let name = m.name();
        let cfg = m.defaults();
        let (store, model) = build_on(name, &cfg, preset, &dev);
        let b = batch_to(&batch(&model.config, 6, 2, 2), &dev);
        let out = m.loss(&model, &b, &cfg, 0).unwrap();
        let first = out.loss.to_scalar::<f32>().unwrap();
        assert!(first.is_finite(), "{name}: loss {first}");
        let grads = out.loss.backward().unwrap();
        let missing = params_without_gradient(&store, &grads);
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
        println!(
            "{name} ({preset}): {first:.3} -> {last:.3}; parts {:?}",
            out.part_values().unwrap()
        );
        assert!(last < 0.8 * first, "{name} ({preset}): loss {first} -> {last}");
    }
}

/// The parameters of `store` whose gradient in `grads` is absent or zero.
fn params_without_gradient(
    store: &ParamStore,
    grads: &candle_core::backprop::GradStore,
) -> Vec<String> {
    store
        .vars()
        .into_iter()
        .filter(|(_, v)| {
            grads
                .get(v.as_tensor())
                .map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0)
                .unwrap_or(true)
        })
        .map(|(n, _)| n)
        .collect()
}

/// Every parameter of the model `m` builds for `cfg` receives a non-zero gradient.
fn assert_every_parameter_gets_a_gradient(m: &dyn Method, cfg: &ObjectiveConfig, what: &str) {
    let (store, model) = build_preset(m.name(), cfg, "tiny");
    let b = batch(&model.config, 6, 2, 2);
    let out = m.loss(&model, &b, cfg, 0).unwrap();
    assert!(out.loss.to_scalar::<f32>().unwrap().is_finite(), "{what}");
    let grads = out.loss.backward().unwrap();
    let missing = params_without_gradient(&store, &grads);
    assert!(missing.is_empty(), "{what}: parameters without gradient: {missing:?}");
}

#[test]
fn every_ablation_the_registry_declares_reaches_every_parameter() {
    with_test_recipe();
    let mut n = 0;
    for v in variants(&[], true).unwrap() {
        let m = recipe(v.recipe).unwrap();
        let ov: Vec<&str> = v.overrides.iter().map(|s| s.as_str()).collect();
        let cfg = objectives_with(m, &ov).unwrap();
        m.validate(&cfg).unwrap();
        assert_every_parameter_gets_a_gradient(m, &cfg, &v.label);
        n += 1;
    }
    // 6 recipes (5 built in + the test's) and 3 + 2 + 3 + 1 ablations.
    assert_eq!(n, 15);
}

#[test]
fn mpma_memory_is_read_by_the_text_or_the_image() {
    let m = recipe("mpma").unwrap();
    assert_eq!(m.defaults().memory_query, MemoryQuery::Text, "the method spec's default");
    for q in [MemoryQuery::Text, MemoryQuery::Image] {
        let cfg = ObjectiveConfig { memory_query: q, ..m.defaults() };
        let (_, model) = build("mpma", &cfg);
        let mem = model.memory.as_ref().expect("mpma builds the memory");
        assert_eq!(mem.config.query, q);
        let width = match q {
            MemoryQuery::Text => model.config.text_config.hidden_size,
            MemoryQuery::Image => model.config.vision_config.hidden_size,
        };
        assert_eq!(mem.query.weight.dim(1).unwrap(), width);
        assert_every_parameter_gets_a_gradient(m, &cfg, &format!("memory read by {q:?}"));
    }
}

#[test]
fn mlm_replaces_selected_tokens_the_bert_way() {
    let m = recipe("mae-mlm").unwrap();
    let (_, model) = build("mae-mlm", &m.defaults());
    let b = batch(&model.config, 6, 0, 0);
    let orig: Vec<u32> = b.text.ids.flatten_all().unwrap().to_vec1().unwrap();
    let (mut masked, mut random, mut kept) = (0, 0, 0);
    for seed in 0..200 {
        for (how, expect_all_mask) in [
            (medvlp_train::recipe::MlmReplace::Bert, false),
            (medvlp_train::recipe::MlmReplace::Mask, true),
        ] {
            let cfg = ObjectiveConfig { mlm_replace: how, ..m.defaults() };
            let mt =
                mask_text(&model, &b.text, MlmMasking::WholeWord, &cfg, &mut row_rngs(seed, 2, &b))
                    .unwrap();
            let ids: Vec<u32> = mt.ids.flatten_all().unwrap().to_vec1().unwrap();
            let len = b.text.ids.dim(1).unwrap();
            for (r, pos) in mt.masked.iter().enumerate() {
                assert!(!pos.is_empty());
                for &t in pos {
                    let (o, x) = (orig[r * len + t], ids[r * len + t]);
                    if expect_all_mask {
                        assert_eq!(x, b.text.mask_id);
                    } else if x == b.text.mask_id {
                        masked += 1;
                    } else if x == o {
                        kept += 1;
                    } else {
                        random += 1;
                    }
                }
            }
        }
    }
    let total = (masked + random + kept) as f64;
    let share = |k: usize| k as f64 / total;
    assert!((share(masked) - 0.8).abs() < 0.03, "{masked} {random} {kept}");
    assert!((share(random) - 0.1).abs() < 0.03, "{masked} {random} {kept}");
    assert!((share(kept) - 0.1).abs() < 0.03, "{masked} {random} {kept}");
}

/// A recipe defined outside the crate: ITC plus MLM with visual support. Registering it is all it
/// takes for the registry, configs, comparisons and the gradient tests above to pick it up.
struct ItcMlm;

impl Method for ItcMlm {
    fn name(&self) -> &'static str {
        "itc-mlm-test"
    }
    fn paper(&self) -> &'static str {
        "a test recipe"
    }
    fn keys(&self) -> &'static [&'static str] {
        &["itc", "mlm", "mlm_replace", "text_mask_ratio"]
    }
    fn ablations(&self) -> &'static [Ablation] {
        &[Ablation { label: "no MLM", overrides: &["objectives.mlm=0.0"] }]
    }
    fn configs(&self) -> &'static [(&'static str, &'static str)] {
        &[(
            "tiny",
            "method = \"itc-mlm-test\"\n[model]\npreset = \"tiny\"\n[objectives]\nmlm = 0.5\n",
        )]
    }
    fn defaults(&self) -> ObjectiveConfig {
        ObjectiveConfig {
            unpaired: 0.0,
            mim: 0.0,
            mlm_masking: MlmMasking::WholeWord,
            ..Default::default()
        }
    }
    fn adapt_model(&self, cfg: &ObjectiveConfig, m: &mut ModelConfig) {
        m.decoder_config = None;
        m.local_projection = false;
        m.memory_config = None;
        m.itm_head = false;
        if cfg.mlm == 0.0 {
            m.fusion_config = None;
            m.mlm_head = false;
        }
    }
    fn loss(
        &self,
        model: &MedVlp,
        b: &Batch,
        cfg: &ObjectiveConfig,
        seed: u64,
    ) -> anyhow::Result<MethodLoss> {
        let n = b.n_images();
        let (ids, mask) = (b.text.ids.narrow(0, 0, n)?, b.text.mask.narrow(0, 0, n)?);
        let img = model.image_features(b.pixels.as_ref().unwrap())?;
        let txt = model.text_features(&ids, &mask)?;
        let mut t = Terms::default();
        t.add("itc", cfg.itc, itc(model, &img, &txt, &b.text.mask, b.n_paired)?)?;
        if cfg.mlm > 0.0 {
            let mt =
                mask_text(model, &b.text, MlmMasking::WholeWord, cfg, &mut row_rngs(seed, 2, b))?;
            let (pos, lab) = mlm_targets(&b.text, &mt, 0..n)?;
            let txt_m = model.text_features(&mt.ids.narrow(0, 0, n)?, &mask)?;
            t.add("mlm", cfg.mlm, mlm(model, &txt_m, &mask, Some(&img), pos, lab)?)?;
        }
        t.finish()
    }
}

fn with_test_recipe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| register(&ItcMlm).unwrap());
}

#[test]
fn a_recipe_defined_outside_is_picked_up_everywhere() {
    with_test_recipe();
    assert!(register(&ItcMlm).is_err(), "names are unique");
    assert_eq!(recipe("itc-mlm-test").unwrap().name(), "itc-mlm-test");
    let v = variants(&["itc-mlm-test".into()], true).unwrap();
    assert_eq!(
        v.iter().map(|x| x.label.as_str()).collect::<Vec<_>>(),
        ["itc-mlm-test", "itc-mlm-test, no MLM"]
    );
    assert!(variants(&[], false).unwrap().iter().any(|x| x.recipe == "itc-mlm-test"));
    // Its shipped config loads; its keys are accepted, others refused with the recipe named.
    let dir = std::env::temp_dir().join(format!("medvlp-recipe-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("itc-mlm-test-tiny.toml");
    std::fs::write(&p, shipped_config("itc-mlm-test", "tiny").unwrap()).unwrap();
    let (rc, resolved) =
        RunConfig::load(Some(&p), &["objectives.text_mask_ratio=0.3".into()]).unwrap();
    assert_eq!((rc.objectives().mlm, rc.objectives().text_mask_ratio), (0.5, 0.3));
    assert!(
        resolved.contains("text_mask_ratio") && !resolved.contains("mim_masking"),
        "{resolved}"
    );
    let e = RunConfig::load(Some(&p), &["objectives.local=1".into()]).unwrap_err().to_string();
    assert!(e.contains("recipe 'itc-mlm-test'") && e.contains("objectives.local"), "{e}");
    // Unknown recipes are listed with it.
    let e = RunConfig::load(Some(&p), &["method=nope".into()]).unwrap_err();
    assert!(format!("{e:#}").contains("itc-mlm-test"), "{e:#}");
}

#[test]
fn mcr_single_stream_runs_one_encoder_pass_per_modality() {
    let m = recipe("mcr").unwrap();
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
    let m = recipe("xlip").unwrap();
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
    let m = recipe("xlip").unwrap();
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
        let (av, ov) = (a.part_values().unwrap(), o.part_values().unwrap());
        assert!((part(&av, "itc") - part(&ov, "itc")).abs() > 1e-6);
        for k in ["mim", "mlm"] {
            let changed = (part(&av, k) - part(&ov, k)).abs() > 1e-6;
            assert_eq!(
                changed,
                reconstructs_row_5,
                "aux_fraction {fraction}: {k} {} vs {}",
                part(&av, k),
                part(&ov, k)
            );
        }
        assert!(part(&av, "mlm_text_only").is_finite());
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

/// The composed path (what a CUDA device runs) equals the fused CPU kernels on one training
/// step of every recipe, ViT and ConvNet: the loss and every parameter's gradient within 1e-4
/// relative (max abs difference over the larger max abs value, floored at 1e-3 of the largest
/// gradient of the model: attention's key bias has an exactly-zero gradient, and two roundings
/// of zero are not comparable relative to each other).
#[test]
fn composed_path_equals_the_fused_kernels_for_every_recipe() {
    use medvlp_model::nn::fused::{with_kernels, Kernels};
    with_test_recipe();
    // On `MEDVLP_TEST_DEVICE=cuda` the composed side runs on the GPU (the same code).
    let dev = medvlp_model::runtime::test_device();
    for preset in ["tiny", "tiny-convnet"] {
        for m in recipes() {
            let name = m.name();
            let cfg = m.defaults();
            let (store, model) = build_preset(name, &cfg, preset);
            let b = batch(&model.config, 6, 2, 2);
            let (store_d, model_d, b_d) = if dev.is_cpu() {
                (store.clone(), model.clone(), b.clone())
            } else {
                let store_d = ParamStore::new(1, DType::F32, &dev);
                let model_d = MedVlp::new(&model.config, &store_d).unwrap();
                store_d.copy_from(&store).unwrap();
                (store_d, model_d, batch_to(&b, &dev))
            };
            let step = |k: Kernels| {
                let (store, model, b) = if k == Kernels::Fused {
                    (&store, &model, &b)
                } else {
                    (&store_d, &model_d, &b_d)
                };
                with_kernels(k, || {
                    let out = m.loss(model, b, &cfg, 0).unwrap();
                    let grads = out.loss.backward().unwrap();
                    let g: Vec<(String, Vec<f32>)> = store
                        .vars()
                        .into_iter()
                        .map(|(n, v)| {
                            let g = grads.get(v.as_tensor()).unwrap_or_else(|| {
                                panic!("{name} ({preset}, {k:?}): no gradient for {n}")
                            });
                            (n, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                        })
                        .collect();
                    (out.loss.to_scalar::<f32>().unwrap(), g)
                })
            };
            let (lf, gf) = step(Kernels::Fused);
            let (lc, gc) = step(Kernels::Composed);
            let amax = |a: &[f32]| a.iter().map(|x| x.abs()).fold(0f32, f32::max);
            let floor = 1e-3 * gf.iter().map(|(_, g)| amax(g)).fold(0f32, f32::max);
            let rel_floor = |a: &[f32], b: &[f32], floor: f32| {
                let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                d / amax(a).max(amax(b)).max(floor).max(1e-30)
            };
            let rel = |a: &[f32], b: &[f32]| rel_floor(a, b, floor);
            let loss_rel = rel_floor(&[lf], &[lc], 0.0);
            assert!(loss_rel <= 1e-4, "{name} ({preset}): loss {lf} fused, {lc} composed");
            let worst = gf
                .iter()
                .zip(&gc)
                .map(|((n, a), (_, b))| (rel(a, b), n))
                .max_by(|x, y| x.0.total_cmp(&y.0))
                .unwrap();
            println!(
                "{name} ({preset}): loss {lf} vs {lc}; worst gradient {} rel {:.2e}",
                worst.1, worst.0
            );
            assert!(
                worst.0 <= 1e-4,
                "{name} ({preset}): gradient of {} differs by {:.2e}",
                worst.1,
                worst.0
            );
        }
    }
}

/// AdamW's tensor path (the one a GPU takes, on `MEDVLP_TEST_DEVICE`) equals its in-place CPU
/// path over a few steps.
#[test]
fn adamw_tensor_path_equals_the_cpu_path() {
    use medvlp_model::nn::fused::{with_kernels, Kernels};
    let m = recipe("clip").unwrap();
    let cfg = m.defaults();
    let test_dev = medvlp_model::runtime::test_device();
    let run = |k: Kernels| {
        let dev = if k == Kernels::Fused { Device::Cpu } else { test_dev.clone() };
        with_kernels(k, || {
            let (store, model) = build_on("clip", &cfg, "tiny", &dev);
            let b = batch_to(&batch(&model.config, 6, 0, 0), &dev);
            let mut opt = AdamW::new(
                store.vars(),
                AdamWConfig { lr: 1e-3, weight_decay: 0.05, grad_clip: 1.0, ..Default::default() },
            )
            .unwrap();
            for step in 0..3 {
                let l = m.loss(&model, &b, &cfg, step).unwrap().loss;
                let g = opt.collect_grads(&l.backward().unwrap()).unwrap();
                opt.step(&g, 1e-3, 1.0).unwrap();
            }
            store
                .vars()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
                .collect::<Vec<_>>()
        })
    };
    let (fused, composed) = (run(Kernels::Fused), run(Kernels::Composed));
    for ((n, a), (_, b)) in fused.iter().zip(&composed) {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-5, "{n}: parameters differ by {d} after 3 AdamW steps");
    }
}

/// The batch's rows `[paired | image-only | text-only]` of rank `r` of `w`: each section split
/// into `w` contiguous shards.
fn shard(b: &Batch, r: usize, w: usize) -> Batch {
    let (p, i, t) = (b.n_paired / w, b.n_image_only / w, b.n_text_only / w);
    let rows: Vec<usize> = (r * p..(r + 1) * p)
        .chain(b.n_paired + r * i..b.n_paired + (r + 1) * i)
        .chain(b.n_images() + r * t..b.n_images() + (r + 1) * t)
        .collect();
    let n_img = p + i;
    let sel = |x: &Tensor| select_rows(x, &rows).unwrap();
    Batch {
        pixels: b.pixels.as_ref().map(|px| select_rows(px, &rows[..n_img]).unwrap()),
        text: TextBatch {
            ids: sel(&b.text.ids),
            mask: sel(&b.text.mask),
            word_ids: rows.iter().map(|&k| b.text.word_ids[k].clone()).collect(),
            entities: rows.iter().map(|&k| b.text.entities[k].clone()).collect(),
            mask_id: b.text.mask_id,
        },
        labels: b.labels.as_ref().map(sel),
        n_paired: p,
        n_image_only: i,
        n_text_only: t,
        first_rows: [r * p, r * i, r * t],
    }
}

/// CLIP, XLIP and MCR on 2 and 4 data-parallel ranks (threads, each with a shard of the batch
/// and its own replica): contrastive and soft-label losses over the global batch through
/// gather_with_grad, masks keyed by the global row, MLM means weighted by the global token count;
/// averaged over ranks, the gradients are those of one rank with the whole batch (f64).
#[test]
fn recipes_on_several_ranks_have_the_gradients_of_one_rank() {
    for name in ["clip", "xlip", "mcr"] {
        for local_loss in [false, true] {
            on_several_ranks(name, local_loss);
        }
    }
}

fn on_several_ranks(name: &'static str, local_loss: bool) {
    use medvlp_train::dist::{with_group, Communicator, Group, LocalGroup};
    use std::sync::Arc;
    let m = recipe(name).unwrap();
    let cfg = m.defaults();
    let grads = |store: &ParamStore, model: &MedVlp, b: &Batch| -> (f64, Vec<(String, Vec<f64>)>) {
        let out = m.loss(model, b, &cfg, 7).unwrap();
        let g = out.loss.backward().unwrap();
        let v = store
            .vars()
            .into_iter()
            .map(|(n, v)| {
                let x = g
                    .get(v.as_tensor())
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap());
                (n, x.unwrap_or_default())
            })
            .collect();
        (out.loss.to_scalar::<f64>().unwrap(), v)
    };
    let build64 = || {
        let mut mc = ModelConfig::preset("tiny").unwrap();
        m.adapt_model(&cfg, &mut mc);
        let store = ParamStore::new(1, DType::F64, &Device::Cpu);
        let model = MedVlp::new(&mc, &store).unwrap();
        (store, model)
    };
    let to64 = |b: &Batch| Batch {
        pixels: b.pixels.as_ref().map(|x| x.to_dtype(DType::F64).unwrap()),
        text: TextBatch { mask: b.text.mask.to_dtype(DType::F64).unwrap(), ..b.text.clone() },
        labels: b.labels.as_ref().map(|x| x.to_dtype(DType::F64).unwrap()),
        ..b.clone()
    };
    for w in [2usize, 4] {
        let (store, model) = build64();
        let full = to64(&batch(&model.config, 2 * w, w, w));
        let (loss, want) = grads(&store, &model, &full);
        let handles: Vec<_> = LocalGroup::ranks(w, std::time::Duration::from_secs(120))
            .into_iter()
            .map(|c| {
                let b = shard(&full, c.rank(), w);
                std::thread::spawn(move || {
                    let m = recipe(name).unwrap();
                    let cfg = m.defaults();
                    let comm: Arc<dyn Communicator> = Arc::new(c);
                    let mut mc = ModelConfig::preset("tiny").unwrap();
                    m.adapt_model(&cfg, &mut mc);
                    let store = ParamStore::new(1, DType::F64, &Device::Cpu);
                    let model = MedVlp::new(&mc, &store).unwrap();
                    let group = Group { comm: comm.clone(), local_loss };
                    let out = with_group(group, || m.loss(&model, &b, &cfg, 7)).unwrap();
                    let g = out.loss.backward().unwrap();
                    // The trainer's step: gradients summed over ranks, then averaged.
                    let mut v = vec![];
                    for (n, var) in store.vars() {
                        let x = g
                            .get(var.as_tensor())
                            .cloned()
                            .unwrap_or(var.as_tensor().zeros_like().unwrap());
                        let s = comm.all_reduce_sum(&x).unwrap();
                        v.push((
                            n,
                            (s / w as f64)
                                .unwrap()
                                .flatten_all()
                                .unwrap()
                                .to_vec1::<f64>()
                                .unwrap(),
                        ));
                    }
                    (out.loss.to_scalar::<f64>().unwrap(), v)
                })
            })
            .collect();
        let mut losses = vec![];
        for (r, h) in handles.into_iter().enumerate() {
            let (l, got) = h.join().unwrap();
            losses.push(l);
            let mut worst = (0f64, String::new());
            for ((n, a), (_, b)) in got.iter().zip(&want) {
                let b = if b.is_empty() { vec![0.0; a.len()] } else { b.clone() };
                let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
                if d > worst.0 {
                    worst = (d, n.clone());
                }
            }
            println!(
                "{name}, {w} ranks (local_loss {local_loss}), rank {r}: worst gradient difference {:.1e}",
                worst.0
            );
            assert!(
                worst.0 < 1e-12,
                "{name}, {w} ranks, rank {r}: gradient of {} off by {:.2e}",
                worst.1,
                worst.0
            );
        }
        // The logged loss (the mean over ranks) is the one-rank loss.
        let mean = losses.iter().sum::<f64>() / w as f64;
        assert!((mean - loss).abs() < 1e-12, "{name}, {w} ranks: loss {mean} vs {loss}");
    }
}

/// 20 AdamW steps (clipping on the global norm) of CLIP, XLIP and MCR on 2 and 4 ranks with
/// shards of the batch reach the parameters of one rank with the whole batch (f64).
#[test]
fn recipes_on_several_ranks_reach_the_parameters_of_one_rank() {
    use medvlp_train::dist::{with_group, Communicator, Group, LocalGroup, SingleProcess};
    use std::sync::Arc;
    for name in ["clip", "xlip", "mcr"] {
        for w in [2usize, 4] {
            let train = move |comm: Arc<dyn Communicator>, b: Batch| -> Vec<(String, Vec<f64>)> {
                let m = recipe(name).unwrap();
                let cfg = m.defaults();
                let mut mc = ModelConfig::preset("tiny").unwrap();
                m.adapt_model(&cfg, &mut mc);
                let store = ParamStore::new(1, DType::F64, &Device::Cpu);
                let model = MedVlp::new(&mc, &store).unwrap();
                let mut opt = AdamW::new(
                    store.vars(),
                    AdamWConfig {
                        lr: 1e-3,
                        weight_decay: 0.05,
                        grad_clip: 1.0,
                        ..Default::default()
                    },
                )
                .unwrap();
                let world = comm.world_size() as f64;
                for step in 0..20 {
                    let group = Group { comm: comm.clone(), local_loss: false };
                    let l = with_group(group, || m.loss(&model, &b, &cfg, step)).unwrap().loss;
                    let g = opt.collect_grads(&l.backward().unwrap()).unwrap();
                    let g: Vec<Option<Tensor>> = g
                        .into_iter()
                        .zip(store.vars())
                        .map(|(g, (_, v))| {
                            let g = g.unwrap_or(v.as_tensor().zeros_like().unwrap());
                            Some(comm.all_reduce_sum(&g).unwrap())
                        })
                        .collect();
                    opt.step(&g, 1e-3, 1.0 / world).unwrap();
                }
                store
                    .vars()
                    .into_iter()
                    .map(|(n, v)| {
                        (n, v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap())
                    })
                    .collect()
            };
            let (_, model) = build_preset(name, &recipe(name).unwrap().defaults(), "tiny");
            let b = batch(&model.config, 2 * w, w, w);
            let full = Batch {
                pixels: b.pixels.as_ref().map(|x| x.to_dtype(DType::F64).unwrap()),
                text: TextBatch {
                    mask: b.text.mask.to_dtype(DType::F64).unwrap(),
                    ..b.text.clone()
                },
                labels: b.labels.as_ref().map(|x| x.to_dtype(DType::F64).unwrap()),
                ..b.clone()
            };
            let one = train(Arc::new(SingleProcess), full.clone());
            let handles: Vec<_> = LocalGroup::ranks(w, std::time::Duration::from_secs(300))
                .into_iter()
                .map(|c| {
                    let b = shard(&full, c.rank(), w);
                    std::thread::spawn(move || train(Arc::new(c), b))
                })
                .collect();
            for h in handles {
                let got = h.join().unwrap();
                let worst = got
                    .iter()
                    .zip(&one)
                    .map(|((_, a), (_, b))| {
                        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max)
                    })
                    .fold(0f64, f64::max);
                println!("{name}, {w} ranks, 20 steps: worst parameter difference {worst:.1e}");
                assert!(worst < 1e-10, "{name}, {w} ranks: parameters differ by {worst:.2e}");
            }
        }
    }
}

#[test]
fn bert_pooler_text_pooling_reaches_every_parameter() {
    // `text_config.pooling = "pooler"` (tanh of pooler.dense on [CLS]): the pooler is trained.
    let m = recipe("clip").unwrap();
    let cfg = m.defaults();
    let mut mc = ModelConfig::preset("tiny").unwrap();
    m.adapt_model(&cfg, &mut mc);
    mc.text_config.pooling = medvlp_model::config::Pooling::Pooler;
    let store = ParamStore::new(1, DType::F32, &Device::Cpu);
    let model = MedVlp::new(&mc, &store).unwrap();
    assert!(store.get("text_model.pooler.dense.weight").is_some());
    let b = batch(&model.config, 6, 2, 2);
    let grads = m.loss(&model, &b, &cfg, 0).unwrap().loss.backward().unwrap();
    let missing = params_without_gradient(&store, &grads);
    assert!(missing.is_empty(), "parameters without gradient: {missing:?}");
}
