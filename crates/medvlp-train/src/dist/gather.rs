//! All-gather with a backward pass (open_clip's `gather_with_grad`): every rank gets the global
//! batch of embeddings, and the gradient that reaches a rank's local embeddings is the sum over
//! ranks of the gradients of their losses with respect to them (an all-reduce of the gradient of
//! the gathered tensor, then this rank's rows).

use super::comm::Communicator;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// `[rows * world, ..]`: every rank's `x` `[rows, ..]` in rank order; differentiable in `x`.
/// Every rank must pass the same number of rows.
pub fn gather_with_grad(comm: &Arc<dyn Communicator>, x: &Tensor) -> Result<Tensor> {
    if comm.world_size() == 1 {
        return Ok(x.clone());
    }
    let msg = |e: anyhow::Error| candle_core::Error::Msg(format!("gather_with_grad: {e:#}"));
    let global = comm.all_gather(&x.detach()).map_err(msg)?.contiguous()?;
    let rows = x.dim(0)?;
    if global.dim(0)? != rows * comm.world_size() {
        candle_core::bail!(
            "gather_with_grad: ranks passed different row counts ({} rows in all, {rows} here, {} ranks)",
            global.dim(0)?,
            comm.world_size()
        );
    }
    x.apply_op2(&global, GatherOp { comm: comm.clone(), offset: comm.rank() * rows, rows })
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
