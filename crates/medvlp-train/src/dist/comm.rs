//! Collectives for data-parallel training. [`Communicator`] is what the trainer and the losses
//! call; [`LocalGroup`] runs N ranks as threads of one process (each with its own model replica),
//! which is what the CPU tests use to check that N ranks train exactly like one rank with N times
//! the batch. Results are combined in rank order, so every rank gets the same bits.

use anyhow::{bail, Result};
use candle_core::Tensor;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Elementwise sum over ranks; every rank gets the result.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// The ranks' tensors concatenated along dimension 0, in rank order.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;
    /// `root`'s tensor on every rank.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    fn barrier(&self) -> Result<()>;
}

/// One process, one rank.
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

struct State {
    /// Completed exchanges.
    generation: u64,
    slots: Vec<Option<Tensor>>,
    arrived: usize,
    /// The last completed exchange's tensors, in rank order.
    result: Option<Arc<Vec<Tensor>>>,
    /// Set when a rank gave up (timeout) or was dropped mid-exchange: everyone fails fast after.
    broken: Option<String>,
}

struct Shared {
    n: usize,
    state: Mutex<State>,
    cv: Condvar,
    timeout: Duration,
}

/// N ranks of one process (threads); see [`LocalGroup::ranks`].
pub struct LocalGroup;

impl LocalGroup {
    /// Communicators for ranks `0..n`; a rank that waits longer than `timeout` for the others
    /// fails with an error saying which ranks never arrived (and the group stays failed).
    pub fn ranks(n: usize, timeout: Duration) -> Vec<LocalComm> {
        let shared = Arc::new(Shared {
            n,
            state: Mutex::new(State {
                generation: 0,
                slots: vec![None; n],
                arrived: 0,
                result: None,
                broken: None,
            }),
            cv: Condvar::new(),
            timeout,
        });
        (0..n).map(|rank| LocalComm { rank, shared: shared.clone() }).collect()
    }
}

pub struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalComm {
    /// Every rank's tensor, in rank order.
    fn exchange(&self, t: &Tensor) -> Result<Arc<Vec<Tensor>>> {
        let sh = &*self.shared;
        let mut st = sh.state.lock().map_err(|_| anyhow::anyhow!("collective: a rank panicked"))?;
        if let Some(why) = &st.broken {
            bail!("collective: the group failed earlier ({why})");
        }
        if st.slots[self.rank].is_some() {
            bail!("collective: rank {} entered the same exchange twice", self.rank);
        }
        st.slots[self.rank] = Some(t.clone());
        st.arrived += 1;
        if st.arrived == sh.n {
            let all: Vec<Tensor> =
                st.slots.iter_mut().map(|s| s.take().expect("all arrived")).collect();
            st.result = Some(Arc::new(all));
            st.arrived = 0;
            st.generation += 1;
            sh.cv.notify_all();
            return Ok(st.result.clone().expect("just set"));
        }
        let gen = st.generation;
        let (mut st, wait) = sh
            .cv
            .wait_timeout_while(st, sh.timeout, |s| s.generation == gen && s.broken.is_none())
            .map_err(|_| anyhow::anyhow!("collective: a rank panicked"))?;
        if st.generation != gen {
            // Completed (a rank may have left since, after taking part in it). The next exchange
            // cannot complete before this rank joins it, so `result` is still this one's.
            return Ok(st.result.clone().expect("completed exchange"));
        }
        if let Some(why) = &st.broken {
            bail!("collective: the group failed ({why})");
        }
        if wait.timed_out() {
            let missing: Vec<usize> = (0..sh.n).filter(|&r| st.slots[r].is_none()).collect();
            let why = format!(
                "rank(s) {missing:?} did not arrive within {:.0} s",
                sh.timeout.as_secs_f64()
            );
            st.broken = Some(why.clone());
            sh.cv.notify_all();
            bail!("collective on rank {}: {why}", self.rank);
        }
        unreachable!("woken without completion, failure or timeout")
    }
}

impl Drop for LocalComm {
    fn drop(&mut self) {
        // A rank that leaves (its thread ended or panicked): whoever waits for it, now or in a
        // later collective, fails at once instead of at the timeout.
        let mut st = match self.shared.state.lock() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        if st.broken.is_none() {
            st.broken = Some(format!("rank {} left", self.rank));
        }
        self.shared.cv.notify_all();
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.n
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let all = self.exchange(t)?;
        let mut acc = all[0].clone();
        for x in &all[1..] {
            acc = (acc + x)?;
        }
        Ok(acc)
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let all = self.exchange(t)?;
        Ok(Tensor::cat(&all, 0)?)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.shared.n {
            bail!("broadcast from rank {root} in a group of {}", self.shared.n);
        }
        Ok(self.exchange(t)?[root].clone())
    }
    fn barrier(&self) -> Result<()> {
        let z = Tensor::zeros(1, candle_core::DType::U8, &candle_core::Device::Cpu)?;
        self.exchange(&z).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn on_ranks<T: Send + 'static>(
        n: usize,
        timeout: Duration,
        f: impl Fn(LocalComm) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let hs: Vec<_> = LocalGroup::ranks(n, timeout)
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn collectives_agree_on_every_rank() {
        let out = on_ranks(4, Duration::from_secs(20), |c| {
            let r = c.rank() as f32;
            let t = Tensor::new(&[r, 10.0 * r], &Device::Cpu).unwrap();
            let mut v = vec![];
            for _ in 0..3 {
                v.push(c.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap());
                v.push(
                    c.all_gather(&t.reshape((1, 2)).unwrap())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                );
                v.push(c.broadcast(&t, 2).unwrap().to_vec1::<f32>().unwrap());
                c.barrier().unwrap();
            }
            v
        });
        for v in &out {
            assert_eq!(v[0], vec![6.0, 60.0]);
            assert_eq!(v[1], vec![0.0, 0.0, 1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
            assert_eq!(v[2], vec![2.0, 20.0]);
            assert_eq!(v[..3], v[3..6]);
        }
    }

    #[test]
    fn a_missing_rank_times_out_with_its_number_and_a_departed_one_fails_fast() {
        let t0 = std::time::Instant::now();
        let out = on_ranks(3, Duration::from_millis(300), |c| {
            if c.rank() == 2 {
                std::thread::sleep(Duration::from_millis(1500));
                return String::new();
            }
            c.barrier().unwrap_err().to_string()
        });
        assert!(out[0].contains("[2] did not arrive"), "{out:?}");
        assert!(out[1].contains("did not arrive") || out[1].contains("failed"), "{out:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        let out = on_ranks(2, Duration::from_secs(30), |c| {
            if c.rank() == 1 {
                std::thread::sleep(Duration::from_millis(200));
                drop(c); // a rank that dies
                return String::new();
            }
            c.barrier().unwrap_err().to_string()
        });
        assert!(out[0].contains("rank 1 left"), "{out:?}");
    }
}
