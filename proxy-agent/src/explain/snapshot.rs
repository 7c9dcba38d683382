//! What the kernel holds that decides a connection, read from the pins in
//! one go: the answer is about the running datapath, not a model of it.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::maps::{HashMap, MapData};
use proxy_common::{maps as names, AffinityKey, AffinityValue, CtKey, NodeAddrValue};

use crate::{
    ct_sweeper::{CtEntries, PinnedCt},
    datapath::{ct_gc::monotonic_now_s, MapState},
    loader::pin_dir,
    maps::{
        pinned::{self, PinnedMaps},
        LbMaps, MapsError,
    },
};

/// The maps that take part in one decision, and the clock their
/// timestamps count on.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Frontends, slots, backends, names, source ranges.
    pub maps: MapState,
    /// Node addresses (network byte order) → flags; key 0 holds the SNAT
    /// address of externalIPs and LB IPs.
    pub node_addrs: BTreeMap<u32, NodeAddrValue>,
    pub affinity: BTreeMap<AffinityKey, AffinityValue>,
    /// Both conntrack tables merged (the confirmed entry wins).
    pub conntrack: CtEntries,
    /// The keys only the new-flow table holds.
    pub unconfirmed: BTreeSet<CtKey>,
    /// Seconds of the monotonic clock, as the programs stamp entries.
    pub now_s: u32,
}

/// Reads everything from the maps pinned under `bpffs`.
pub fn read(bpffs: &Path) -> Result<Snapshot, MapsError> {
    let dir = pin_dir(bpffs);
    let maps = PinnedMaps::open(&dir)?.read_all()?;
    let node: HashMap<MapData, u32, NodeAddrValue> = pinned::open(&dir, names::NODE_ADDRS)?;
    let node_addrs =
        pinned::bounded_read(&node, names::NODE_ADDRS, 2 * names::NODE_ADDRS_MAX as usize)?;
    let aff: HashMap<MapData, AffinityKey, AffinityValue> = pinned::open(&dir, names::AFFINITY)?;
    let limit = pinned::walk_limit(&dir, names::AFFINITY);
    let affinity = pinned::bounded_read(&aff, names::AFFINITY, limit)?;
    let (conntrack, unconfirmed) = PinnedCt::open(&dir)?.read()?;
    Ok(Snapshot {
        maps,
        node_addrs,
        affinity,
        conntrack,
        unconfirmed,
        now_s: monotonic_now_s(),
    })
}
