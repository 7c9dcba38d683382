//! The maps, pinned by name so they outlive the agent: a restarted agent and
//! the programs left attached while no agent runs share the same state.
use aya_ebpf::bindings::BPF_F_MMAPABLE;
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray},
};
use proxy_common::{
    counters, ct_filter::CtFilter, maps as names, AffinityKey, AffinityValue, BackendStatKey,
    BackendValue, CtKey, CtValue, DeviceValue, NodeAddrValue, RevNatValue, ServiceKey, ServiceName,
    ServiceStats, ServiceValue, SockRevNatKey, SockRevNatValue, SourceRange,
};

#[map(name = "bpfp_svc_v1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(names::SERVICES_MAX, 0);

#[map(name = "bpfp_be_v1")]
pub static BACKENDS: HashMap<u32, BackendValue> = HashMap::pinned(names::BACKENDS_MAX, 0);

/// Not read by the socket programs yet (they keep the frontend per socket);
/// the TC programs' reply path will use it.
#[map(name = "bpfp_rnat_v1")]
pub static REV_NAT: HashMap<u32, RevNatValue> = HashMap::pinned(names::REV_NAT_MAX, 0);

#[map(name = "bpfp_sknat_v1")]
pub static SOCK_REV_NAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(names::SOCK_REV_NAT_MAX, 0);

/// Written by the agent for `bpfproxy dump`; never read here.
#[map(name = "bpfp_names_v1")]
pub static SERVICE_NAMES: HashMap<u32, ServiceName> = HashMap::pinned(names::REV_NAT_MAX, 0);

#[map(name = "bpfp_cnt_v6")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::MAX, 0);

/// Session affinity (sessionAffinity: ClientIP): the backend each client
/// netns last used per frontend. The agent removes entries whose backend
/// left the frontend.
#[map(name = "bpfp_aff_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(names::AFFINITY_MAX, 0);

/// Conntrack of the TC programs' confirmed flows (see `proxy_common::ct_dir`
/// and `ct`).
#[map(name = "bpfp_ct_v1")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(names::CONNTRACK_MAX, 0);

/// Conntrack of new flows until confirmed: what a flood of new flows churns.
/// Its LRU lists are per CPU (`CT_NEW_FLAGS`): two inserts per new
/// flow then never wait for the shared list's lock or refill (a tenth of a
/// SYN's cost), and a flood steered to one CPU churns only that CPU's
/// share. A pin from before keeps its shared list (the layout is the
/// same) until `bpfproxy cleanup`.
#[map(name = "bpfp_ctnew_v1")]
pub static CT_NEW: LruHashMap<CtKey, CtValue> =
    LruHashMap::pinned(names::CT_NEW_MAX, names::CT_NEW_FLAGS);

/// Which keys `CONNTRACK` may hold (see `proxy_common::ct_filter`); the
/// agent rebuilds it through a memory mapping, cell by cell.
#[map(name = "bpfp_ctf_v1")]
pub static CT_FILTER: Array<CtFilter> = Array::pinned(1, BPF_F_MMAPABLE);

/// This node's addresses that NodePorts answer on, and SNAT addresses.
#[map(name = "bpfp_node_v1")]
pub static NODE_ADDRS: HashMap<u32, NodeAddrValue> = HashMap::pinned(names::NODE_ADDRS_MAX, 0);

/// This node's devices by interface index: the SNAT source and MTU for
/// traffic the TC programs forward out of each (see `route`).
#[map(name = "bpfp_dev_v1")]
pub static DEVICES: HashMap<u32, DeviceValue> = HashMap::pinned(names::DEVICES_MAX, 0);

/// `loadBalancerSourceRanges`: (revNAT id, client network) prefixes that
/// may open connections to the frontends flagged `SOURCE_RANGES`.
#[map(name = "bpfp_lbsrc_v1")]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u8> = LpmTrie::pinned(names::SOURCE_RANGES_MAX, 0);

/// Traffic counters per frontend (see `stats`).
#[map(name = "bpfp_svcst_v1")]
pub static SERVICE_STATS: Array<ServiceStats> = Array::pinned(names::SERVICE_STATS_MAX, 0);

/// New connections per (frontend, backend) pair (see `stats`).
#[map(name = "bpfp_best_v1")]
pub static BACKEND_STATS: HashMap<BackendStatKey, u64> =
    HashMap::pinned(names::BACKEND_STATS_MAX, 0);
