//! The instruction-set level the CPU kernels dispatch on: what this CPU has, optionally capped by
//! `MEDVLP_CPU` (`avx512`, `avx2` or `baseline`, as PyTorch's `ATEN_CPU_CAPABILITY`), so that one
//! machine can run, test and time the code that CPUs without AVX-512 (AMD Zen 2/3, older Intel)
//! or without AVX2 take. Decided once per process.
//!
//! The cap covers medvlp's own kernels: the FMA and bf16 tiles, AMX, the attention kernels and
//! the vectorised loops of [`super::vmath`]. The `gemm` crate picks its micro-kernels from the
//! CPU's own features; a build without the `gemm-avx512` feature (on by default) leaves out its
//! AVX-512 ones (`bench/compare.sh --cpu avx2` builds one to time an AVX2-class CPU).

/// Instruction-set levels, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CpuLevel {
    /// The x86-64 baseline (SSE2), or any other architecture: portable loops only.
    Baseline,
    /// AVX2 and FMA (x86-64-v3): 8-lane loops with fused multiply-adds.
    Avx2,
    /// AVX-512 F, BW, DQ and VL (x86-64-v4): 16-lane loops and the AVX-512 tiles.
    Avx512,
}

impl CpuLevel {
    pub const ALL: [CpuLevel; 3] = [CpuLevel::Baseline, CpuLevel::Avx2, CpuLevel::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    fn named(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// The highest level this CPU supports.
pub fn detected() -> CpuLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return CpuLevel::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return CpuLevel::Avx2;
        }
    }
    CpuLevel::Baseline
}

/// The level the kernels use: [`detected`], lowered to `MEDVLP_CPU` if that names a lower one
/// (a higher one than the CPU has is ignored with a warning).
pub fn level() -> CpuLevel {
    static L: std::sync::OnceLock<CpuLevel> = std::sync::OnceLock::new();
    *L.get_or_init(|| {
        let have = detected();
        match std::env::var("MEDVLP_CPU") {
            Err(_) => have,
            Ok(v) => match CpuLevel::named(&v) {
                Some(cap) if cap <= have => cap,
                Some(cap) => {
                    tracing::warn!(
                        "MEDVLP_CPU={v}: this CPU supports up to {}; using that",
                        have.name()
                    );
                    cap.min(have)
                }
                None => {
                    tracing::warn!(
                        "MEDVLP_CPU={v:?} is not avx512, avx2 or baseline; using {}",
                        have.name()
                    );
                    have
                }
            },
        }
    })
}

/// Whether the kernels may use AVX-512 (F, BW, DQ, VL).
pub fn avx512() -> bool {
    level() >= CpuLevel::Avx512
}

/// Whether they may use AVX2 and FMA.
pub fn avx2() -> bool {
    level() >= CpuLevel::Avx2
}

/// Whether the `gemm` crate in this build has its AVX-512 micro-kernels (which it picks by the
/// CPU's features, whatever [`level`] says).
pub fn gemm_crate_avx512() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "gemm-avx512"))]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(all(target_arch = "x86_64", feature = "gemm-avx512")))]
    {
        false
    }
}
