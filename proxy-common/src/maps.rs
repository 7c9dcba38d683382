//! Names and sizes of the BPF maps. Names are at most 15 bytes (the kernel's
//! limit) and carry the layout version, because aya reuses a pinned map of
//! the same name without checking its layout: a new layout gets new names
//! and a new pin directory.

/// Sub-directory of the pin root that holds this layout's maps and links.
pub const PIN_DIR: &str = "v1";

pub const SERVICES: &str = "bpfp_svc_v1";
pub const BACKENDS: &str = "bpfp_be_v1";
pub const REV_NAT: &str = "bpfp_rnat_v1";
pub const SOCK_REV_NAT: &str = "bpfp_sknat_v1";
pub const SERVICE_NAMES: &str = "bpfp_names_v1";
/// The version grows with the array (a bigger array is a new layout): v4
/// added the forwarding reasons (no route, fragmentation needed), v5 the
/// ICMP error translation, v6 the two-table conntrack.
pub const COUNTERS: &str = "bpfp_cnt_v6";
pub const AFFINITY: &str = "bpfp_aff_v1";
/// Conntrack of confirmed flows (a TCP handshake completed, a second
/// packet of a UDP flow): a flood of new flows never reaches it.
pub const CONNTRACK: &str = "bpfp_ct_v1";
/// Conntrack of new flows until they are confirmed (then moved to
/// CONNTRACK): a spoofed SYN flood churns this LRU only.
pub const CT_NEW: &str = "bpfp_ctnew_v1";
/// Which keys the confirmed table may hold (see `ct_filter`): a new
/// flow's SYN skips the probes of that table where the filter says no.
pub const CT_FILTER: &str = "bpfp_ctf_v1";
pub const NODE_ADDRS: &str = "bpfp_node_v1";
pub const DEVICES: &str = "bpfp_dev_v1";
pub const SOURCE_RANGES: &str = "bpfp_lbsrc_v1";
/// Traffic counters per frontend, an array indexed by revNAT id.
pub const SERVICE_STATS: &str = "bpfp_svcst_v1";
/// New connections per (frontend, backend) pair, written by the programs;
/// the agent removes the pairs the frontends no longer hold.
pub const BACKEND_STATS: &str = "bpfp_best_v1";

/// Pins of maps earlier versions used and this one does not (older
/// layouts of a map, under older names). The agent removes them at start:
/// a pin keeps its map's memory alive after every program using it is
/// gone, while removing the pin of a map a program still uses is harmless
/// (the kernel frees the map with its last user).
pub const RETIRED: [&str; 5] = [
    "bpfp_cnt_v1",
    "bpfp_cnt_v2",
    "bpfp_cnt_v3",
    "bpfp_cnt_v4",
    "bpfp_cnt_v5",
];

/// Every map the agent owns, for loops over all of them (pin checks, dump).
pub const ALL: [&str; 15] = [
    SERVICES,
    BACKENDS,
    REV_NAT,
    SOCK_REV_NAT,
    SERVICE_NAMES,
    COUNTERS,
    AFFINITY,
    CONNTRACK,
    CT_NEW,
    CT_FILTER,
    NODE_ADDRS,
    DEVICES,
    SOURCE_RANGES,
    SERVICE_STATS,
    BACKEND_STATS,
];

pub const SERVICES_MAX: u32 = 65_536;
pub const BACKENDS_MAX: u32 = 65_536;
pub const REV_NAT_MAX: u32 = 65_536;
pub const SOCK_REV_NAT_MAX: u32 = 262_144;
pub const AFFINITY_MAX: u32 = 65_536;
pub const CONNTRACK_MAX: u32 = 262_144;
/// Entries of the new-flow table per possible CPU, the agent's default
/// (`--map-size-conntrack-new` unset): each CPU has its own LRU list and
/// share of the table, so this is 2,048 handshakes in flight per CPU. Kept
/// small on purpose: every new flow touches two random buckets of the
/// table's index, and an index of 64 KiB per CPU stays in the CPU's cache
/// where a 1 MiB one does not (a SYN costs about a third less). A flood
/// beyond it evicts only other new flows.
pub const CT_NEW_PER_CPU: u32 = 4_096;
/// The new-flow table's size compiled into the object and used where no
/// CPU count applies (program tests, `MapSizes::default`): one CPU's share.
pub const CT_NEW_MAX: u32 = CT_NEW_PER_CPU;
/// The map flags of `CT_NEW`: BPF_F_NO_COMMON_LRU, an LRU list per CPU.
pub const CT_NEW_FLAGS: u32 = 1 << 1;
pub const NODE_ADDRS_MAX: u32 = 256;
pub const DEVICES_MAX: u32 = 256;
pub const SOURCE_RANGES_MAX: u32 = 16_384;
/// Every revNAT id (they are u16): the size is the layout.
pub const SERVICE_STATS_MAX: u32 = 65_536;
/// One per backend slot, as the service map.
pub const BACKEND_STATS_MAX: u32 = SERVICES_MAX;
