//! Data-parallel training: where this process sits in the job ([`env`]), the collectives
//! ([`comm`]: a trait, one process, N ranks as threads for the tests) and the all-gather with a
//! backward pass that global-batch contrastive losses need ([`gather`]), and the TCP rendezvous
//! through which rank 0 hands the others the NCCL id ([`rendezvous`]).

pub mod comm;
pub mod env;
pub mod gather;
pub mod rendezvous;

pub use comm::{Communicator, LocalComm, LocalGroup, SingleProcess};
pub use env::{DistEnv, Launcher};
pub use gather::gather_with_grad;
