//! Process-wide CPU runtime settings, applied once at start-up before any tensor op.
//!
//! candle 0.11 runs element-wise ops on its own barrier thread pool whose idle workers spin 25,000
//! times before parking, while GEMMs and medvlp's kernels run on rayon's pool. On a 2-core machine
//! the spinning worker steals the core the GEMM threads need: the reference training step takes
//! 7.3 s with the default and 3.5 s with a spin limit of 100 (same machine, same minute, under load).
//! We lower the limit unless the user set `CANDLE_BARRIER_POOL_SPIN_LIMIT` themselves.
//!
//! glibc's malloc serves blocks above a (dynamic) threshold with fresh `mmap`s and returns them on
//! free, so every activation and gradient buffer of a training step is page-faulted and zeroed by
//! the kernel again, step after step. Keeping large blocks in the heap (and not trimming it) lets
//! the next step reuse them: the reference training step drops from ~0.51 s to ~0.45 s with the
//! same peak RSS. Users can still override with glibc's `MALLOC_MMAP_THRESHOLD_` variables.

/// The device a name selects: `cpu`, `cuda` or `cuda:N`. `cuda` on a CPU-only build, on a machine
/// without a driver, or past the last GPU fails here with one sentence saying which.
pub fn device(name: &str) -> anyhow::Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = match n.strip_prefix("cuda:") {
                None => 0,
                Some(o) => o.parse::<usize>().map_err(|_| {
                    anyhow::anyhow!("bad device '{n}': the GPU number must be cuda:0, cuda:1, ...")
                })?,
            };
            cuda_device(n, ordinal)
        }
        n => anyhow::bail!("unknown device '{n}' (cpu, cuda, cuda:N)"),
    }
}

/// The device that tests which take one run on: `MEDVLP_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`),
/// default `cpu`. `bench/gpu-check.sh` sets it to run those tests on the GPU.
pub fn test_device() -> candle_core::Device {
    let name = std::env::var("MEDVLP_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    device(&name).unwrap_or_else(|e| panic!("MEDVLP_TEST_DEVICE={name}: {e:#}"))
}

#[cfg(feature = "cuda")]
fn cuda_device(name: &str, ordinal: usize) -> anyhow::Result<candle_core::Device> {
    crate::cuda_driver::check_ordinal(ordinal)
        .map_err(|e| anyhow::anyhow!("device '{name}': {e}"))?;
    candle_core::Device::new_cuda(ordinal)
        .map_err(|e| anyhow::anyhow!("device '{name}': the CUDA device could not be opened: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(name: &str, _ordinal: usize) -> anyhow::Result<candle_core::Device> {
    anyhow::bail!(
        "device '{name}': this medvlp was built without CUDA (build it with `--features cuda`, see the README's GPU section)"
    )
}

/// Default spin limit of candle's barrier pool workers.
pub const BARRIER_SPIN_LIMIT: &str = "100";

/// Call at the top of `main`, before any thread is started.
pub fn configure() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Single-threaded at this point (start of main), so setting the environment is sound.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", BARRIER_SPIN_LIMIT);
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // No barrier pool workers of candle's own: its spin-waiting pool competed with rayon's
        // threads, which run every GEMM and fused kernel, for the same cores. Measured on 2 cores
        // (AMD EPYC, 2026-12-06): the reference bf16 training step 0.59-0.65 s -> 0.52-0.54 s,
        // fp32 0.69 -> 0.66 s, the small xlip step 1.68-1.70 s -> 1.62-1.63 s. Without workers,
        // the vendored candle-core runs its large element-wise ops (residual adds, gradient
        // accumulation) on rayon's pool instead (vendor/README.md).
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    keep_large_allocations();
}

/// Largest block glibc may serve from the heap instead of `mmap` (its maximum on 64-bit is 32 MiB
/// unless set explicitly, as here).
const MMAP_THRESHOLD: i32 = 1 << 30;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_allocations() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
    {
        return;
    }
    // SAFETY: mallopt only changes allocator tunables; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_allocations() {}

/// Makes the calling thread (call it from `main`, before any parallel work) worker 0 of rayon's
/// global pool, beside `threads - 1` spawned workers, for commands whose main thread runs the
/// model. Otherwise every GEMM and fused kernel that the main thread starts is injected into the
/// pool's queue while the main thread sleeps until it is done: one wake-up of a worker and one of
/// the main thread per op, and one core's worth of threads idle between them. As a worker, the
/// main thread splits the work and takes its share itself.
///
/// Not for the server: its requests run on tokio's threads while `main` waits, so the pool would
/// lose a thread (its model thread takes [`model_thread_pool`] instead). With one thread the pool
/// keeps its own worker, so that work other threads submit (in-process data-parallel ranks)
/// always has a thread to run on.
pub fn compute_on_main_thread() {
    let threads = pool_threads();
    if threads < 2 {
        return;
    }
    match rayon::ThreadPoolBuilder::new().num_threads(threads).use_current_thread().build_global() {
        Ok(()) => workers::enable(),
        Err(e) => tracing::debug!("rayon's global pool was already built: {e}"),
    }
}

/// A pool of its own for a thread that runs every forward pass of a long-lived model (the
/// server's model thread), with the calling thread as its worker 0, as
/// [`compute_on_main_thread`] makes the main thread of the other commands: the thread takes its
/// share of each kernel instead of sleeping while the pool runs it, and the pool's other workers
/// keep polling between kernels. Keep the pool for as long as the thread runs kernels: rayon
/// calls from this thread go to it. Work other threads submit (the server's index searches) still
/// goes to the global pool. `None` with one thread, or when this thread is already in a pool.
pub fn model_thread_pool() -> Option<rayon::ThreadPool> {
    let threads = pool_threads();
    if threads < 2 {
        return None;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("medvlp-model-{i}"))
        .use_current_thread()
        .build();
    match pool {
        Ok(pool) => {
            workers::enable();
            Some(pool)
        }
        Err(e) => {
            tracing::debug!("no pool for the model thread: {e}");
            None
        }
    }
}

/// `RAYON_NUM_THREADS`, else the machine's logical CPUs.
fn pool_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `f` on contiguous ranges of a batch of `n` samples at once, one range per core, each on
/// a single-thread rayon pool of its own, and returns the results in range order. For batched
/// inference: every kernel inside a range runs serially on its thread, so the cores never
/// synchronise between the model's ops (a GEMM, LayerNorm or softmax split over the cores waits
/// for its slowest part and wakes the other workers, hundreds of times per forward pass).
/// Measured on 2 cores (Intel Xeon family 6 model 207), medians of 10 alternating runs of
/// `bench encode`: the reference ViT's embedding 699 images/s in two ranges against 678 with each
/// op split, every token 546 against 534; the `small` ConvNet 334 against 292 (4 runs).
/// The calling thread's precision and kernel choice apply inside. With one core or one sample,
/// or with `MEDVLP_BATCH_RANGES=0`, `f(0..n)` on the calling thread.
pub fn map_batch_ranges<T: Send>(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> T + Sync,
) -> Vec<T> {
    let pools = shard_pools();
    let k = pools.len().min(n);
    if k < 2 {
        return vec![f(0..n)];
    }
    let (precision, kernels) = (crate::nn::precision::precision(), crate::nn::fused::kernels());
    let range = |i: usize| (i * n / k)..((i + 1) * n / k);
    let run = |i: usize| {
        pools[i].install(|| {
            crate::nn::precision::with_precision(precision, || {
                crate::nn::fused::with_kernels(kernels, || f(range(i)))
            })
        })
    };
    std::thread::scope(|s| {
        let others: Vec<_> = (1..k).map(|i| s.spawn(move || run(i))).collect();
        let mut out = vec![run(0)];
        for h in others {
            out.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        out
    })
}

/// One single-thread pool per core for [`map_batch_ranges`] (empty with one core).
fn shard_pools() -> &'static [rayon::ThreadPool] {
    static POOLS: std::sync::OnceLock<Vec<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOLS.get_or_init(|| {
        let threads = pool_threads();
        // `MEDVLP_BATCH_RANGES=0`: split each op instead (to compare).
        if threads < 2 || std::env::var("MEDVLP_BATCH_RANGES").is_ok_and(|v| v.trim() == "0") {
            return vec![];
        }
        (0..threads)
            .map_while(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("medvlp-range-{i}"))
                    .build()
                    .map_err(|e| tracing::debug!("no pool for batch ranges: {e}"))
                    .ok()
            })
            .collect()
    })
}

pub use workers::keep_awake as keep_workers_awake;

/// Keeping rayon's spawned workers awake between kernels.
///
/// rayon parks a worker that found no work for 32 rounds of `sched_yield` (tens of microseconds),
/// and the next job wakes it with an inter-processor interrupt, a VM exit on virtual machines. A
/// training step starts about a thousand kernels with short serial gaps between them, so the one
/// spawned worker of a 2-core machine slept and was woken about a thousand times per step, and
/// each kernel ran on the main thread alone until the worker came back. OpenMP runtimes, which
/// PyTorch's kernels use, spin for a while instead (Intel's `KMP_BLOCKTIME`, GNU's
/// `GOMP_SPINCOUNT`); rayon has no such setting (upstream declined the knob, rayon-rs/rayon#684).
///
/// So every kernel entry calls [`keep_awake`]: if no keeper runs, it broadcasts one to the spawned
/// workers. A keeper is a job that keeps taking work with `rayon::yield_now` (giving the core
/// away with `sched_yield` when there is none, as rayon's own idle loop does) and returns once it
/// found none for [`SPIN`] (`MEDVLP_WORKER_SPIN_US`, 0 turns keepers off); the worker then parks
/// as before. Measured on 2 cores (Intel Xeon family 6 model 207, 2026-12-07), medians of 8
/// alternating runs of `medvlp bench train-step --preset reference`: 0.530 s per step without
/// keepers, 0.508 s with them (context switches 1,080 -> 270 per step); encoding 3-5% faster.
mod workers {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// Default time a keeper waits for work before letting its worker park.
    const SPIN: Duration = Duration::from_micros(2000);

    /// Set once the global pool has the main thread as worker 0 (the thread that starts kernels).
    static ENABLED: AtomicBool = AtomicBool::new(false);
    /// Keepers running, and whether a broadcast of new ones is on its way.
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static PENDING: AtomicBool = AtomicBool::new(false);

    fn spin() -> Duration {
        static S: OnceLock<Duration> = OnceLock::new();
        *S.get_or_init(|| {
            std::env::var("MEDVLP_WORKER_SPIN_US")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(SPIN, Duration::from_micros)
        })
    }

    pub(super) fn enable() {
        if !spin().is_zero() {
            ENABLED.store(true, Ordering::Release);
        }
    }

    /// Called where a parallel kernel starts: makes sure the spawned workers are polling for its
    /// jobs. One relaxed load when keepers already run.
    #[inline]
    pub fn keep_awake() {
        if !ENABLED.load(Ordering::Relaxed) || RUNNING.load(Ordering::Relaxed) > 0 {
            return;
        }
        // A single-thread pool ([`super::map_batch_ranges`]) has no worker to keep awake, and
        // a broadcast there would leave `PENDING` set for good.
        if rayon::current_num_threads() < 2 {
            return;
        }
        if !PENDING.swap(true, Ordering::AcqRel) {
            start(spin());
        }
    }

    /// Broadcasts keepers waiting `spin` to the current pool's workers other than worker 0.
    fn start(spin: Duration) {
        rayon::spawn_broadcast(move |ctx| {
            // Worker 0 is the main thread: it must get back to the code that started the kernel.
            if ctx.index() != 0 {
                keep(spin);
            }
        });
    }

    #[cfg(test)]
    thread_local! {
        static IN_KEEPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn keep(spin: Duration) {
        #[cfg(test)]
        IN_KEEPER.set(true);
        RUNNING.fetch_add(1, Ordering::AcqRel);
        PENDING.store(false, Ordering::Release);
        let mut idle_since = Instant::now();
        loop {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => idle_since = Instant::now(),
                Some(rayon::Yield::Idle) if idle_since.elapsed() < spin => std::thread::yield_now(),
                _ => break,
            }
        }
        RUNNING.fetch_sub(1, Ordering::AcqRel);
        #[cfg(test)]
        IN_KEEPER.set(false);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn wait_for(what: &str, f: impl Fn() -> bool) {
            let t = Instant::now();
            while !f() {
                assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        /// On a pool whose worker 0 is the calling thread (as `compute_on_main_thread` builds
        /// the global one), a keeper runs on the other worker, not on the caller, takes the
        /// caller's jobs, and returns once it has been idle for its spin time.
        #[test]
        fn a_keeper_runs_beside_the_caller_takes_its_jobs_and_stops_when_idle() {
            std::thread::spawn(|| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .use_current_thread()
                    .build()
                    .unwrap();
                assert_eq!(rayon::current_thread_index(), Some(0));
                assert_eq!(RUNNING.load(Ordering::Acquire), 0);
                start(Duration::from_secs(2));
                // This thread is free (the broadcast copy for worker 0 returns at once) while
                // worker 1 keeps polling.
                wait_for("the keeper to start", || RUNNING.load(Ordering::Acquire) == 1);
                // The second closure waits in this thread's deque while the first one blocks the
                // thread: only worker 1 can take it, and the keeper's loop must be what runs it.
                let done = AtomicBool::new(false);
                let (_, by_keeper) = pool.install(|| {
                    rayon::join(
                        || wait_for("worker 1 to take the job", || done.load(Ordering::Acquire)),
                        || {
                            done.store(true, Ordering::Release);
                            (rayon::current_thread_index(), IN_KEEPER.get())
                        },
                    )
                });
                assert_eq!(by_keeper, (Some(1), true));
                assert_eq!(RUNNING.load(Ordering::Acquire), 1, "the keeper stopped while busy");
                wait_for("the idle keeper to stop", || RUNNING.load(Ordering::Acquire) == 0);
            })
            .join()
            .unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::precision::{precision, with_precision, Precision};

    /// The ranges cover the batch in order, each on a thread of its own (where there are two
    /// cores), with the caller's precision.
    #[test]
    fn batch_ranges_cover_the_batch_in_order_with_the_callers_precision() {
        let cores = shard_pools().len();
        for n in 0..12 {
            let parts = with_precision(Precision::Bf16, || {
                map_batch_ranges(n, |r| (r, precision(), std::thread::current().id()))
            });
            assert_eq!(parts.len(), cores.min(n).max(1), "n={n}");
            let covered: Vec<usize> = parts.iter().flat_map(|p| p.0.clone()).collect();
            assert_eq!(covered, (0..n).collect::<Vec<_>>());
            assert!(parts.iter().all(|p| p.1 == Precision::Bf16));
            assert!(parts.iter().all(|p| p.0.len().abs_diff(n / parts.len()) <= 1));
            let threads: std::collections::HashSet<_> = parts.iter().map(|p| p.2).collect();
            assert_eq!(threads.len(), parts.len(), "n={n}");
        }
        println!("batch ranges on {cores} threads");
    }

    /// A panic in one range reaches the caller.
    #[test]
    fn a_panic_in_a_range_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            map_batch_ranges(8, |r| {
                if r.end == 8 {
                    panic!("last range");
                }
            })
        });
        assert!(r.is_err());
    }
}
