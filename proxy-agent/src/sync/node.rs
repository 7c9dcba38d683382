//! The node-address map, written by the sync loop like the Service maps:
//! the node watch only reads the interfaces and publishes the entries it
//! wants, so one writer owns everything the kernel programs read and the
//! periodic resync repairs this map too.
use tracing::{debug, error};

use super::Syncer;
use crate::{
    maps::{LbMaps, MapsError},
    metrics::MapLabels,
    node_addrs::{self, NodeAddrEntries, NodeAddrOp},
};

/// What one sync of the node-address map did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrOutcome {
    /// Writes attempted.
    pub ops: usize,
    /// Of `ops`, those that failed (logged and counted; retried).
    pub failed: usize,
}

impl<M: LbMaps> Syncer<M> {
    /// Makes the node-address map hold `want`, writing only the entries
    /// that differ. `full` re-reads the map instead of trusting the last
    /// complete write (drift repair), as for the Service maps.
    pub fn sync_node_addrs(
        &mut self,
        want: &NodeAddrEntries,
        full: bool,
    ) -> Result<NodeAddrOutcome, MapsError> {
        let actual = match self.node_written.take() {
            Some(written) if !full => written,
            _ => self.maps.read_node_addrs()?,
        };
        let ops = node_addrs::plan(want, &actual);
        let failed = ops.iter().filter(|op| !self.write_node_addr(op)).count();
        if !ops.is_empty() && failed == 0 {
            debug!(ops = ops.len(), "node-address map written");
        }
        // After a failure the map is somewhere in between: read it next time.
        self.node_written = (failed == 0).then(|| want.clone());
        Ok(NodeAddrOutcome {
            ops: ops.len(),
            failed,
        })
    }

    /// One write; a failure is logged and counted, and the other writes
    /// still go ahead.
    fn write_node_addr(&mut self, op: &NodeAddrOp) -> bool {
        let Err(e) = self.maps.apply_node_addr(op) else {
            return true;
        };
        error!(op = ?op, error = %e, "node-address map write failed; retrying later");
        self.metrics
            .map_write_errors
            .get_or_create(&MapLabels {
                map: proxy_common::maps::NODE_ADDRS.to_string(),
            })
            .inc();
        false
    }
}
