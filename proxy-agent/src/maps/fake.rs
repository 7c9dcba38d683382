//! In-memory maps for tests: a plain one with capacities like the kernel's,
//! and a faulty one that fails chosen writes.

use super::{sizes::MapSizes, LbMaps, MapsError};
use crate::{
    datapath::{MapState, Op},
    node_addrs::{NodeAddrEntries, NodeAddrOp},
};

#[derive(Clone, Debug)]
pub struct FakeMaps {
    pub state: MapState,
    /// The node-address map.
    pub node_addrs: NodeAddrEntries,
    /// Max entries per map, as the kernel would enforce.
    pub capacity: u32,
    /// Max entries of the backend map alone (to fill just that one).
    pub backend_capacity: u32,
}

impl FakeMaps {
    pub fn new(capacity: u32) -> Self {
        Self {
            state: MapState::default(),
            node_addrs: NodeAddrEntries::new(),
            capacity,
            backend_capacity: capacity,
        }
    }

    fn full(&self, op: &Op) -> bool {
        let cap = self.capacity as usize;
        match op {
            Op::UpsertBackend(id, _) => {
                !self.state.backends.contains_key(id)
                    && self.state.backends.len() >= self.backend_capacity as usize
            }
            Op::UpsertService(k, _) => {
                !self.state.services.contains_key(k) && self.state.services.len() >= cap
            }
            Op::UpsertRevNat(id, _) => {
                !self.state.rev_nat.contains_key(id) && self.state.rev_nat.len() >= cap
            }
            Op::UpsertName(id, _) => {
                !self.state.names.contains_key(id) && self.state.names.len() >= cap
            }
            Op::UpsertSourceRange(r) => {
                !self.state.source_ranges.contains(r) && self.state.source_ranges.len() >= cap
            }
            _ => false,
        }
    }
}

impl LbMaps for FakeMaps {
    fn read_all(&self) -> Result<MapState, MapsError> {
        Ok(self.state.clone())
    }

    fn capacity(&self) -> MapSizes {
        MapSizes {
            services: self.capacity,
            backends: self.backend_capacity,
            rev_nat: self.capacity,
            source_ranges: self.capacity,
            ..MapSizes::default()
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), MapsError> {
        if self.full(op) {
            let capacity = match op {
                Op::UpsertBackend(..) => self.backend_capacity,
                _ => self.capacity,
            };
            return Err(MapsError::Full {
                map: op.map_name(),
                capacity,
            });
        }
        op.apply_to(&mut self.state);
        Ok(())
    }

    fn read_node_addrs(&self) -> Result<NodeAddrEntries, MapsError> {
        Ok(self.node_addrs.clone())
    }

    /// Refuses a new key beyond `capacity`, as the kernel would.
    fn apply_node_addr(&mut self, op: &NodeAddrOp) -> Result<(), MapsError> {
        match op {
            NodeAddrOp::Upsert(k, v) => {
                let full = self.node_addrs.len() >= self.capacity as usize;
                if full && !self.node_addrs.contains_key(k) {
                    return Err(MapsError::Full {
                        map: proxy_common::maps::NODE_ADDRS,
                        capacity: self.capacity,
                    });
                }
                self.node_addrs.insert(*k, *v);
            }
            NodeAddrOp::Delete(k) => {
                self.node_addrs.remove(k);
            }
        }
        Ok(())
    }
}

/// Fails every op for which `fail(index, op)` is true (index counts all ops
/// ever applied), otherwise behaves like [`FakeMaps`].
pub struct FaultyMaps<F: FnMut(usize, &Op) -> bool> {
    pub inner: FakeMaps,
    pub fail: F,
    pub count: usize,
}

impl<F: FnMut(usize, &Op) -> bool> FaultyMaps<F> {
    pub fn new(inner: FakeMaps, fail: F) -> Self {
        Self {
            inner,
            fail,
            count: 0,
        }
    }
}

impl<F: FnMut(usize, &Op) -> bool> LbMaps for FaultyMaps<F> {
    fn read_all(&self) -> Result<MapState, MapsError> {
        self.inner.read_all()
    }

    fn capacity(&self) -> MapSizes {
        self.inner.capacity()
    }

    fn apply(&mut self, op: &Op) -> Result<(), MapsError> {
        let i = self.count;
        self.count += 1;
        if (self.fail)(i, op) {
            return Err(MapsError::Injected {
                op: format!("{op:?}"),
            });
        }
        self.inner.apply(op)
    }

    fn read_node_addrs(&self) -> Result<NodeAddrEntries, MapsError> {
        self.inner.read_node_addrs()
    }

    fn apply_node_addr(&mut self, op: &NodeAddrOp) -> Result<(), MapsError> {
        self.inner.apply_node_addr(op)
    }
}
