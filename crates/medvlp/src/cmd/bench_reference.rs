//! The performance reference model of `../shared/bench/torch_reference.py`, built from medvlp's own
//! layers with the same shapes: ViT encoding 25% of the patches, MAE decoder, BERT-like post-LN
//! text encoder (vocab 30522) without token types, one pre-LN cross-attention block, MLM head
//! (untied, D -> 30522) on 10 masked positions per sample, ITC on projections.
//! Two sizes, as `--size` there: `reference` (the CPU model, 23,468,731 parameters: 128 px,
//! width 256, 4 + 4 layers, batch 32) and `base` (the GPU model, 239,175,483 parameters:
//! ViT-B/16 at 224 px, a BERT-base-sized text tower of 12 layers and 128 tokens, batch 64).

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

pub const VOCAB: usize = 30522;
pub const N_MLM: usize = 10;

/// The shapes of one `--size` of torch_reference.py.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub name: &'static str,
    pub batch: usize,
    pub image: usize,
    pub patch: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp: usize,
    pub tokens: usize,
    pub proj: usize,
    pub dec_width: usize,
    pub dec_layers: usize,
    pub dec_heads: usize,
    pub dec_mlp: usize,
    /// Parameter count of the PyTorch model (checked at construction).
    pub params: usize,
    /// Matmul FLOPs of one training step (forward + backward), from torch's FlopCounterMode.
    pub flops_per_step: f64,
}

impl Size {
    pub const REFERENCE: Size = Size {
        name: "reference",
        batch: 32,
        image: 128,
        patch: 16,
        width: 256,
        layers: 4,
        heads: 4,
        mlp: 1024,
        tokens: 64,
        proj: 128,
        dec_width: 128,
        dec_layers: 2,
        dec_heads: 4,
        dec_mlp: 512,
        params: 23_468_731,
        flops_per_step: 81.0e9,
    };
    pub const BASE: Size = Size {
        name: "base",
        batch: 64,
        image: 224,
        patch: 16,
        width: 768,
        layers: 12,
        heads: 12,
        mlp: 3072,
        tokens: 128,
        proj: 512,
        dec_width: 512,
        dec_layers: 4,
        dec_heads: 16,
        dec_mlp: 2048,
        params: 239_175_483,
        flops_per_step: 7.39e12,
    };

    pub fn named(name: &str) -> Option<Size> {
        [Self::REFERENCE, Self::BASE].into_iter().find(|s| s.name == name)
    }

    pub fn patches(&self) -> usize {
        (self.image / self.patch).pow(2)
    }
}

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
    pub size: Size,
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
    pub fn new(size: Size, trainable: bool, dev: &Device) -> Result<Self> {
        let z = size;
        let store = ParamStore::new(0, DType::F32, dev);
        let store = if trainable { store } else { store.frozen() };
        let vb = store.var_builder();
        let vc = VisionConfig {
            model_type: Default::default(),
            conv_channels: vec![],
            pooling: medvlp_model::config::Pooling::Cls,
            image_size: z.image,
            num_channels: 1,
            patch_size: z.patch,
            hidden_size: z.width,
            num_hidden_layers: z.layers,
            num_attention_heads: z.heads,
            intermediate_size: z.mlp,
            position_embedding: PositionEmbedding::Learned,
            layer_norm_eps: 1e-5,
        };
        let tc = TextConfig {
            pooling: medvlp_model::config::Pooling::Cls,
            vocab_size: VOCAB,
            hidden_size: z.width,
            num_hidden_layers: z.layers,
            num_attention_heads: z.heads,
            intermediate_size: z.mlp,
            max_position_embeddings: z.tokens,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_token_id: 0,
            hidden_act: "gelu".into(),
            position_embedding_type: "absolute".into(),
            max_length: z.tokens,
        };
        let randn = Init::Randn { mean: 0.0, stdev: 0.02 };
        let (d, dd, np) = (z.width, z.dec_width, z.patches());
        let m = Self {
            size: z,
            vit: VisionTransformer::new(&vc, vb.pp("vit"))?,
            dec_embed: Linear::new(d, dd, true, vb.pp("dec.embed"))?,
            mask_token: vb.get_with_hints((1, 1, dd), "dec.mask_token", randn)?,
            dec_pos: vb.get_with_hints((1, np + 1, dd), "dec.pos", randn)?,
            dec_blocks: (0..z.dec_layers)
                .map(|i| Block::new(dd, z.dec_heads, z.dec_mlp, vb.pp("dec.blocks").pp(i)))
                .collect::<Result<_>>()?,
            dec_norm: LayerNorm::new(dd, 1e-5, vb.pp("dec.norm"))?,
            dec_pred: Linear::new(dd, z.patch * z.patch, true, vb.pp("dec.pred"))?,
            tok: Embedding::new(VOCAB, d, vb.pp("txt.tok"))?,
            pos: vb.get_with_hints((1, z.tokens, d), "txt.pos", randn)?,
            txt_ln: LayerNorm::new(d, 1e-5, vb.pp("txt.ln"))?,
            txt_layers: (0..z.layers)
                .map(|i| BertLayer::new(&tc, vb.pp("txt.blocks").pp(i)))
                .collect::<Result<_>>()?,
            fusion: Block::new(d, z.heads, z.mlp, vb.pp("fusion"))?,
            img_proj: Linear::new(d, z.proj, false, vb.pp("img_proj"))?,
            txt_proj: Linear::new(d, z.proj, false, vb.pp("txt_proj"))?,
            logit_scale: vb.get_with_hints(
                (1, 1),
                "logit_scale",
                Init::Const((1.0f64 / 0.07).ln()),
            )?,
            mlm_dense: Linear::new(d, d, true, vb.pp("mlm_dense"))?,
            mlm_ln: LayerNorm::new(d, 1e-5, vb.pp("mlm_ln"))?,
            mlm_out: Linear::new(d, VOCAB, true, vb.pp("mlm_out"))?,
            store,
        };
        let params = m.store.num_params();
        if params != z.params {
            candle_core::bail!(
                "{} model has {params} parameters, torch_reference.py has {}",
                z.name,
                z.params
            );
        }
        Ok(m)
    }

    /// Patches, a fresh 75% mask, and 10 [MASK]ed positions per sample, as the reference does.
    pub fn batch(&self, rng: &mut impl Rng) -> Result<RefBatch> {
        let z = self.size;
        let (b, t, np, img) = (z.batch, z.tokens, z.patches(), z.image);
        let dev = self.store.device();
        let px: Vec<f32> = (0..b * img * img).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        let keep = (0..b)
            .map(|_| {
                let mut p: Vec<usize> = (0..np).collect();
                p.shuffle(rng);
                p.truncate(np / 4);
                p
            })
            .collect();
        let mut ids: Vec<u32> = (0..b * t)
            .map(|i| if i % t == 0 { 101 } else { rng.random_range(1000..30000) })
            .collect();
        let (mut pos, mut lab) = (vec![], vec![]);
        for s in 0..b {
            let mut p: Vec<usize> = (1..t).collect();
            p.shuffle(rng);
            for &k in &p[..N_MLM] {
                pos.push((s * t + k) as u32);
                lab.push(ids[s * t + k]);
                ids[s * t + k] = 103;
            }
        }
        Ok(RefBatch {
            pixels: Tensor::from_vec(px, (b, 1, img, img), dev)?,
            mask: PatchMask::from_keep(keep, np, dev)?,
            ids: Tensor::from_vec(ids, (b, t), dev)?,
            mlm_pos: Tensor::new(pos, dev)?,
            mlm_labels: Tensor::new(lab, dev)?,
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
        let np = self.size.patches();
        let m = self.mask_token.broadcast_as((b, np - (l - 1), dd))?;
        let full = Tensor::cat(&[&vis, &m], 1)?
            .reshape((b * np, dd))?
            .index_select(&bt.mask.restore_flat, 0)?
            .reshape((b, np, dd))?;
        let mut h = Tensor::cat(&[&cls, &full], 1)?.broadcast_add(&self.dec_pos)?;
        for blk in &self.dec_blocks {
            h = blk.forward(&h, None)?;
        }
        let pred = self.dec_pred.forward(&self.dec_norm.forward(&h)?)?.narrow(1, 1, np)?;
        let l_mae = mim_loss(&pred, &bt.pixels, self.size.patch, &bt.mask.mask, true)?;
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

    /// Image-encoder inference on all patches + CLS.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vit.forward(pixels)
    }

    /// The pooled image embedding (the [CLS] token), as `embed` computes it.
    pub fn encode_cls(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vit.forward_cls(pixels)
    }
}

pub fn seeded_rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(0)
}
