//! Optional bf16 inference for dense layers on CPUs with AVX-512 BF16: weights are packed once to
//! bf16, activations are rounded to bf16 per call, products accumulate in f32 (`vdpbf16ps`), and
//! the bias and GELU are applied in f32. Enabled per process with [`enable`] for the weights of a
//! frozen model; training and tracked tensors never take this path. candle 0.11's CPU bf16 matmul
//! widens to f32, so the kernel is written here.

use super::linear::Activation;
use candle_core::{CpuStorage, Result, Storage, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A `[out, in]` weight packed for the kernel: blocks of 16 output columns, then input pairs,
/// then the 16 lanes' `(w[j, k], w[j, k + 1])` as two bf16 in one u32.
pub struct Packed {
    out: usize,
    inp: usize,
    kp: usize,
    data: Vec<u32>,
}

/// Packed weights keyed by their buffer (address, length): a frozen store hands the model detached
/// copies that share the buffer but not the tensor id. Each entry keeps its source tensor alive so
/// that the address cannot be reused by another tensor.
type Registry = HashMap<(usize, usize), (Tensor, Arc<Packed>)>;
static REGISTRY: RwLock<Option<Registry>> = RwLock::new(None);

fn key(w: &Tensor) -> Option<(usize, usize)> {
    let (st, l) = w.storage_and_layout();
    match &*st {
        Storage::Cpu(CpuStorage::F32(v)) if l.is_contiguous() => {
            Some((v.as_ptr() as usize + 4 * l.start_offset(), w.elem_count()))
        }
        _ => None,
    }
}

/// Whether this CPU has the instructions (AVX-512 F + BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn bf16_bits(x: f32) -> u32 {
    // round to nearest even; NaN stays NaN
    let b = x.to_bits();
    if x.is_nan() {
        return (b >> 16) | 0x40;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16
}

fn pack(w: &[f32], out: usize, inp: usize) -> Packed {
    let kp = inp.div_ceil(2);
    let blocks = out.div_ceil(16);
    let mut data = vec![0u32; blocks * kp * 16];
    for jb in 0..blocks {
        for k in 0..kp {
            for l in 0..16 {
                let j = jb * 16 + l;
                if j >= out {
                    continue;
                }
                let lo = bf16_bits(w[j * inp + 2 * k]);
                let hi = if 2 * k + 1 < inp { bf16_bits(w[j * inp + 2 * k + 1]) } else { 0 };
                data[(jb * kp + k) * 16 + l] = lo | (hi << 16);
            }
        }
    }
    Packed { out, inp, kp, data }
}

/// Pack every 2-D f32 CPU weight among `weights` for bf16 inference; later untracked dense layers
/// with these weights run in bf16. Errors when the CPU lacks AVX-512 BF16.
pub fn enable<'a>(weights: impl IntoIterator<Item = &'a Tensor>) -> Result<usize> {
    if !available() {
        candle_core::bail!("bf16 inference needs a CPU with AVX-512 BF16");
    }
    let mut map = HashMap::new();
    for w in weights {
        if w.rank() == 2 && w.dtype() == candle_core::DType::F32 && w.device().is_cpu() {
            let (o, i) = w.dims2()?;
            let v = w.flatten_all()?.to_vec1::<f32>()?;
            if let Some(k) = key(w) {
                map.insert(k, (w.clone(), Arc::new(pack(&v, o, i))));
            }
        }
    }
    let n = map.len();
    *REGISTRY.write().unwrap() = Some(map);
    Ok(n)
}

/// Turn bf16 inference off again.
pub fn disable() {
    *REGISTRY.write().unwrap() = None;
}

pub(crate) fn lookup(w: &Tensor) -> Option<Arc<Packed>> {
    let reg = REGISTRY.read().unwrap();
    let m = reg.as_ref()?;
    m.get(&key(w)?).map(|(_, p)| p.clone())
}

/// `act(x W^T + b)` with the packed weight; `x` `[rows, in]` contiguous f32.
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    p: &Packed,
    b: Option<&[f32]>,
    act: Activation,
) -> Vec<f32> {
    let kp = p.kp;
    // activations as bf16 pairs
    let mut xa = vec![0u32; rows * kp];
    xa.par_chunks_mut(kp.max(1)).enumerate().for_each(|(r, o)| {
        let row = &x[r * p.inp..(r + 1) * p.inp];
        for (k, v) in o.iter_mut().enumerate() {
            let lo = bf16_bits(row[2 * k]);
            let hi = if 2 * k + 1 < p.inp { bf16_bits(row[2 * k + 1]) } else { 0 };
            *v = lo | (hi << 16);
        }
    });
    let mut y = vec![0f32; rows * p.out];
    // 64-row chunks: a 48-column weight panel is reused from cache across 16 four-row tiles.
    const RB: usize = 64;
    y.par_chunks_mut(RB * p.out).enumerate().for_each(|(rb, yc)| {
        let r0 = rb * RB;
        let nr = yc.len() / p.out;
        #[cfg(target_arch = "x86_64")]
        unsafe {
            kernel(&xa[r0 * kp..(r0 + nr) * kp], nr, p, yc)
        };
        let mut h = Vec::new();
        for yr in yc.chunks_mut(p.out) {
            if let Some(b) = b {
                for (v, &bb) in yr.iter_mut().zip(b) {
                    *v += bb;
                }
            }
            if act == Activation::Gelu {
                h.clear();
                h.extend_from_slice(yr);
                super::vmath::gelu_into(&h, yr);
            }
        }
    });
    y
}

/// `yc[r, j] = sum_k xa[r, k] . w[j, k]` for up to 4 rows, 3 blocks of 16 columns at a time
/// (12 independent accumulators hide the dot-product latency).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(xa: &[u32], nr: usize, p: &Packed, yc: &mut [f32]) {
    const NB: usize = 3;
    let blocks = p.out.div_ceil(16);
    let mut jb = 0;
    while jb < blocks {
        let nb = (blocks - jb).min(NB);
        for r0 in (0..nr).step_by(4) {
            tile(xa, r0, (nr - r0).min(4), jb, nb, p, yc);
        }
        jb += nb;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile(xa: &[u32], r0: usize, nr: usize, jb: usize, nb: usize, p: &Packed, yc: &mut [f32]) {
    use std::arch::x86_64::*;
    const NB: usize = 3;
    let kp = p.kp;
    {
        let mut acc = [[_mm512_setzero_ps(); NB]; 4];
        for k in 0..kp {
            let mut bs: [__m512bh; NB] =
                [std::mem::transmute::<__m512, __m512bh>(_mm512_setzero_ps()); NB];
            for (c, bv) in bs.iter_mut().enumerate().take(nb) {
                *bv = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    p.data.as_ptr().add(((jb + c) * kp + k) * 16) as *const _,
                ));
            }
            for (r, ar) in acc.iter_mut().enumerate().take(nr) {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                    *xa.get_unchecked((r0 + r) * kp + k) as i32,
                ));
                for c in 0..nb {
                    ar[c] = _mm512_dpbf16_ps(ar[c], x, bs[c]);
                }
            }
        }
        for c in 0..nb {
            let j0 = (jb + c) * 16;
            let w = (p.out - j0).min(16);
            for (r, ar) in acc.iter().enumerate().take(nr) {
                let mut tmp = [0f32; 16];
                _mm512_storeu_ps(tmp.as_mut_ptr(), ar[c]);
                let o = (r0 + r) * p.out + j0;
                yc[o..o + w].copy_from_slice(&tmp[..w]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_dense_matches_f32_within_bf16_precision() {
        if !available() {
            println!("skipped: no AVX-512 BF16 on this CPU");
            return;
        }
        let (rows, inp, out) = (7, 45, 37);
        let x: Vec<f32> = (0..rows * inp).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let w: Vec<f32> = (0..out * inp).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
        let b: Vec<f32> = (0..out).map(|i| i as f32 * 0.01).collect();
        let p = pack(&w, out, inp);
        let y = linear(&x, rows, &p, Some(&b), Activation::Identity);
        for r in 0..rows {
            for j in 0..out {
                let want: f32 =
                    (0..inp).map(|k| x[r * inp + k] * w[j * inp + k]).sum::<f32>() + b[j];
                let scale: f32 = (0..inp).map(|k| (x[r * inp + k] * w[j * inp + k]).abs()).sum();
                assert!(
                    (y[r * out + j] - want).abs() <= 1e-2 * scale + 1e-6,
                    "{r},{j}: {} vs {want}",
                    y[r * out + j]
                );
            }
        }
    }
}
