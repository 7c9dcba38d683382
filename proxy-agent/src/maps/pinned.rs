//! The real maps, opened from their bpffs pins. The agent and `bpfproxy
//! dump` both use this, so dump shows exactly what the kernel reads.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray,
};
use proxy_common::{
    counters, maps as names, AffinityKey, AffinityValue, BackendValue, NodeAddrValue, RevNatValue,
    ServiceKey, ServiceName, ServiceStats, ServiceValue, SourceRange,
};

use super::{
    sizes::{self, MapSizes},
    LbMaps, MapsError,
};
use crate::{
    datapath::{MapState, Op, SourceRangeEntry},
    node_addrs::{NodeAddrEntries, NodeAddrOp},
};

/// errno of a full hash map on update.
const E2BIG: i32 = 7;

pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, BackendValue>,
    rev_nat: HashMap<MapData, u32, RevNatValue>,
    names: HashMap<MapData, u32, ServiceName>,
    counters: PerCpuArray<MapData, u64>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    source_ranges: LpmTrie<MapData, SourceRange, u8>,
    /// Traffic counters by frontend id: zeroed when the id is freed, so a
    /// later frontend with the id starts from zero.
    service_stats: Array<MapData, ServiceStats>,
    /// This node's addresses: where NodePorts answer, what SNAT uses.
    node_addrs: HashMap<MapData, u32, NodeAddrValue>,
    /// The kernel's sizes of these maps.
    sizes: MapSizes,
}

/// Opens the map pinned as `name` in `dir` as a `T`.
pub(crate) fn open<T: TryFrom<Map, Error = MapError>>(
    dir: &Path,
    name: &str,
) -> Result<T, MapsError> {
    let path = dir.join(name);
    let wrap = |source| MapsError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(wrap)?;
    let map = Map::from_map_data(data).map_err(wrap)?;
    T::try_from(map).map_err(wrap)
}

/// Makes the pinned hash map `name` in `dir` hold exactly `want`: new and
/// changed entries first, then stale ones removed, so a reader never misses
/// an entry that stays (the device map, a small map the node watch rewrites
/// whole, and test harnesses).
pub(crate) fn sync_hash<K, V>(
    dir: &Path,
    name: &'static str,
    want: &BTreeMap<K, V>,
) -> Result<(), MapsError>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    let mut map: HashMap<MapData, K, V> = open(dir, name)?;
    let write = |source| MapsError::Write { map: name, source };
    for (k, v) in want {
        map.insert(k, v, 0).map_err(write)?;
    }
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(k))
        .collect();
    for k in stale {
        map.remove(&k).map_err(write)?;
    }
    Ok(())
}

/// The entries of the hash map or LRU `map`, reading at most `limit`
/// keys: an LRU churning under the walk restarts the kernel's key
/// iteration, and this bound ends the walk anyway.
pub(crate) fn bounded_read<K, V>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    limit: usize,
) -> Result<BTreeMap<K, V>, MapsError>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    Ok(bounded_walk(map, name, limit)?.0)
}

/// [`bounded_read`], and whether the walk reached the end of the map
/// (false when the bound cut it).
pub(crate) fn bounded_walk<K, V>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    limit: usize,
) -> Result<(BTreeMap<K, V>, bool), MapsError>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    let mut out = BTreeMap::new();
    let mut steps = 0;
    for item in map.iter() {
        steps += 1;
        if steps > limit {
            return Ok((out, false));
        }
        match item {
            Ok((k, v)) => {
                out.insert(k, v);
            }
            // Deleted by the kernel between two steps of the walk.
            Err(MapError::KeyNotFound) => continue,
            Err(source) => return Err(MapsError::Read { map: name, source }),
        }
    }
    Ok((out, true))
}

/// The entries of the hash map or LRU pinned as `name` in `dir`, the walk
/// bounded by [`walk_limit`].
pub(crate) fn read_pinned_bounded<K, V>(
    dir: &Path,
    name: &'static str,
) -> Result<BTreeMap<K, V>, MapsError>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    let map: HashMap<MapData, K, V> = open(dir, name)?;
    bounded_read(&map, name, walk_limit(dir, name))
}

/// Twice the capacity of the map pinned as `name` in `dir`: the bound of
/// one walk ([`names::CONNTRACK_MAX`] twice if the pin cannot be read).
pub(crate) fn walk_limit(dir: &Path, name: &str) -> usize {
    let capacity = aya::maps::MapInfo::from_pin(dir.join(name))
        .map(|i| i.max_entries())
        .unwrap_or(names::CONNTRACK_MAX);
    capacity as usize * 2
}

/// The LPM trie key of a source range.
fn range_key(r: &SourceRangeEntry) -> Key<SourceRange> {
    // Bounded by the model: a prefix length is at most 32.
    let rev = u16::try_from(r.rev_nat_id).unwrap_or(u16::MAX);
    Key::new(SourceRange::prefix_len(r.len), SourceRange::new(rev, r.net))
}

impl PinnedMaps {
    /// The allowed source networks of every frontend.
    fn read_source_ranges(&self) -> Result<BTreeSet<SourceRangeEntry>, MapsError> {
        let mut out = BTreeSet::new();
        for key in self.source_ranges.keys() {
            let key = key.map_err(|source| MapsError::Read {
                map: names::SOURCE_RANGES,
                source,
            })?;
            let data = key.data();
            out.insert(SourceRangeEntry {
                rev_nat_id: data.rev_nat_id(),
                net: data.ip(),
                len: key.prefix_len().saturating_sub(32) as u8,
            });
        }
        Ok(out)
    }

    /// Opens the maps pinned in `dir` (the versioned pin directory).
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            sizes: sizes::from_kernel(&sizes::read_pinned_available(dir)),
            services: open(dir, names::SERVICES)?,
            backends: open(dir, names::BACKENDS)?,
            rev_nat: open(dir, names::REV_NAT)?,
            names: open(dir, names::SERVICE_NAMES)?,
            counters: open(dir, names::COUNTERS)?,
            affinity: open(dir, names::AFFINITY)?,
            source_ranges: open(dir, names::SOURCE_RANGES)?,
            service_stats: open(dir, names::SERVICE_STATS)?,
            node_addrs: open(dir, names::NODE_ADDRS)?,
        })
    }

    /// The backend in slot `slot` of a frontend, as the kernel would find it
    /// (three lookups; for benchmarks and debugging without a full dump).
    pub fn slot_backend(&self, key: &ServiceKey) -> Option<BackendValue> {
        let master = self.services.get(&key.master(), 0).ok()?;
        if key.slot == 0 || key.slot > master.count {
            return None;
        }
        let slot = self.services.get(key, 0).ok()?;
        self.backends.get(&slot.backend_id, 0).ok()
    }

    /// Datapath counters summed over CPUs, by reason name.
    pub fn read_counters(&self) -> Result<BTreeMap<String, u64>, MapsError> {
        let mut out = BTreeMap::new();
        for (i, name) in counters::NAMES.iter().enumerate() {
            if name.starts_with("unused") {
                continue;
            }
            let values = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|source| MapsError::Read {
                    map: names::COUNTERS,
                    source,
                })?;
            out.insert(name.to_string(), values.iter().sum());
        }
        Ok(out)
    }
}

fn read<K: aya::Pod + Ord, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<BTreeMap<K, V>, MapsError> {
    map.iter()
        .collect::<Result<BTreeMap<K, V>, MapError>>()
        .map_err(|source| MapsError::Read { map: name, source })
}

/// Maps an insert error, telling a full map (of `sizes`) apart.
fn write_err(map: &'static str, source: MapError, sizes: &MapSizes) -> MapsError {
    if let MapError::SyscallError(e) = &source {
        if e.io_error.raw_os_error() == Some(E2BIG) {
            return MapsError::Full {
                map,
                capacity: sizes.of(map).unwrap_or_default(),
            };
        }
    }
    MapsError::Write { map, source }
}

/// Whether a failed delete only says the key was not there: aya reports
/// that as the syscall's ENOENT rather than as `KeyNotFound`.
pub fn already_gone(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Removes `key`; a key that is already gone is success.
pub fn remove<T: std::borrow::BorrowMut<MapData>, K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<T, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), MapsError> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(e) if already_gone(&e) => Ok(()),
        Err(source) => Err(MapsError::Write { map: name, source }),
    }
}

impl LbMaps for PinnedMaps {
    fn read_all(&self) -> Result<MapState, MapsError> {
        Ok(MapState {
            services: read(&self.services, names::SERVICES)?,
            backends: read(&self.backends, names::BACKENDS)?,
            rev_nat: read(&self.rev_nat, names::REV_NAT)?,
            names: read(&self.names, names::SERVICE_NAMES)?
                .into_iter()
                .map(|(id, n)| (id, n.as_str().to_string()))
                .collect(),
            source_ranges: self.read_source_ranges()?,
        })
    }

    fn read_node_addrs(&self) -> Result<NodeAddrEntries, MapsError> {
        read(&self.node_addrs, names::NODE_ADDRS)
    }

    fn apply_node_addr(&mut self, op: &NodeAddrOp) -> Result<(), MapsError> {
        let name = names::NODE_ADDRS;
        match op {
            NodeAddrOp::Upsert(k, v) => self
                .node_addrs
                .insert(k, v, 0)
                .map_err(|e| write_err(name, e, &self.sizes)),
            NodeAddrOp::Delete(k) => remove(&mut self.node_addrs, k, name),
        }
    }

    fn prune_affinity(&mut self, keep: &dyn Fn(u32, u32) -> bool) -> Result<usize, MapsError> {
        let stale: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| !keep(k.rev_nat_id, v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            remove(&mut self.affinity, k, names::AFFINITY)?;
        }
        Ok(stale.len())
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        self.read_counters().unwrap_or_default()
    }

    fn capacity(&self) -> MapSizes {
        self.sizes
    }

    fn apply(&mut self, op: &Op) -> Result<(), MapsError> {
        let name = op.map_name();
        match op {
            Op::UpsertBackend(id, v) => self.backends.insert(id, v, 0),
            Op::UpsertService(k, v) => self.services.insert(k, v, 0),
            Op::UpsertRevNat(id, v) => self.rev_nat.insert(id, v, 0),
            Op::UpsertName(id, n) => self.names.insert(id, ServiceName::new(n), 0),
            Op::DeleteService(k) => return remove(&mut self.services, k, name),
            Op::DeleteBackend(id) => return remove(&mut self.backends, id, name),
            Op::DeleteRevNat(id) => {
                self.service_stats
                    .set(*id, ServiceStats::default(), 0)
                    .map_err(|source| MapsError::Write {
                        map: names::SERVICE_STATS,
                        source,
                    })?;
                return remove(&mut self.rev_nat, id, name);
            }
            Op::DeleteName(id) => return remove(&mut self.names, id, name),
            Op::UpsertSourceRange(r) => self.source_ranges.insert(&range_key(r), 1, 0),
            Op::DeleteSourceRange(r) => {
                return match self.source_ranges.remove(&range_key(r)) {
                    Ok(()) => Ok(()),
                    Err(e) if already_gone(&e) => Ok(()),
                    Err(e) => Err(write_err(name, e, &self.sizes)),
                }
            }
        }
        .map_err(|e| write_err(name, e, &self.sizes))
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use aya::sys::SyscallError;

    use super::*;

    fn syscall(errno: i32) -> MapError {
        MapError::SyscallError(SyscallError {
            call: "bpf_map_delete_elem",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn a_delete_of_a_missing_key_is_gone_and_other_failures_are_not() {
        assert!(already_gone(&MapError::KeyNotFound));
        assert!(already_gone(&syscall(libc::ENOENT)));
        assert!(!already_gone(&syscall(libc::EPERM)));
        assert!(!already_gone(&syscall(libc::E2BIG)));
    }
}
