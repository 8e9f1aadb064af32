//! Data-parallel training: where this process sits in the job ([`env`]), the collectives
//! ([`comm`]: a trait, one process, N ranks as threads for the tests) and the all-gather with a
//! backward pass that global-batch contrastive losses need ([`gather`]), and the TCP rendezvous
//! through which rank 0 hands the others the NCCL id ([`rendezvous`]).

pub mod comm;
pub mod env;
pub mod gather;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;

pub use comm::{Communicator, LocalComm, LocalGroup, SingleProcess};

use std::cell::RefCell;
use std::sync::Arc;

/// A forward pass's data-parallel context.
#[derive(Clone)]
pub struct Group {
    pub comm: Arc<dyn Communicator>,
    /// open_clip's `--local-loss`: each rank's contrastive loss has its own rows as queries
    /// against the global batch (instead of every rank computing the whole global loss).
    pub local_loss: bool,
}

thread_local! {
    static GROUP: RefCell<Option<Group>> = const { RefCell::new(None) };
}

/// Runs `f` (a forward pass) with `group` as this thread's data-parallel group: the contrastive
/// losses then gather their embeddings over it (restored afterwards, also on panic).
pub fn with_group<T>(group: Group, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Group>);
    impl Drop for Restore {
        fn drop(&mut self) {
            GROUP.with(|g| *g.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(GROUP.with(|g| g.borrow_mut().replace(group)));
    f()
}

/// This thread's group when it has more than one rank.
pub fn group() -> Option<Group> {
    GROUP.with(|g| g.borrow().clone()).filter(|g| g.comm.world_size() > 1)
}
pub use env::{DistEnv, Launcher};
pub use gather::gather_with_grad;
