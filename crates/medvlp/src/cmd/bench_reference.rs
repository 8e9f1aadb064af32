//! The performance reference model of `../shared/bench/torch_reference.py`, built from medvlp's own
//! layers with the same shapes (23,468,731 parameters): ViT (128 px, patch 16, 4 pre-LN blocks of
//! 256) encoding 25% of the patches, MAE decoder (2 blocks of 128), BERT-like post-LN text encoder
//! (vocab 30522, 64 tokens, 4 blocks of 256) without token types, one pre-LN cross-attention block,
//! MLM head (untied 256 -> 30522) on 10 masked positions per sample, ITC on 128-d projections.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Init;
use medvlp_model::bert::BertLayer;
use medvlp_model::config::{PositionEmbedding, TextConfig, VisionConfig};
use medvlp_model::masking::PatchMask;
use medvlp_model::nn::fused::cross_entropy::linear_cross_entropy;
use medvlp_model::nn::{Activation, Attention, Embedding, LayerNorm, Linear, Mlp};
use medvlp_model::vit::VisionTransformer;
use medvlp_model::ParamStore;
use medvlp_train::objectives::contrastive::itc_loss;
use medvlp_train::objectives::mim::mim_loss;
use medvlp_train::objectives::mlm::gather_positions;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub const B: usize = 32;
pub const IMG: usize = 128;
pub const P: usize = 16;
pub const NP: usize = 64;
pub const D: usize = 256;
pub const T: usize = 64;
pub const VOCAB: usize = 30522;
pub const N_MLM: usize = 10;
pub const PARAMS: usize = 23_468_731;

/// Pre-LN block; with a context it is cross-attention only (as the reference's fusion block).
struct Block {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(d: usize, heads: usize, mlp: usize, vb: candle_nn::VarBuilder) -> Result<Self> {
        Ok(Self {
            ln1: LayerNorm::new(d, 1e-5, vb.pp("ln1"))?,
            attn: Attention::new(d, d, heads, vb.pp("attn"), vb.pp("attn").pp("o"))?,
            ln2: LayerNorm::new(d, 1e-5, vb.pp("ln2"))?,
            mlp: Mlp::new(d, mlp, vb.pp("fc1"), vb.pp("fc2"))?,
        })
    }
    fn forward(&self, x: &Tensor, ctx: Option<&Tensor>) -> Result<Tensor> {
        let h = self.ln1.forward(x)?;
        let x = (x + self.attn.forward(&h, Some(ctx.unwrap_or(&h)), None, false)?.0)?;
        &x + self.mlp.forward(&self.ln2.forward(&x)?)?
    }
}

pub struct Reference {
    pub store: ParamStore,
    vit: VisionTransformer,
    dec_embed: Linear,
    mask_token: Tensor,
    dec_pos: Tensor,
    dec_blocks: Vec<Block>,
    dec_norm: LayerNorm,
    dec_pred: Linear,
    tok: Embedding,
    pos: Tensor,
    txt_ln: LayerNorm,
    txt_layers: Vec<BertLayer>,
    fusion: Block,
    img_proj: Linear,
    txt_proj: Linear,
    logit_scale: Tensor,
    mlm_dense: Linear,
    mlm_ln: LayerNorm,
    mlm_out: Linear,
}

pub struct RefBatch {
    pub pixels: Tensor,
    pub mask: PatchMask,
    pub ids: Tensor,
    pub mlm_pos: Tensor,
    pub mlm_labels: Tensor,
}

impl Reference {
    pub fn new(trainable: bool) -> Result<Self> {
        let store = ParamStore::new(0, DType::F32, &Device::Cpu);
        let store = if trainable { store } else { store.frozen() };
        let vb = store.var_builder();
        let vc = VisionConfig {
            model_type: Default::default(),
            conv_channels: vec![],
            pooling: medvlp_model::config::Pooling::Cls,
            image_size: IMG,
            num_channels: 1,
            patch_size: P,
            hidden_size: D,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            intermediate_size: 1024,
            position_embedding: PositionEmbedding::Learned,
            layer_norm_eps: 1e-5,
        };
        let tc = TextConfig {
            pooling: medvlp_model::config::Pooling::Cls,
            vocab_size: VOCAB,
            hidden_size: D,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            intermediate_size: 1024,
            max_position_embeddings: T,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_token_id: 0,
            hidden_act: "gelu".into(),
            position_embedding_type: "absolute".into(),
            max_length: T,
        };
        let randn = Init::Randn { mean: 0.0, stdev: 0.02 };
        Ok(Self {
            vit: VisionTransformer::new(&vc, vb.pp("vit"))?,
            dec_embed: Linear::new(D, 128, true, vb.pp("dec.embed"))?,
            mask_token: vb.get_with_hints((1, 1, 128), "dec.mask_token", randn)?,
            dec_pos: vb.get_with_hints((1, NP + 1, 128), "dec.pos", randn)?,
            dec_blocks: (0..2)
                .map(|i| Block::new(128, 4, 512, vb.pp("dec.blocks").pp(i)))
                .collect::<Result<_>>()?,
            dec_norm: LayerNorm::new(128, 1e-5, vb.pp("dec.norm"))?,
            dec_pred: Linear::new(128, P * P, true, vb.pp("dec.pred"))?,
            tok: Embedding::new(VOCAB, D, vb.pp("txt.tok"))?,
            pos: vb.get_with_hints((1, T, D), "txt.pos", randn)?,
            txt_ln: LayerNorm::new(D, 1e-5, vb.pp("txt.ln"))?,
            txt_layers: (0..4)
                .map(|i| BertLayer::new(&tc, vb.pp("txt.blocks").pp(i)))
                .collect::<Result<_>>()?,
            fusion: Block::new(D, 4, 1024, vb.pp("fusion"))?,
            img_proj: Linear::new(D, 128, false, vb.pp("img_proj"))?,
            txt_proj: Linear::new(D, 128, false, vb.pp("txt_proj"))?,
            logit_scale: vb.get_with_hints(
                (1, 1),
                "logit_scale",
                Init::Const((1.0f64 / 0.07).ln()),
            )?,
            mlm_dense: Linear::new(D, D, true, vb.pp("mlm_dense"))?,
            mlm_ln: LayerNorm::new(D, 1e-5, vb.pp("mlm_ln"))?,
            mlm_out: Linear::new(D, VOCAB, true, vb.pp("mlm_out"))?,
            store,
        })
    }

    /// Patches, a fresh 75% mask, and 10 [MASK]ed positions per sample, as the reference does.
    pub fn batch(rng: &mut impl Rng) -> Result<RefBatch> {
        let dev = Device::Cpu;
        let px: Vec<f32> = (0..B * IMG * IMG).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        let keep = (0..B)
            .map(|_| {
                let mut p: Vec<usize> = (0..NP).collect();
                p.shuffle(rng);
                p.truncate(NP / 4);
                p
            })
            .collect();
        let mut ids: Vec<u32> = (0..B * T)
            .map(|i| if i % T == 0 { 101 } else { rng.random_range(1000..30000) })
            .collect();
        let (mut pos, mut lab) = (vec![], vec![]);
        for b in 0..B {
            let mut p: Vec<usize> = (1..T).collect();
            p.shuffle(rng);
            for &t in &p[..N_MLM] {
                pos.push((b * T + t) as u32);
                lab.push(ids[b * T + t]);
                ids[b * T + t] = 103;
            }
        }
        Ok(RefBatch {
            pixels: Tensor::from_vec(px, (B, 1, IMG, IMG), &dev)?,
            mask: PatchMask::from_keep(keep, NP, &dev)?,
            ids: Tensor::from_vec(ids, (B, T), &dev)?,
            mlm_pos: Tensor::new(pos, &dev)?,
            mlm_labels: Tensor::new(lab, &dev)?,
        })
    }

    /// loss = itc + mae + mlm.
    pub fn loss(&self, bt: &RefBatch) -> Result<Tensor> {
        let latent = self.vit.forward_masked(&bt.pixels, &bt.mask)?;
        // decoder
        let x = self.dec_embed.forward(&latent)?;
        let (b, l, dd) = x.dims3()?;
        let cls = x.narrow(1, 0, 1)?;
        let vis = x.narrow(1, 1, l - 1)?;
        let m = self.mask_token.broadcast_as((b, NP - (l - 1), dd))?;
        let full = Tensor::cat(&[&vis, &m], 1)?
            .reshape((b * NP, dd))?
            .index_select(&bt.mask.restore_flat, 0)?
            .reshape((b, NP, dd))?;
        let mut h = Tensor::cat(&[&cls, &full], 1)?.broadcast_add(&self.dec_pos)?;
        for blk in &self.dec_blocks {
            h = blk.forward(&h, None)?;
        }
        let pred = self.dec_pred.forward(&self.dec_norm.forward(&h)?)?.narrow(1, 1, NP)?;
        let l_mae = mim_loss(&pred, &bt.pixels, P, &bt.mask.mask, true)?;
        // text
        let th = self.tok.forward(&bt.ids)?.broadcast_add(&self.pos)?;
        let mut th = self.txt_ln.forward(&th)?;
        for layer in &self.txt_layers {
            th = layer.forward(&th, None)?;
        }
        let ie = medvlp_model::heads::l2_normalize(
            &self.img_proj.forward(&latent.narrow(1, 0, 1)?.squeeze(1)?)?,
        )?;
        let te = medvlp_model::heads::l2_normalize(
            &self.txt_proj.forward(&th.narrow(1, 0, 1)?.squeeze(1)?)?,
        )?;
        let l_itc = itc_loss(&ie, &te, &self.logit_scale.exp()?.reshape(())?)?;
        let fused = self.fusion.forward(&th, Some(&latent))?;
        let sel = gather_positions(&fused, &bt.mlm_pos)?;
        let hm = self.mlm_ln.forward(&self.mlm_dense.forward_act(&sel, Activation::Gelu)?)?;
        let l_mlm = linear_cross_entropy(
            &hm,
            &self.mlm_out.weight,
            self.mlm_out.bias.as_ref().expect("mlm_out has a bias"),
            &bt.mlm_labels,
        )?;
        (l_itc + l_mae)? + l_mlm
    }

    /// Image-encoder inference on all 64 patches + CLS.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vit.forward(pixels)
    }

    pub fn flops_per_step() -> f64 {
        81.0e9
    }
}

pub fn seeded_rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(0)
}
