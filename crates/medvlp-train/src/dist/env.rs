//! Where this process sits in a data-parallel job, read from the launcher's environment:
//! torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), else Slurm
//! (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR` / `MASTER_PORT` when set,
//! else the first host of `SLURM_JOB_NODELIST` and a port derived from `SLURM_JOB_ID`), else a
//! single process.

use anyhow::{bail, Context, Result};

/// Which launcher the variables came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    Single,
    Torchrun,
    Slurm,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub launcher: Launcher,
    pub rank: usize,
    pub world_size: usize,
    /// Rank on this node: the GPU is `cuda:local_rank`.
    pub local_rank: usize,
    /// Where rank 0 listens for the rendezvous (empty for a single process).
    pub master_addr: String,
    pub master_port: u16,
}

impl DistEnv {
    pub fn single() -> Self {
        Self {
            launcher: Launcher::Single,
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: String::new(),
            master_port: 0,
        }
    }

    /// From this process's environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From any variable source (tests pass a map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        anyhow::anyhow!("{k}={v:?} is not a non-negative whole number")
                    })
                })
                .transpose()
        };
        let port = |k: &str| -> Result<Option<u16>> {
            get(k)
                .map(|v| match v.trim().parse::<u16>() {
                    Ok(p) if p > 0 => Ok(p),
                    _ => bail!("{k}={v:?} is not a TCP port (1-65535)"),
                })
                .transpose()
        };
        let env = if let Some(world_size) = num("WORLD_SIZE")? {
            let rank =
                num("RANK")?.context("WORLD_SIZE is set but RANK is not (torchrun sets both)")?;
            let local_rank = num("LOCAL_RANK")?.unwrap_or(0);
            let (master_addr, master_port) = if world_size > 1 {
                (
                    get("MASTER_ADDR").context("WORLD_SIZE > 1 but MASTER_ADDR is not set")?,
                    port("MASTER_PORT")?.context("WORLD_SIZE > 1 but MASTER_PORT is not set")?,
                )
            } else {
                (get("MASTER_ADDR").unwrap_or_default(), port("MASTER_PORT")?.unwrap_or(0))
            };
            DistEnv {
                launcher: Launcher::Torchrun,
                rank,
                world_size,
                local_rank,
                master_addr,
                master_port,
            }
        } else if let Some(world_size) = num("SLURM_NTASKS")? {
            let rank =
                num("SLURM_PROCID")?.context("SLURM_NTASKS is set but SLURM_PROCID is not")?;
            let local_rank = num("SLURM_LOCALID")?.unwrap_or(0);
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => match get("SLURM_JOB_NODELIST").or_else(|| get("SLURM_NODELIST")) {
                    Some(list) => first_host(&list)
                        .with_context(|| format!("SLURM_JOB_NODELIST={list:?} names no host"))?,
                    None if world_size > 1 => {
                        bail!("SLURM_NTASKS > 1 but neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
                    }
                    None => String::new(),
                },
            };
            let master_port = match port("MASTER_PORT")? {
                Some(p) => p,
                // A port per job, so that two jobs sharing a node do not collide.
                None => match num("SLURM_JOB_ID")? {
                    Some(id) => 20000 + (id % 20000) as u16,
                    None => 29500,
                },
            };
            DistEnv {
                launcher: Launcher::Slurm,
                rank,
                world_size,
                local_rank,
                master_addr,
                master_port,
            }
        } else {
            DistEnv::single()
        };
        if env.world_size == 0 {
            bail!("world size 0 (WORLD_SIZE / SLURM_NTASKS must be at least 1)");
        }
        if env.rank >= env.world_size {
            let (r, w) = match env.launcher {
                Launcher::Slurm => ("SLURM_PROCID", "SLURM_NTASKS"),
                _ => ("RANK", "WORLD_SIZE"),
            };
            bail!("{r}={} is not below {w}={}", env.rank, env.world_size);
        }
        Ok(env)
    }

    /// The device of this rank: `cuda:LOCAL_RANK` for a multi-process job, else `configured`.
    pub fn device_name(&self, configured: &str) -> String {
        if self.world_size > 1 && configured.starts_with("cuda") {
            format!("cuda:{}", self.local_rank)
        } else {
            configured.to_string()
        }
    }
}

/// The first host of a Slurm host list: `gpu[03-05,9]-ib,login1` -> `gpu03-ib`.
pub fn first_host(list: &str) -> Option<String> {
    // The first item at bracket depth 0.
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let mut item = list[..end].trim().to_string();
    // Replace each bracket group by its first value (`03-05,9` -> `03`).
    while let Some(open) = item.find('[') {
        let close = open + item[open..].find(']')?;
        let first = item[open + 1..close].split([',', '-']).next()?.trim().to_string();
        if first.is_empty() {
            return None;
        }
        item.replace_range(open..=close, &first);
    }
    (!item.is_empty()).then_some(item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<DistEnv> {
        let m: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_variables() {
        let e = env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            // Slurm variables are ignored when torchrun's are present.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
        ])
        .unwrap();
        assert_eq!(
            e,
            DistEnv {
                launcher: Launcher::Torchrun,
                rank: 5,
                world_size: 16,
                local_rank: 1,
                master_addr: "10.0.0.1".into(),
                master_port: 29500
            }
        );
        assert_eq!(e.device_name("cuda"), "cuda:1");
        assert_eq!(e.device_name("cpu"), "cpu");
    }

    #[test]
    fn slurm_variables_and_host_lists() {
        let e = env(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "3"),
            ("SLURM_JOB_NODELIST", "gpu[03-05,9]-ib,login1"),
            ("SLURM_JOB_ID", "123456"),
        ])
        .unwrap();
        assert_eq!(e.launcher, Launcher::Slurm);
        assert_eq!((e.rank, e.world_size, e.local_rank), (3, 8, 3));
        assert_eq!(e.master_addr, "gpu03-ib");
        assert_eq!(e.master_port, 20000 + (123456 % 20000) as u16);
        assert_eq!(first_host("node1"), Some("node1".into()));
        assert_eq!(first_host("a[1-2],b"), Some("a1".into()));
        assert_eq!(first_host("rack[2]-n[010-012]"), Some("rack2-n010".into()));
        assert_eq!(first_host("bad[1-2"), None);
        // MASTER_ADDR / MASTER_PORT win over the node list when set.
        let e = env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_NODELIST", "n[1-2]"),
            ("MASTER_ADDR", "head"),
            ("MASTER_PORT", "4000"),
        ])
        .unwrap();
        assert_eq!((e.master_addr.as_str(), e.master_port), ("head", 4000));
    }

    #[test]
    fn single_process_and_bad_values_name_the_variable() {
        assert_eq!(env(&[]).unwrap(), DistEnv::single());
        let err = |v: &[(&str, &str)]| env(v).unwrap_err().to_string();
        assert!(err(&[("WORLD_SIZE", "two"), ("RANK", "0")]).contains("WORLD_SIZE=\"two\""));
        assert!(err(&[("WORLD_SIZE", "2")]).contains("RANK"));
        assert!(err(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1")
        ])
        .contains("RANK=2 is not below WORLD_SIZE=2"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "h")])
            .contains("MASTER_PORT"));
        assert!(err(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000")
        ])
        .contains("MASTER_PORT=\"70000\""));
        assert!(err(&[("SLURM_NTASKS", "4"), ("SLURM_PROCID", "x")]).contains("SLURM_PROCID"));
        assert!(err(&[("SLURM_NTASKS", "4"), ("SLURM_PROCID", "1")]).contains("SLURM_JOB_NODELIST"));
        assert!(err(&[("WORLD_SIZE", "0"), ("RANK", "0")]).contains("world size 0"));
    }
}
