//! Mixed precision for training, with open_clip's `amp_bf16` semantics: parameters, gradients
//! and optimiser state stay fp32; inside [`with_precision`]`(Bf16, ..)` the dense layers and the
//! two attention products run in bf16 (operands rounded, results widened back to fp32), while
//! LayerNorm, softmax, GELU, the losses and every reduction stay fp32. The casts are recorded ops,
//! so gradients reach the fp32 weights through them as fp32.
//!
//! Like [`super::fused::with_kernels`] this is a per-thread setting: the trainer wraps each
//! forward pass; evaluation and inference run in fp32 unless they ask. On the CPU the fused
//! kernels record the setting with each op ([`super::fused::Products`]) and run their forward and
//! backward GEMMs through [`super::fused::bf16_gemm`] (AVX-512 BF16 where the CPU has it); other
//! devices and the composed path cast the operands to bf16 around candle's matmul.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// `train.precision` in a run config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("precision '{other}' is not fp32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
        })
    }
}

thread_local! {
    static PRECISION: std::cell::Cell<Precision> = const { std::cell::Cell::new(Precision::Fp32) };
}

/// The precision in effect on this thread.
pub fn precision() -> Precision {
    PRECISION.with(|p| p.get())
}

/// Runs `f` with `p` on this thread (restored afterwards, also on panic).
pub fn with_precision<T>(p: Precision, f: impl FnOnce() -> T) -> T {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            PRECISION.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(PRECISION.with(|c| c.replace(p)));
    f()
}

/// Whether a product with `x` as an operand runs in bf16 here.
pub fn autocast(x: &Tensor) -> bool {
    precision() == Precision::Bf16 && x.dtype() == DType::F32
}

/// `a @ b` with bf16 operands under bf16 autocast (fp32 result), plain `matmul` otherwise.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if autocast(a) {
        a.to_dtype(DType::BF16)?.matmul(&b.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)
    } else {
        a.matmul(b)
    }
}
