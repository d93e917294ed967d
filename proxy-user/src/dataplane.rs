//! The one narrow interface between the agent and the kernel: apply a diff of
//! frontends and backends, and read back what is programmed. eBPF is the
//! first implementation; nothing above this trait assumes eBPF.

use crate::plan::{Diff, Programmed};

pub trait Dataplane {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies `diff` in its order. On error the dataplane may hold part of
    /// the diff; the caller re-reads it with [`Dataplane::programmed`].
    fn apply(&mut self, diff: &Diff) -> Result<(), Self::Error>;

    /// What the dataplane holds now (adopted after a restart).
    fn programmed(&self) -> Result<Programmed, Self::Error>;
}

/// A dataplane in memory: records every applied diff. Used by unit tests and
/// by the control-plane benchmark's "no kernel" baseline.
#[derive(Debug, Default)]
pub struct MemoryDataplane {
    pub state: Programmed,
    pub applied: Vec<Diff>,
}

impl Dataplane for MemoryDataplane {
    type Error = std::convert::Infallible;

    fn apply(&mut self, diff: &Diff) -> Result<(), Self::Error> {
        for (id, addr) in &diff.backends_added {
            self.state.backends.insert(*id, *addr);
        }
        for c in &diff.frontends_changed {
            self.state.frontends.insert(c.key, c.new.clone());
        }
        for (key, _) in &diff.frontends_removed {
            self.state.frontends.remove(key);
        }
        for (id, _) in &diff.backends_removed {
            self.state.backends.remove(id);
        }
        self.applied.push(diff.clone());
        Ok(())
    }

    fn programmed(&self) -> Result<Programmed, Self::Error> {
        Ok(self.state.clone())
    }
}
