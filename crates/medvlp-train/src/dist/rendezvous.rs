//! The start of a multi-process job: rank 0 listens at `MASTER_ADDR:MASTER_PORT` and hands every
//! other rank the same opaque blob (NCCL's unique id) over TCP. A rank that never arrives, or a
//! rank 0 that never answers, is an error naming the address and the waiting time, never a hang.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Protocol tag: `MVLP` + version, so that a stray connection is recognised.
const MAGIC: &[u8; 5] = b"MVLP1";
/// Largest blob accepted (NCCL's id is 128 bytes).
const MAX_BLOB: usize = 1 << 16;

/// Rank 0: accepts `world_size - 1` peers within `timeout`, sends each `blob`, and returns once
/// every rank has confirmed.
pub fn serve(
    addr: &str,
    port: u16,
    world_size: usize,
    blob: &[u8],
    timeout: Duration,
) -> Result<()> {
    if blob.len() > MAX_BLOB {
        bail!("rendezvous: blob of {} bytes is too large", blob.len());
    }
    let listener = TcpListener::bind((addr, port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .with_context(|| format!("rendezvous: rank 0 cannot listen on {addr}:{port}"))?;
    listener.set_nonblocking(true)?;
    let t0 = Instant::now();
    let mut seen = vec![false; world_size];
    seen[0] = true;
    let mut peers = vec![];
    while peers.len() + 1 < world_size {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.set_write_timeout(Some(Duration::from_secs(10)))?;
                let mut hello = [0u8; 13];
                if s.read_exact(&mut hello).is_err() || &hello[..5] != MAGIC {
                    continue; // not one of ours
                }
                let rank = u32::from_le_bytes(hello[5..9].try_into().unwrap()) as usize;
                let world = u32::from_le_bytes(hello[9..13].try_into().unwrap()) as usize;
                if world != world_size {
                    bail!("rendezvous: rank {rank} thinks the world size is {world}, rank 0 has {world_size}");
                }
                if rank == 0 || rank >= world_size || seen[rank] {
                    bail!("rendezvous: rank {rank} arrived twice or is out of range (world size {world_size})");
                }
                seen[rank] = true;
                s.write_all(MAGIC)?;
                s.write_all(&(blob.len() as u32).to_le_bytes())?;
                s.write_all(blob)?;
                peers.push((rank, s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if t0.elapsed() > timeout {
                    let missing: Vec<usize> = (0..world_size).filter(|&r| !seen[r]).collect();
                    bail!(
                        "rendezvous: rank(s) {missing:?} did not reach rank 0 at {addr}:{port} within {:.0} s",
                        timeout.as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("rendezvous: accept"),
        }
    }
    // Every peer confirms that it has the blob.
    for (rank, mut s) in peers {
        let mut ok = [0u8; 1];
        s.read_exact(&mut ok)
            .with_context(|| format!("rendezvous: rank {rank} did not confirm"))?;
    }
    Ok(())
}

/// Rank `rank` > 0: connects to rank 0 (retrying until `timeout`, since rank 0 may start later)
/// and returns its blob.
pub fn join(
    addr: &str,
    port: u16,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let t0 = Instant::now();
    let target = (addr, port)
        .to_socket_addrs()
        .with_context(|| format!("rendezvous: cannot resolve MASTER_ADDR {addr}"))?
        .next()
        .with_context(|| format!("rendezvous: MASTER_ADDR {addr} has no address"))?;
    let mut s = loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) => {
                if t0.elapsed() > timeout {
                    bail!(
                        "rendezvous: rank {rank} could not reach rank 0 at {addr}:{port} within {:.0} s ({e})",
                        timeout.as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let left = timeout.saturating_sub(t0.elapsed()).max(Duration::from_secs(1));
    s.set_read_timeout(Some(left))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(MAGIC)?;
    s.write_all(&(rank as u32).to_le_bytes())?;
    s.write_all(&(world_size as u32).to_le_bytes())?;
    let mut head = [0u8; 9];
    s.read_exact(&mut head).with_context(|| {
        format!("rendezvous: rank 0 at {addr}:{port} did not answer rank {rank}")
    })?;
    if &head[..5] != MAGIC {
        bail!("rendezvous: {addr}:{port} is not a medvlp rank 0");
    }
    let n = u32::from_le_bytes(head[5..9].try_into().unwrap()) as usize;
    if n > MAX_BLOB {
        bail!("rendezvous: rank 0 announced a blob of {n} bytes");
    }
    let mut blob = vec![0u8; n];
    s.read_exact(&mut blob).context("rendezvous: reading the blob")?;
    s.write_all(&[1])?;
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn every_rank_gets_rank_zeros_blob() {
        let port = free_port();
        let blob: Vec<u8> = (0..128u8).collect();
        let b = blob.clone();
        let t = Duration::from_secs(20);
        // Peers may start before rank 0.
        let peers: Vec<_> = (1..4)
            .map(|r| std::thread::spawn(move || join("127.0.0.1", port, r, 4, t).unwrap()))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        serve("127.0.0.1", port, 4, &b, t).unwrap();
        for p in peers {
            assert_eq!(p.join().unwrap(), blob);
        }
    }

    #[test]
    fn a_missing_peer_or_rank_zero_is_an_error_in_time() {
        let port = free_port();
        let t0 = Instant::now();
        let p = std::thread::spawn(move || join("127.0.0.1", port, 1, 3, Duration::from_secs(20)));
        let e = serve("127.0.0.1", port, 3, b"id", Duration::from_millis(800)).unwrap_err();
        assert!(e.to_string().contains("rank(s) [2] did not reach rank 0"), "{e}");
        let _ = p.join();
        let e = join("127.0.0.1", free_port(), 1, 2, Duration::from_millis(500)).unwrap_err();
        assert!(e.to_string().contains("could not reach rank 0"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
}
