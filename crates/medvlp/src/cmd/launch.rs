//! `medvlp launch --nproc-per-node N -- train ...`: a single-node launcher without Python. Starts
//! N copies of this binary with the variables torchrun sets (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), forwards SIGINT/SIGTERM to them, and when
//! one fails stops the others (SIGTERM, then SIGKILL after a grace period) and exits with its code.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Processes to start (one per GPU).
    #[arg(long)]
    pub nproc_per_node: usize,
    /// Rendezvous port of rank 0 (default: a free port).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// Seconds the others get to stop after one failed, before SIGKILL.
    #[arg(long, default_value_t = 30)]
    pub grace_seconds: u64,
    /// The medvlp command each process runs, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    if a.nproc_per_node == 0 {
        bail!("--nproc-per-node must be at least 1");
    }
    let port = match a.master_port {
        Some(p) => p,
        None => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
    };
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone()).context("installing signal handlers")?;
    }
    let exe = std::env::current_exe()?;
    let n = a.nproc_per_node;
    let mut children: Vec<(usize, Child)> = vec![];
    for rank in 0..n {
        let child = Command::new(&exe)
            .args(&a.command)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children, Duration::from_secs(a.grace_seconds));
                return Err(e).context(format!("starting rank {rank}"));
            }
        }
    }
    let mut failed: Option<(usize, i32)> = None;
    let mut forwarded = false;
    while !children.is_empty() {
        if term.load(Ordering::SeqCst) && !forwarded {
            for (_, c) in &children {
                signal(c, libc::SIGTERM);
            }
            forwarded = true;
        }
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = children.remove(i);
                    let code = status.code().unwrap_or(128 + 9);
                    if code != 0 && failed.is_none() {
                        failed = Some((rank, code));
                    }
                }
                None => i += 1,
            }
        }
        if failed.is_some() && !children.is_empty() {
            stop_all(&mut children, Duration::from_secs(a.grace_seconds));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some((rank, code)) = failed {
        eprintln!("medvlp launch: rank {rank} exited with {code}; the others were stopped");
        std::process::exit(code);
    }
    Ok(())
}

fn signal(c: &Child, sig: i32) {
    // SAFETY: sends a signal to a child process this launcher started and has not reaped.
    unsafe {
        libc::kill(c.id() as libc::pid_t, sig);
    }
}

/// SIGTERM to every child (they checkpoint and exit), SIGKILL to those still running after
/// `grace`; reaps them all.
fn stop_all(children: &mut Vec<(usize, Child)>, grace: Duration) {
    for (_, c) in children.iter() {
        signal(c, libc::SIGTERM);
    }
    let t0 = Instant::now();
    while !children.is_empty() {
        children.retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        if t0.elapsed() > grace {
            for (_, c) in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            children.clear();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
