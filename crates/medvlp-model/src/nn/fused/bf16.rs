//! Whether this CPU has AVX-512 BF16 (with F and BW), for [`super::bf16_gemm`]: bf16 products
//! for training and inference under `nn::with_precision(Precision::Bf16, ..)`.

/// Whether the kernels may use the instructions: AVX-512 at [`super::cpu::level`] and BF16.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::cpu::avx512() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
