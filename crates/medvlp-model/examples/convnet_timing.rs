//! Where a ConvNet training pass spends its time (the `small` preset, batch 32): forward and
//! backward of the whole encoder, then per layer.
//!
//!     cargo run --release -p medvlp-model --example convnet_timing
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use medvlp_model::config::VisionConfig;
use medvlp_model::convnet::ConvNet;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let cfg = VisionConfig::preset("small")?;
    let vm = VarMap::new();
    let net = ConvNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    let x = Tensor::randn(0f32, 1.0, (32, 1, 128, 128), &dev)?;
    for _ in 0..6 {
        let t = Instant::now();
        let y = net.forward(&x)?;
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _g = y.sqr()?.mean_all()?.backward()?;
        println!("fwd {f:.3} bwd {:.3}", t.elapsed().as_secs_f64());
    }
    // per layer: the convolution, then LayerNorm + GELU, then the backward pass of the layer
    let mut h = Tensor::randn(0f32, 1.0, (32, 128, 128, 3), &dev)?;
    let layers: Vec<_> =
        std::iter::once(&net.embedder).chain(net.stages.iter().flat_map(|s| s.iter())).collect();
    for (i, l) in layers.into_iter().enumerate() {
        let hv = Var::from_tensor(&h)?;
        let input = if i == 0 { h.clone() } else { hv.as_tensor().clone() };
        let t = Instant::now();
        let c = l.convolution.forward(&input)?;
        let tc = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let y = l.forward(&input)?;
        let tl = t.elapsed().as_secs_f64() - tc;
        let t = Instant::now();
        let _g = y.sum_all()?.backward()?;
        let tb = t.elapsed().as_secs_f64();
        println!("{:?}: conv {tc:.4} norm+gelu {tl:.4} backward {tb:.4}", c.dims());
        h = y.detach();
    }
    Ok(())
}
