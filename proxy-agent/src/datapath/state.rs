use std::collections::BTreeMap;

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
}

impl MapState {
    /// Entries of all maps, for capacity metrics and logs.
    pub fn len(&self) -> usize {
        self.services.len() + self.backends.len() + self.rev_nat.len() + self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Master entries: one per frontend.
    pub fn masters(&self) -> impl Iterator<Item = (&ServiceKey, &ServiceValue)> {
        self.services.iter().filter(|(k, _)| k.slot == 0)
    }
}
