//! Whether this CPU has AVX-512 BF16 (with F and BW), for [`super::bf16_gemm`]: bf16 products
//! for training and inference under `nn::with_precision(Precision::Bf16, ..)`.

/// Whether this CPU has the instructions (AVX-512 F, BW and BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
