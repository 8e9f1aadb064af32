//! Process-wide CPU runtime settings, applied once at start-up before any tensor op.
//!
//! candle 0.11 runs element-wise ops on its own barrier thread pool whose idle workers spin 25,000
//! times before parking, while GEMMs and medvlp's kernels run on rayon's pool. On a 2-core machine
//! the spinning worker steals the core the GEMM threads need: the reference training step takes
//! 7.3 s with the default and 3.5 s with a spin limit of 100 (same machine, same minute, under load).
//! We lower the limit unless the user set `CANDLE_BARRIER_POOL_SPIN_LIMIT` themselves.

/// Default spin limit of candle's barrier pool workers.
pub const BARRIER_SPIN_LIMIT: &str = "100";

/// Call at the top of `main`, before any thread is started.
pub fn configure() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Single-threaded at this point (start of main), so setting the environment is sound.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", BARRIER_SPIN_LIMIT);
    }
}
