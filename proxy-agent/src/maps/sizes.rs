//! How many entries each BPF map holds: `bpfproxy run --map-size-*`, applied
//! when the object is loaded, and what the kernel's maps really have (a map
//! pinned by an earlier run keeps the size it was created with).
use std::{collections::BTreeMap, path::Path};

use aya::maps::{MapError, MapInfo};
use proxy_common::maps as names;

/// Entries per map. The defaults are the sizes compiled into the object.
/// The per-CPU counter array is not here: its size is its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct MapSizes {
    /// Entries of the frontend map (bpfp_svc): one per frontend plus one per
    /// backend slot of each frontend (a ClusterIP port with 3 endpoints
    /// takes 4). Frontends that do not fit are left out whole, logged and
    /// counted (`bpfproxy_skipped_objects_total{reason="map_full"}`).
    #[arg(id = "map_size_services", long = "map-size-services", default_value_t = names::SERVICES_MAX, value_parser = size_parser())]
    pub services: u32,
    /// Entries of the backend map (bpfp_be): distinct endpoint
    /// address+port+protocol.
    #[arg(id = "map_size_backends", long = "map-size-backends", default_value_t = names::BACKENDS_MAX, value_parser = size_parser())]
    pub backends: u32,
    /// Entries of the reverse-NAT and service-name maps (bpfp_rnat,
    /// bpfp_names): one per frontend.
    #[arg(id = "map_size_rev_nat", long = "map-size-rev-nat", default_value_t = names::REV_NAT_MAX, value_parser = size_parser())]
    pub rev_nat: u32,
    /// Entries of the socket reverse-NAT LRU (bpfp_sknat): one per
    /// translated UDP socket (and connected socket asking getpeername).
    #[arg(id = "map_size_sock_rev_nat", long = "map-size-sock-rev-nat", default_value_t = names::SOCK_REV_NAT_MAX, value_parser = size_parser())]
    pub sock_rev_nat: u32,
    /// Entries of the ClientIP session-affinity LRU (bpfp_aff).
    #[arg(id = "map_size_affinity", long = "map-size-affinity", default_value_t = names::AFFINITY_MAX, value_parser = size_parser())]
    pub affinity: u32,
    /// Entries of the TC datapath's conntrack LRU (bpfp_ct): two per flow.
    #[arg(id = "map_size_conntrack", long = "map-size-conntrack", default_value_t = names::CONNTRACK_MAX, value_parser = size_parser())]
    pub conntrack: u32,
    /// Entries of the new-flow conntrack LRU (bpfp_ctnew): two per flow
    /// until it is confirmed; a flood of new flows churns only this one.
    /// Each CPU has its own LRU list and an equal share of the entries.
    /// [default: 4,096 per possible CPU]
    #[arg(id = "map_size_conntrack_new", long = "map-size-conntrack-new", value_parser = size_parser())]
    pub conntrack_new_flag: Option<u32>,
    /// The new-flow table's size as used: the flag's, else
    /// [`names::CT_NEW_PER_CPU`] per CPU once [`MapSizes::for_cpus`] ran.
    #[arg(skip = names::CT_NEW_MAX)]
    pub conntrack_new: u32,
    /// Entries of the node-address map (bpfp_node).
    #[arg(id = "map_size_node_addrs", long = "map-size-node-addrs", default_value_t = names::NODE_ADDRS_MAX, value_parser = size_parser())]
    pub node_addrs: u32,
    /// Entries of the device map (bpfp_dev).
    #[arg(id = "map_size_devices", long = "map-size-devices", default_value_t = names::DEVICES_MAX, value_parser = size_parser())]
    pub devices: u32,
    /// Entries of the loadBalancerSourceRanges trie (bpfp_lbsrc).
    #[arg(id = "map_size_source_ranges", long = "map-size-source-ranges", default_value_t = names::SOURCE_RANGES_MAX, value_parser = size_parser())]
    pub source_ranges: u32,
}

/// A map of 0 entries cannot be created: the kernel says EINVAL at load,
/// the flag says it at once.
fn size_parser() -> clap::builder::RangedU64ValueParser<u32> {
    clap::builder::RangedU64ValueParser::<u32>::new().range(1..=u64::from(u32::MAX))
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: names::SERVICES_MAX,
            backends: names::BACKENDS_MAX,
            rev_nat: names::REV_NAT_MAX,
            sock_rev_nat: names::SOCK_REV_NAT_MAX,
            affinity: names::AFFINITY_MAX,
            conntrack: names::CONNTRACK_MAX,
            conntrack_new_flag: None,
            conntrack_new: names::CT_NEW_MAX,
            node_addrs: names::NODE_ADDRS_MAX,
            devices: names::DEVICES_MAX,
            source_ranges: names::SOURCE_RANGES_MAX,
        }
    }
}

/// Bytes of one entry (key + value) of `map`; 0 for unknown names.
pub fn entry_bytes(map: &str) -> usize {
    use core::mem::size_of;
    use proxy_common::*;
    match map {
        names::SERVICES => size_of::<ServiceKey>() + size_of::<ServiceValue>(),
        names::BACKENDS => 4 + size_of::<BackendValue>(),
        names::REV_NAT => 4 + size_of::<RevNatValue>(),
        names::SERVICE_NAMES => 4 + size_of::<ServiceName>(),
        names::SOCK_REV_NAT => size_of::<SockRevNatKey>() + size_of::<SockRevNatValue>(),
        names::AFFINITY => size_of::<AffinityKey>() + size_of::<AffinityValue>(),
        names::CONNTRACK | names::CT_NEW => size_of::<CtKey>() + size_of::<CtValue>(),
        names::NODE_ADDRS => 4 + size_of::<NodeAddrValue>(),
        names::DEVICES => 4 + size_of::<DeviceValue>(),
        names::SOURCE_RANGES => size_of::<SourceRange>() + 4 + 1,
        names::SERVICE_STATS => 4 + size_of::<ServiceStats>(),
        names::BACKEND_STATS => size_of::<BackendStatKey>() + 8,
        _ => 0,
    }
}

/// The flag that sets a map's size, for messages.
pub fn flag_of(map: &str) -> Option<&'static str> {
    Some(match map {
        names::SERVICES | names::BACKEND_STATS => "--map-size-services",
        names::BACKENDS => "--map-size-backends",
        names::REV_NAT | names::SERVICE_NAMES => "--map-size-rev-nat",
        names::SOCK_REV_NAT => "--map-size-sock-rev-nat",
        names::AFFINITY => "--map-size-affinity",
        names::CONNTRACK => "--map-size-conntrack",
        names::CT_NEW => "--map-size-conntrack-new",
        names::NODE_ADDRS => "--map-size-node-addrs",
        names::DEVICES => "--map-size-devices",
        names::SOURCE_RANGES => "--map-size-source-ranges",
        _ => return None,
    })
}

impl MapSizes {
    /// Every sized map with its size (the names map shares the revNAT
    /// size: both are keyed by frontend id; the per-backend counters the
    /// service map's: one per backend slot).
    pub fn by_map(&self) -> [(&'static str, u32); 12] {
        [
            (names::SERVICES, self.services),
            (names::BACKEND_STATS, self.services),
            (names::BACKENDS, self.backends),
            (names::REV_NAT, self.rev_nat),
            (names::SERVICE_NAMES, self.rev_nat),
            (names::SOCK_REV_NAT, self.sock_rev_nat),
            (names::AFFINITY, self.affinity),
            (names::CONNTRACK, self.conntrack),
            (names::CT_NEW, self.conntrack_new),
            (names::NODE_ADDRS, self.node_addrs),
            (names::DEVICES, self.devices),
            (names::SOURCE_RANGES, self.source_ranges),
        ]
    }

    /// The size of `map`; None for the counter array and unknown names.
    pub fn of(&self, map: &str) -> Option<u32> {
        self.by_map()
            .into_iter()
            .find(|(name, _)| *name == map)
            .map(|(_, n)| n)
    }

    /// Sets the size of `map` (the names map follows the revNAT map, the
    /// smaller of the two winning: both must hold every frontend id).
    pub fn set(&mut self, map: &str, n: u32) {
        match map {
            names::SERVICES => self.services = n,
            names::BACKENDS => self.backends = n,
            names::REV_NAT => self.rev_nat = self.rev_nat.min(n),
            names::SERVICE_NAMES => self.rev_nat = self.rev_nat.min(n),
            names::SOCK_REV_NAT => self.sock_rev_nat = n,
            names::AFFINITY => self.affinity = n,
            names::CONNTRACK => self.conntrack = n,
            names::CT_NEW => self.conntrack_new = n,
            names::NODE_ADDRS => self.node_addrs = n,
            names::DEVICES => self.devices = n,
            names::SOURCE_RANGES => self.source_ranges = n,
            _ => {}
        }
    }
}

/// Free entries the kernel's LRU hash keeps per CPU and evicts to refill
/// at once (its LOCAL_FREE_TARGET).
const LRU_BATCH_PER_CPU: u32 = 128;

/// The smallest LRU map that does not evict in bulk: each CPU takes up to
/// [`LRU_BATCH_PER_CPU`] entries' room at a time, evicting as many when
/// the map is full, so a map not several times that per CPU drops young
/// entries (a UDP flow's reply entry before the reply) even without load.
pub fn lru_floor(cpus: u32) -> u32 {
    cpus.max(1).saturating_mul(4 * LRU_BATCH_PER_CPU)
}

/// One LRU size raised to the floor: (map, flag's size, size used).
pub type Raised = (&'static str, u32, u32);

impl MapSizes {
    /// Raises the LRU maps (socket revNAT, affinity, both conntrack
    /// tables) to [`lru_floor`] for `cpus` CPUs; says which it raised.
    pub fn with_lru_floor(mut self, cpus: u32) -> (Self, Vec<Raised>) {
        let floor = lru_floor(cpus);
        let mut raised = Vec::new();
        for (map, n) in [
            (names::SOCK_REV_NAT, &mut self.sock_rev_nat),
            (names::AFFINITY, &mut self.affinity),
            (names::CONNTRACK, &mut self.conntrack),
            (names::CT_NEW, &mut self.conntrack_new),
        ] {
            if *n < floor {
                raised.push((map, *n, floor));
                *n = floor;
            }
        }
        (self, raised)
    }

    /// The sizes for a machine of `cpus` possible CPUs: the new-flow
    /// table's from its flag, else [`names::CT_NEW_PER_CPU`] per CPU (its
    /// LRU lists are per CPU, so what one CPU can hold stays the same on
    /// every node); then [`MapSizes::with_lru_floor`].
    pub fn for_cpus(mut self, cpus: u32) -> (Self, Vec<Raised>) {
        self.conntrack_new = self
            .conntrack_new_flag
            .unwrap_or_else(|| cpus.max(1).saturating_mul(names::CT_NEW_PER_CPU));
        self.with_lru_floor(cpus)
    }

    /// [`MapSizes::for_cpus`] for this machine's possible CPUs (what the
    /// kernel's per-CPU LRU lists are sized by), each raise logged.
    pub fn for_this_machine(self) -> Self {
        let cpus = aya::util::nr_cpus().map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
        let (sizes, raised) = self.for_cpus(cpus);
        for (map, from, to) in raised {
            tracing::warn!(
                map,
                from,
                to,
                cpus,
                "LRU map too small for this many CPUs (the kernel evicts up to 128 entries per CPU at once): raised"
            );
        }
        sizes
    }
}

/// A map whose pinned size differs from the configured one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeMismatch {
    pub map: &'static str,
    pub pinned: u32,
    pub configured: u32,
}

/// The kernel's max_entries of every map pinned in `dir`, by name.
pub fn read_pinned(dir: &Path) -> Result<BTreeMap<&'static str, u32>, MapError> {
    names::ALL
        .iter()
        .map(|name| Ok((*name, MapInfo::from_pin(dir.join(name))?.max_entries())))
        .collect()
}

/// The kernel's max_entries of the maps pinned in `dir` that can be read
/// (for readers that must not fail on one missing pin).
pub fn read_pinned_available(dir: &Path) -> BTreeMap<&'static str, u32> {
    names::ALL
        .iter()
        .filter_map(|name| {
            let info = MapInfo::from_pin(dir.join(name)).ok()?;
            Some((*name, info.max_entries()))
        })
        .collect()
}

/// The sizes of maps as the kernel has them (`pinned`, from
/// [`read_pinned`]); the defaults for maps missing from it.
pub fn from_kernel(pinned: &BTreeMap<&'static str, u32>) -> MapSizes {
    effective(&MapSizes::default(), pinned).0
}

/// What the maps really hold, given `configured` and the kernel's sizes
/// `pinned`; and where they differ.
pub fn effective(
    configured: &MapSizes,
    pinned: &BTreeMap<&'static str, u32>,
) -> (MapSizes, Vec<SizeMismatch>) {
    let mut out = *configured;
    // Start the revNAT size from the top so `set` takes the smaller of
    // the two maps keyed by frontend id.
    out.rev_nat = u32::MAX;
    let mut mismatches = Vec::new();
    for (map, want) in configured.by_map() {
        let Some(&have) = pinned.get(map) else {
            out.set(map, want);
            continue;
        };
        out.set(map, have);
        if have != want {
            mismatches.push(SizeMismatch {
                map,
                pinned: have,
                configured: want,
            });
        }
    }
    (out, mismatches)
}

#[cfg(test)]
mod tests {

    #[test]
    fn small_lru_maps_are_raised_to_four_refill_batches_per_cpu() {
        let flags = MapSizes {
            conntrack_new: 256,
            affinity: 100_000,
            ..MapSizes::default()
        };
        let (sizes, raised) = flags.with_lru_floor(2);
        assert_eq!(lru_floor(2), 1024);
        assert_eq!(sizes.conntrack_new, 1024);
        assert_eq!(sizes.affinity, 100_000, "above the floor: as given");
        assert_eq!(raised, vec![(names::CT_NEW, 256, 1024)]);
        // 64 CPUs: every default, the new-flow table's share per CPU
        // included, is above the floor.
        let (big, raised) = MapSizes::default().for_cpus(64);
        assert!(raised.is_empty(), "{raised:?}");
        assert_eq!(
            big,
            MapSizes {
                conntrack_new: 64 * names::CT_NEW_PER_CPU,
                ..MapSizes::default()
            }
        );
        assert_eq!(lru_floor(0), 512, "an unreadable CPU count counts as one");
    }

    #[test]
    fn the_new_flow_table_defaults_to_a_share_per_cpu_unless_the_flag_sets_it() {
        let share = names::CT_NEW_PER_CPU;
        let (two, raised) = MapSizes::default().for_cpus(2);
        assert_eq!(two.conntrack_new, 2 * share);
        assert_eq!(MapSizes::default().conntrack_new, share, "one CPU's");
        assert!(raised.is_empty(), "{raised:?}");
        assert_eq!(MapSizes::default().for_cpus(64).0.conntrack_new, 64 * share);
        assert_eq!(MapSizes::default().for_cpus(0).0.conntrack_new, share);
        let flag = MapSizes {
            conntrack_new_flag: Some(100_000),
            ..MapSizes::default()
        };
        assert_eq!(flag.for_cpus(64).0.conntrack_new, 100_000, "the flag wins");
        let (small, raised) = MapSizes {
            conntrack_new_flag: Some(256),
            ..MapSizes::default()
        }
        .for_cpus(2);
        assert_eq!(
            small.conntrack_new, 1024,
            "and is still raised to the floor"
        );
        assert_eq!(raised, vec![(names::CT_NEW, 256, 1024)]);
    }

    use super::*;

    #[test]
    fn pinned_sizes_win_and_differences_are_reported() {
        let configured = MapSizes {
            services: 64,
            ..MapSizes::default()
        };
        let mut pinned: BTreeMap<&'static str, u32> = configured.by_map().into_iter().collect();
        pinned.insert(names::SERVICES, 128);
        pinned.insert(names::SERVICE_NAMES, 10);
        let (eff, diff) = effective(&configured, &pinned);
        assert_eq!(eff.services, 128, "the pinned map stays as it is");
        assert_eq!(eff.rev_nat, 10, "the smaller of revNAT and names");
        assert_eq!(
            diff,
            vec![
                SizeMismatch {
                    map: names::SERVICES,
                    pinned: 128,
                    configured: 64
                },
                SizeMismatch {
                    map: names::SERVICE_NAMES,
                    pinned: 10,
                    configured: names::REV_NAT_MAX
                }
            ]
        );
        let (same, none) = effective(&configured, &configured.by_map().into_iter().collect());
        assert_eq!(same, configured);
        assert!(none.is_empty());
    }

    #[test]
    fn the_flags_parse_into_the_sizes_and_zero_is_refused() {
        use clap::Parser;
        let run = |extra: &[&str]| {
            let argv = ["bpfproxy", "run", "--devices", "none"];
            crate::cli::Cli::try_parse_from(argv.iter().chain(extra)).map(|c| match c.command {
                crate::cli::Command::Run(args) => args.map_sizes,
                _ => MapSizes::default(),
            })
        };
        assert_eq!(run(&[]).expect("defaults"), MapSizes::default());
        let sizes =
            run(&["--map-size-services", "64", "--map-size-conntrack=1024"]).expect("sizes");
        assert_eq!((sizes.services, sizes.conntrack), (64, 1024));
        let ct_new = run(&["--map-size-conntrack-new", "300000"]).expect("ct new");
        assert_eq!(ct_new.conntrack_new_flag, Some(300_000));
        assert_eq!(ct_new.for_cpus(2).0.conntrack_new, 300_000);
        assert_eq!(sizes.backends, names::BACKENDS_MAX);
        assert!(run(&["--map-size-devices", "0"]).is_err());
    }

    #[test]
    fn every_sized_map_has_a_flag() {
        for (map, _) in MapSizes::default().by_map() {
            assert!(flag_of(map).is_some(), "{map}");
        }
        assert_eq!(MapSizes::default().of(names::COUNTERS), None);
    }
}
