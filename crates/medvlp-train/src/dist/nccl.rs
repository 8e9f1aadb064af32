//! The NCCL communicator (`--features nccl`): one process per GPU, collectives on candle's CUDA
//! stream through cudarc's NCCL bindings. Rank 0 creates the NCCL id and hands it to the others
//! through [`super::rendezvous`]. Tensors given on the CPU are copied to the GPU and back.

use super::comm::Communicator;
use super::env::DistEnv;
use anyhow::{bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use std::sync::Arc;
use std::time::Duration;

pub struct NcclComm {
    comm: Arc<SharedComm>,
    device: Device,
    watch: Arc<Watch>,
}

/// NCCL collectives block without a timeout: a rank that died leaves the others waiting inside
/// one. A watchdog thread ends the process with an error when a collective has not completed
/// within the timeout (`MEDVLP_NCCL_TIMEOUT_MINUTES`, default 30), as torch's NCCL watchdog does.
struct Watch {
    /// Collectives entered and completed.
    entered: std::sync::atomic::AtomicU64,
    completed: std::sync::atomic::AtomicU64,
    /// When the oldest collective still in flight was entered.
    since: std::sync::Mutex<std::time::Instant>,
}

fn watchdog(watch: Arc<Watch>, rank: usize, timeout: Duration) {
    use std::sync::atomic::Ordering;
    std::thread::Builder::new()
        .name("medvlp-nccl-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            let busy =
                watch.entered.load(Ordering::SeqCst) > watch.completed.load(Ordering::SeqCst);
            let waited = watch.since.lock().map(|t| t.elapsed()).unwrap_or_default();
            if busy && waited > timeout {
                eprintln!(
                    "Error: rank {rank}: an NCCL collective has not completed in {:.0} minutes; \
                     another rank has probably stopped (MEDVLP_NCCL_TIMEOUT_MINUTES sets the limit)",
                    timeout.as_secs_f64() / 60.0
                );
                std::process::exit(1);
            }
        })
        .expect("spawning the NCCL watchdog");
}

/// cudarc's `Comm` holds a raw NCCL handle and is neither `Send` nor `Sync`.
struct SharedComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not overlap;
// medvlp issues every collective from the training thread, one at a time (the gather's backward
// runs on that thread too).
unsafe impl Send for SharedComm {}
unsafe impl Sync for SharedComm {}

impl NcclComm {
    /// Joins the job `env` describes on `device` (its `cuda:LOCAL_RANK`).
    pub fn connect(env: &DistEnv, device: &Device, timeout: Duration) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            bail!("NCCL needs a CUDA device, not {device:?}");
        };
        let id = if env.rank == 0 {
            let id = Id::new().map_err(|e| anyhow::anyhow!("NCCL: creating the id: {e:?}"))?;
            let blob: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            super::rendezvous::serve(
                &env.master_addr,
                env.master_port,
                env.world_size,
                &blob,
                timeout,
            )?;
            id
        } else {
            let blob = super::rendezvous::join(
                &env.master_addr,
                env.master_port,
                env.rank,
                env.world_size,
                timeout,
            )?;
            if blob.len() != 128 {
                bail!("NCCL: rank 0 sent an id of {} bytes, not 128", blob.len());
            }
            let mut raw = [0 as std::ffi::c_char; 128];
            for (d, s) in raw.iter_mut().zip(&blob) {
                *d = *s as std::ffi::c_char;
            }
            Id::uninit(raw)
        };
        let comm =
            Comm::from_rank(cuda.cuda_stream(), env.rank, env.world_size, id).map_err(|e| {
                anyhow::anyhow!("NCCL: joining as rank {} of {}: {e:?}", env.rank, env.world_size)
            })?;
        let watch = Arc::new(Watch {
            entered: Default::default(),
            completed: Default::default(),
            since: std::sync::Mutex::new(std::time::Instant::now()),
        });
        let minutes = std::env::var("MEDVLP_NCCL_TIMEOUT_MINUTES")
            .ok()
            .and_then(|m| m.parse::<f64>().ok())
            .filter(|m| *m > 0.0)
            .unwrap_or(30.0);
        watchdog(watch.clone(), env.rank, Duration::from_secs_f64(minutes * 60.0));
        Ok(Self { comm: Arc::new(SharedComm(comm)), device: device.clone(), watch })
    }

    fn run(&self, t: &Tensor, op: Op) -> Result<Tensor> {
        use std::sync::atomic::Ordering;
        let w = &self.watch;
        if w.entered.load(Ordering::SeqCst) == w.completed.load(Ordering::SeqCst) {
            if let Ok(mut s) = w.since.lock() {
                *s = std::time::Instant::now();
            }
        }
        w.entered.fetch_add(1, Ordering::SeqCst);
        let back = t.device().clone();
        let t = t.to_device(&self.device)?.contiguous()?;
        let out = t.apply_op1_no_bwd(&NcclOp { comm: self.comm.clone(), op })?;
        // A result read back to the host has waited for the collective (and the ones before it
        // on the stream); one left on the GPU completes asynchronously, and a hang there shows in
        // the next collective that reads back (the trainer reads two per step).
        let out = out.to_device(&back)?;
        w.completed.fetch_add(1, Ordering::SeqCst);
        Ok(out)
    }
}

#[derive(Clone, Copy)]
enum Op {
    Sum,
    Gather,
    Broadcast(usize),
}

struct NcclOp {
    comm: Arc<SharedComm>,
    op: Op,
}

impl NcclOp {
    fn go<T>(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)>
    where
        T: candle_core::cuda_backend::CudaDType
            + candle_core::cuda_backend::cudarc::nccl::safe::NcclType
            + candle_core::cuda_backend::cudarc::driver::DeviceRepr
            + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
    {
        let n = l.shape().elem_count();
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("nccl: input not contiguous".into()))?;
        let src = s.as_cuda_slice::<T>()?.slice(a..b);
        let err = |e| candle_core::Error::Msg(format!("NCCL: {e:?}"));
        let comm = &self.comm.0;
        let world = comm.world_size();
        let (out, shape) = match self.op {
            Op::Sum => {
                let mut dst = s.device.alloc_zeros::<T>(n)?;
                comm.all_reduce(&src, &mut dst, &ReduceOp::Sum).map_err(err)?;
                (dst, l.shape().clone())
            }
            Op::Gather => {
                let mut dst = s.device.alloc_zeros::<T>(n * world)?;
                comm.all_gather(&src, &mut dst).map_err(err)?;
                let mut dims = l.shape().dims().to_vec();
                if dims.is_empty() {
                    dims.push(1);
                }
                dims[0] *= world;
                (dst, Shape::from(dims))
            }
            Op::Broadcast(root) => {
                let mut dst = s.device.alloc_zeros::<T>(n)?;
                let send = (comm.rank() == root).then_some(&src);
                comm.broadcast(send, &mut dst, root as i32).map_err(err)?;
                (dst, l.shape().clone())
            }
        };
        Ok((CudaStorage::wrap_cuda_slice(out, s.device.clone()), shape))
    }
}

impl CustomOp1 for NcclOp {
    fn name(&self) -> &'static str {
        "medvlp-nccl"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives run on CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match s.dtype() {
            DType::F32 => self.go::<f32>(s, l),
            DType::F64 => self.go::<f64>(s, l),
            DType::U32 => self.go::<u32>(s, l),
            DType::U8 => self.go::<u8>(s, l),
            d => candle_core::bail!("NCCL: no collective for {d:?}"),
        }
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.0.rank()
    }
    fn world_size(&self) -> usize {
        self.comm.0.world_size()
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, Op::Sum).context("all-reduce")
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, Op::Gather).context("all-gather")
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.run(t, Op::Broadcast(root)).context("broadcast")
    }
    fn barrier(&self) -> Result<()> {
        let z = Tensor::zeros(1, DType::F32, &self.device)?;
        self.all_reduce_sum(&z)?.to_vec1::<f32>()?;
        Ok(())
    }
}
