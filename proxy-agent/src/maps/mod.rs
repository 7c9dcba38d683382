//! The one seam between the pure pipeline and the kernel: everything above
//! [`LbMaps`] is testable without root; [`pinned::PinnedMaps`] is the thin
//! aya layer.
mod fake;
pub mod pinned;
pub mod sizes;

pub use fake::{FakeMaps, FaultyMaps};

use crate::{
    datapath::{MapState, Op},
    node_addrs::{NodeAddrEntries, NodeAddrOp},
};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {map} is full ({capacity} entries)")]
    Full { map: &'static str, capacity: u32 },
    #[error("writing map {map} failed")]
    Write {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading map {map} failed")]
    Read {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("opening pinned map {path} failed")]
    Open {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("injected failure on {op}")]
    Injected { op: String },
}

/// Read and write access to the agent-owned maps.
pub trait LbMaps {
    /// Everything the maps hold now.
    fn read_all(&self) -> Result<MapState, MapsError>;
    /// One write. Deleting a missing key is success (idempotence).
    fn apply(&mut self, op: &Op) -> Result<(), MapsError>;
    /// What the node-address map holds (NodePort destinations, SNAT
    /// sources): kept apart from [`MapState`], as the node's interfaces,
    /// not the Services, decide it.
    fn read_node_addrs(&self) -> Result<NodeAddrEntries, MapsError>;
    /// One write to the node-address map. Deleting a missing key is success.
    fn apply_node_addr(&mut self, op: &NodeAddrOp) -> Result<(), MapsError>;
    /// Deletes session-affinity entries whose (revNAT id, backend id) pair
    /// `keep` rejects: the backend left that frontend. Returns how many.
    fn prune_affinity(&mut self, keep: &dyn Fn(u32, u32) -> bool) -> Result<usize, MapsError> {
        let _ = keep;
        Ok(0)
    }
    /// How many entries each map holds at most: the planner leaves out what
    /// does not fit instead of writing half of it.
    fn capacity(&self) -> sizes::MapSizes {
        sizes::MapSizes::default()
    }
    /// Datapath counters by reason, where the maps have them.
    fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        Default::default()
    }
}
