//! All-gather with a backward pass (open_clip's `gather_with_grad`): every rank gets the global
//! batch of embeddings, and the gradient that reaches a rank's local embeddings is the sum over
//! ranks of the gradients of their losses with respect to them (an all-reduce of the gradient of
//! the gathered tensor, then this rank's rows).

use super::comm::Communicator;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// Every rank's `x` `[rows_r, ..]` concatenated in rank order; differentiable in `x`. Ranks may
/// pass different row counts (a batch that lost a bad sample): the counts are exchanged first and
/// the rows padded to the largest for the collective.
pub fn gather_with_grad(comm: &Arc<dyn Communicator>, x: &Tensor) -> Result<Tensor> {
    if comm.world_size() == 1 {
        return Ok(x.clone());
    }
    let msg = |e: anyhow::Error| candle_core::Error::Msg(format!("gather_with_grad: {e:#}"));
    let rows = x.dim(0)?;
    let counts = comm
        .all_gather(&Tensor::new(&[rows as u32], &candle_core::Device::Cpu)?)
        .map_err(msg)?
        .to_vec1::<u32>()?;
    let counts: Vec<usize> = counts.into_iter().map(|c| c as usize).collect();
    let most = counts.iter().copied().max().unwrap_or(0);
    let offset: usize = counts[..comm.rank()].iter().sum();
    let global = if counts.iter().all(|&c| c == most) {
        comm.all_gather(&x.detach()).map_err(msg)?.contiguous()?
    } else {
        let mut padded = x.detach();
        if rows < most {
            let mut shape = x.dims().to_vec();
            shape[0] = most - rows;
            padded = Tensor::cat(&[&padded, &Tensor::zeros(shape, x.dtype(), x.device())?], 0)?;
        }
        let all = comm.all_gather(&padded).map_err(msg)?;
        let parts: Vec<Tensor> = counts
            .iter()
            .enumerate()
            .map(|(r, &c)| all.narrow(0, r * most, c))
            .collect::<Result<_>>()?;
        Tensor::cat(&parts, 0)?.contiguous()?
    };
    x.apply_op2(&global, GatherOp { comm: comm.clone(), offset, rows })
}

struct GatherOp {
    comm: Arc<dyn Communicator>,
    offset: usize,
    rows: usize,
}

impl CustomOp2 for GatherOp {
    fn name(&self) -> &'static str {
        "medvlp-gather-with-grad"
    }

    /// The gathered tensor (second argument, contiguous) is the value.
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        global: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((global.try_clone(l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        global: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((global.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The gathered tensor has the same row layout on every rank, so the gradients add up.
        let total = self
            .comm
            .all_reduce_sum(grad)
            .map_err(|e| candle_core::Error::Msg(format!("gather_with_grad backward: {e:#}")))?;
        Ok((Some(total.narrow(0, self.offset, self.rows)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::comm::LocalGroup;
    use crate::objectives::contrastive::itc_loss;
    use candle_core::{DType, Device, Var};
    use std::time::Duration;

    fn embeddings(seed: u64, rows: usize) -> Tensor {
        let t = Tensor::zeros((rows, 8), DType::F64, &Device::Cpu).unwrap();
        let x = medvlp_model::gradcheck::probe_like(&t, seed).unwrap();
        medvlp_model::heads::l2_normalize(&x).unwrap()
    }

    /// The global-batch contrastive loss on W ranks gives each rank's embeddings W times the
    /// gradient of the same loss computed on one rank (every rank computes the whole loss; the
    /// trainer's gradient all-reduce averages it back), and the per-rank losses agree.
    #[test]
    fn uneven_row_counts_gather_in_rank_order_with_gradients() {
        let comms = LocalGroup::ranks(3, Duration::from_secs(30));
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let r = c.rank();
                    let comm: Arc<dyn Communicator> = Arc::new(c);
                    let rows = [2usize, 1, 3][r];
                    let x =
                        Var::from_tensor(&Tensor::full(r as f64, (rows, 2), &Device::Cpu).unwrap())
                            .unwrap();
                    let g = gather_with_grad(&comm, x.as_tensor()).unwrap();
                    let col: Vec<f64> =
                        g.narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                    // d/dx of sum(global * row index) on every rank: each rank adds its copy.
                    let w =
                        Tensor::arange(0f64, 6.0, &Device::Cpu).unwrap().reshape((6, 1)).unwrap();
                    let grad = g.broadcast_mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                    let gx: Vec<f64> = grad
                        .get(x.as_tensor())
                        .unwrap()
                        .narrow(1, 0, 1)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    (col, gx)
                })
            })
            .collect();
        let out: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        for (col, _) in &out {
            assert_eq!(col, &vec![0.0, 0.0, 1.0, 2.0, 2.0, 2.0]);
        }
        assert_eq!(out[0].1, vec![0.0, 3.0]);
        assert_eq!(out[1].1, vec![6.0]);
        assert_eq!(out[2].1, vec![9.0, 12.0, 15.0]);
    }

    #[test]
    fn gathered_contrastive_loss_matches_one_rank_with_the_whole_batch() {
        for world in [2usize, 4] {
            let rows = 3;
            let img: Vec<Tensor> = (0..world).map(|r| embeddings(10 + r as u64, rows)).collect();
            let txt: Vec<Tensor> = (0..world).map(|r| embeddings(50 + r as u64, rows)).collect();
            let scale = Tensor::new(1.0 / 0.07f64, &Device::Cpu).unwrap();
            // One rank, whole batch.
            let (vi, vt) = (
                Var::from_tensor(&Tensor::cat(&img, 0).unwrap()).unwrap(),
                Var::from_tensor(&Tensor::cat(&txt, 0).unwrap()).unwrap(),
            );
            let full = itc_loss(vi.as_tensor(), vt.as_tensor(), &scale).unwrap();
            let g = full.backward().unwrap();
            let (gi, gt) =
                (g.get(vi.as_tensor()).unwrap().clone(), g.get(vt.as_tensor()).unwrap().clone());
            let full = full.to_scalar::<f64>().unwrap();
            // W ranks as threads.
            let comms = LocalGroup::ranks(world, Duration::from_secs(30));
            let handles: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    let (i, t, s) = (img[c.rank()].clone(), txt[c.rank()].clone(), scale.clone());
                    std::thread::spawn(move || {
                        let comm: Arc<dyn Communicator> = Arc::new(c);
                        let (vi, vt) =
                            (Var::from_tensor(&i).unwrap(), Var::from_tensor(&t).unwrap());
                        let gi = gather_with_grad(&comm, vi.as_tensor()).unwrap();
                        let gt = gather_with_grad(&comm, vt.as_tensor()).unwrap();
                        let l = itc_loss(&gi, &gt, &s).unwrap();
                        let g = l.backward().unwrap();
                        (
                            l.to_scalar::<f64>().unwrap(),
                            g.get(vi.as_tensor()).unwrap().clone(),
                            g.get(vt.as_tensor()).unwrap().clone(),
                        )
                    })
                })
                .collect();
            for (r, h) in handles.into_iter().enumerate() {
                let (l, ri, rt) = h.join().unwrap();
                assert!((l - full).abs() < 1e-12, "rank {r}: loss {l} vs {full}");
                for (got, want) in [(ri, &gi), (rt, &gt)] {
                    let want = (want.narrow(0, r * rows, rows).unwrap() * world as f64).unwrap();
                    let d = (got - want)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap();
                    assert!(d < 1e-12, "world {world}, rank {r}: gradient off by {d}");
                }
            }
        }
    }
}
