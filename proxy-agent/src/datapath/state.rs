use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use proxy_common::{BackendValue, RevNatValue, ServiceKey, ServiceValue};

/// The contents of the agent-owned maps, as plain ordered maps: what
/// `render` wants, what `LbMaps::read_all` finds, what `dump` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub rev_nat: BTreeMap<u32, RevNatValue>,
    /// revNAT id → `namespace/name:port`, for humans.
    pub names: BTreeMap<u32, String>,
    /// `loadBalancerSourceRanges` of the frontends flagged SOURCE_RANGES.
    pub source_ranges: BTreeSet<SourceRangeEntry>,
}

/// One allowed source network of one frontend (by revNAT id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeEntry {
    pub rev_nat_id: u32,
    /// The network address (host bits zero) and prefix length.
    pub net: Ipv4Addr,
    pub len: u8,
}

impl std::fmt::Display for SourceRangeEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

impl MapState {
    /// Entries of all maps, for capacity metrics and logs.
    pub fn len(&self) -> usize {
        self.services.len()
            + self.backends.len()
            + self.rev_nat.len()
            + self.names.len()
            + self.source_ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Master entries: one per frontend.
    pub fn masters(&self) -> impl Iterator<Item = (&ServiceKey, &ServiceValue)> {
        self.services.iter().filter(|(k, _)| k.slot == 0)
    }
}
