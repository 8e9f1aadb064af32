//! torchvision ResNet trunks (BasicBlock and Bottleneck, v1.5: stride on the 3x3 convolution) in
//! inference mode, read at whatever widths the checkpoint has. BatchNorm is folded into the
//! preceding convolution once at load; the output is the global-average-pooled feature vector.

use crate::interop::state_dict::StateDict;
use anyhow::Result;
use candle_core::{Tensor, D};

/// A convolution with its BatchNorm folded in: `conv(x) * s + t`.
#[derive(Clone, Debug)]
pub struct ConvBn {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl ConvBn {
    /// `{conv}weight` and the BatchNorm at `{bn}` (eps 1e-5, torchvision's).
    pub fn load(
        sd: &StateDict,
        conv: &str,
        bn: &str,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let w = sd.take_any(&format!("{conv}weight"), &[0, 0, 0, 0])?;
        if w.rank() != 4 {
            anyhow::bail!(
                "{}: {conv}weight has shape {:?}, a 4-d convolution kernel expected",
                sd.path.display(),
                w.dims()
            );
        }
        let cout = w.dim(0)?;
        let gamma = sd.take(&format!("{bn}weight"), &[cout])?;
        let beta = sd.take(&format!("{bn}bias"), &[cout])?;
        let mean = sd.take(&format!("{bn}running_mean"), &[cout])?;
        let var = sd.take(&format!("{bn}running_var"), &[cout])?;
        sd.skip(&format!("{bn}num_batches_tracked"));
        let scale = (gamma / (var + 1e-5)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Ok(Self { weight, bias, stride, padding })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = self.bias.dim(0)?;
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }
}

#[derive(Clone, Debug)]
pub struct ResBlock {
    /// Bottleneck: 1x1, 3x3 (stride), 1x1; BasicBlock: 3x3 (stride), 3x3.
    pub convs: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
}

impl ResBlock {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        let n = self.convs.len();
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward(&h)?;
            if i + 1 < n {
                h = h.relu()?;
            }
        }
        let skip = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        (h + skip)?.relu()
    }
}

#[derive(Clone, Debug)]
pub struct ResNet {
    pub stem: ConvBn,
    pub layers: Vec<Vec<ResBlock>>,
}

impl ResNet {
    /// Reads `{p}conv1`, `{p}bn1`, `{p}layer1..4`; a classifier `{p}fc` is left for the caller.
    pub fn load(sd: &StateDict, p: &str) -> Result<Self> {
        let stem = ConvBn::load(sd, &format!("{p}conv1."), &format!("{p}bn1."), 2, 3)?;
        let mut layers = vec![];
        for li in 1..=4 {
            let lp = format!("{p}layer{li}.");
            let n = sd.count_layers(&lp);
            if n == 0 {
                anyhow::bail!(
                    "{}: missing {lp}0.* (a ResNet has layer1 to layer4)",
                    sd.path.display()
                );
            }
            let mut blocks = vec![];
            for bi in 0..n {
                let bp = format!("{lp}{bi}.");
                let stride = if li > 1 && bi == 0 { 2 } else { 1 };
                let bottleneck = sd.has(&format!("{bp}conv3.weight"));
                let convs = if bottleneck {
                    vec![
                        ConvBn::load(sd, &format!("{bp}conv1."), &format!("{bp}bn1."), 1, 0)?,
                        ConvBn::load(sd, &format!("{bp}conv2."), &format!("{bp}bn2."), stride, 1)?,
                        ConvBn::load(sd, &format!("{bp}conv3."), &format!("{bp}bn3."), 1, 0)?,
                    ]
                } else {
                    vec![
                        ConvBn::load(sd, &format!("{bp}conv1."), &format!("{bp}bn1."), stride, 1)?,
                        ConvBn::load(sd, &format!("{bp}conv2."), &format!("{bp}bn2."), 1, 1)?,
                    ]
                };
                let downsample = if sd.has(&format!("{bp}downsample.0.weight")) {
                    Some(ConvBn::load(
                        sd,
                        &format!("{bp}downsample.0."),
                        &format!("{bp}downsample.1."),
                        stride,
                        0,
                    )?)
                } else {
                    None
                };
                blocks.push(ResBlock { convs, downsample });
            }
            layers.push(blocks);
        }
        Ok(Self { stem, layers })
    }

    pub fn in_channels(&self) -> usize {
        self.stem.weight.dims()[1]
    }

    pub fn out_channels(&self) -> usize {
        let last = self.layers.last().and_then(|l| l.last()).expect("four layers");
        last.convs.last().expect("convolutions").bias.dims()[0]
    }

    /// `[b, c, h, w]` -> globally average-pooled features `[b, out_channels]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.stem.forward(x)?.relu()?;
        // 3x3 / 2 max-pool with padding 1: after the ReLU every value is >= 0, so zero padding
        // gives the same maximum as PyTorch's -inf padding.
        let x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let mut x = x.max_pool2d_with_stride(3, 2)?;
        for layer in &self.layers {
            for b in layer {
                x = b.forward(&x)?;
            }
        }
        x.flatten_from(2)?.mean(D::Minus1)
    }
}
