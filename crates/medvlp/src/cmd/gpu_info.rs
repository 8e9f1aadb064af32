//! What the benchmarks report about a GPU: its name, the memory in use and its bf16 peak.

use candle_core::Device;

pub struct GpuInfo {
    pub name: String,
}

impl GpuInfo {
    /// `None` on the CPU.
    pub fn of(dev: &Device) -> Option<Self> {
        match dev.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => {
                Some(Self { name: name(gpu_id).unwrap_or_else(|| format!("cuda:{gpu_id}")) })
            }
            _ => None,
        }
    }

    /// Device-wide bytes in use (0 when unknown).
    pub fn memory_used(&self) -> u64 {
        memory_used().unwrap_or(0)
    }

    /// Dense bf16 tensor-core peak in GFLOP/s from the vendor data sheets, for the cards we know.
    pub fn bf16_peak_gflops(&self) -> Option<f64> {
        bf16_peak_gflops(&self.name)
    }
}

pub fn bf16_peak_gflops(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    let tflops = if n.contains("H100") && n.contains("PCIE") {
        756.0
    } else if n.contains("H100") && n.contains("NVL") {
        835.0
    } else if n.contains("H100") || n.contains("H200") || n.contains("GH200") {
        989.0
    } else if n.contains("A100") {
        312.0
    } else if n.contains("L40S") {
        362.0
    } else {
        return None;
    };
    Some(tflops * 1000.0)
}

#[cfg(feature = "cuda")]
fn name(ordinal: usize) -> Option<String> {
    medvlp_model::cuda_driver::device_name(ordinal)
}

#[cfg(not(feature = "cuda"))]
fn name(_ordinal: usize) -> Option<String> {
    None
}

#[cfg(feature = "cuda")]
fn memory_used() -> Option<u64> {
    medvlp_model::cuda_driver::memory_used()
}

#[cfg(not(feature = "cuda"))]
fn memory_used() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_cards_have_their_data_sheet_peak() {
        assert_eq!(super::bf16_peak_gflops("NVIDIA H100 80GB HBM3"), Some(989_000.0));
        assert_eq!(super::bf16_peak_gflops("NVIDIA H100 PCIe"), Some(756_000.0));
        assert_eq!(super::bf16_peak_gflops("NVIDIA A100-SXM4-80GB"), Some(312_000.0));
        assert_eq!(super::bf16_peak_gflops("NVIDIA GeForce GTX 1080"), None);
    }
}
