//! The TC programs under BPF_PROG_TEST_RUN, shared by the program tests
//! (`tc_prog.rs`) and the fuzz tier (`tc_fuzz.rs`): the object the agent
//! ships, loaded against a private bpffs, its maps filled directly, run
//! from inside a node namespace whose routes the programs' FIB lookups see
//! (see `bpfproxy_tests::node_net`).
// Each test crate uses its own part of it.
#![allow(dead_code)]
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, MapData},
    programs::SchedClassifier,
    Ebpf,
};
use bpfproxy_tests::{
    node_net::{self, NodeNet},
    prog_test_run, require_root, PrivateBpffs,
};
use proxy_agent::{
    ct_filter::PinnedFilter, ct_sweeper, maps::sizes::MapSizes, node_links, snat_ports::SnatPorts,
};
use proxy_common::{
    maps as names, node_flags, svc_flags, BackendValue, CtKey, CtValue, NodeAddrValue, ServiceKey,
    ServiceValue, SourceRange,
};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const TTL: u8 = 64;

pub const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 6);
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A pod on a node reached over the overlay, and the overlay's address on
/// this node (what flannel puts on `flannel.1`).
pub const OVERLAY_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 6);
pub const OVERLAY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
pub const OVERLAY_MTU: usize = node_net::OVERLAY_MTU as usize;
pub const NODE_PORT: u16 = 30080;
pub const TARGET_PORT: u16 = 8080;

/// The loaded object with its maps pinned in a private bpffs, run from
/// inside a node namespace.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub next_backend_id: u32,
    pub next_rev_nat_id: u16,
    // Dropped last: unmounting releases the pins, the namespaces go.
    pub bpffs: PrivateBpffs,
    _node: NodeNet,
}

/// A backend to program: address, port, whether it runs on this node.
#[derive(Clone, Copy)]
pub struct Be(pub Ipv4Addr, pub u16, pub bool);

impl Datapath {
    pub fn new(suffix: &str) -> Result<Self> {
        Self::new_with(suffix, &MapSizes::default())
    }

    /// [`Datapath::new`] with other map sizes (a small conntrack to flood).
    pub fn new_with(suffix: &str, sizes: &MapSizes) -> Result<Self> {
        require_root()?;
        let node = NodeNet::new(suffix)?;
        let bpffs = PrivateBpffs::new(suffix)?;
        let ebpf =
            proxy_agent::loader::load_tc_unattached_with(bpffs.path(), sizes, SnatPorts::default())
                .context("loading the agent's eBPF object and its TC programs")?;
        // The devices' SNAT addresses and MTUs, written by the agent's own
        // code from what this namespace holds.
        node_links::program_current(&bpffs.path().join(names::PIN_DIR))?;
        // As on a node whose agent has run a conntrack sweep: the programs
        // trust the confirmed-table filter (see `Datapath::ct_filter`).
        ct_sweeper::rebuild_pinned_filter(&bpffs.path().join(names::PIN_DIR))?;
        Ok(Self {
            ebpf,
            next_backend_id: 1,
            next_rev_nat_id: 1,
            bpffs,
            _node: node,
        })
    }

    /// Lets another thread run the programs as this one does: inside the
    /// node namespace, whose routes their lookups see.
    pub fn join_node_on_this_thread(&self) -> Result<()> {
        self._node.join_this_thread()
    }

    pub fn run(&self, prog: &str, pkt: &[u8]) -> std::io::Result<prog_test_run::TestRun> {
        let p: &SchedClassifier = self
            .ebpf
            .program(prog)
            .expect("program exists")
            .try_into()
            .expect("is a classifier");
        prog_test_run::run(p.fd().expect("loaded"), pkt, None)
    }

    pub fn ingress(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let r = self.run("tc_ingress", pkt).expect("BPF_PROG_TEST_RUN");
        (r.retval, r.data)
    }

    pub fn reply(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let r = self.run("tc_reply", pkt).expect("BPF_PROG_TEST_RUN");
        (r.retval, r.data)
    }

    /// `tc_reply_l3` on `pkt` without its Ethernet header, as an L3 device
    /// hands it over.
    pub fn reply_l3(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let r = self
            .run("tc_reply_l3", &pkt[bpfproxy_tests::packet::ETH_HLEN..])
            .expect("BPF_PROG_TEST_RUN");
        (r.retval, r.data)
    }

    pub fn egress(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let r = self.run("tc_egress", pkt).expect("BPF_PROG_TEST_RUN");
        (r.retval, r.data)
    }

    pub fn services(&mut self) -> HashMap<&mut MapData, ServiceKey, ServiceValue> {
        HashMap::try_from(self.ebpf.map_mut(names::SERVICES).unwrap()).unwrap()
    }

    /// Programs a frontend (slots, then master), as the agent would.
    pub fn service(&mut self, ip: Ipv4Addr, port: u16, proto: u8, flags: u16, backends: &[Be]) {
        self.program(ip, port, proto, flags, 0, backends)
    }

    /// An external frontend with ClientIP session affinity.
    pub fn service_with_affinity(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        proto: u8,
        timeout_s: u32,
        backends: &[Be],
    ) {
        self.program(ip, port, proto, svc_flags::EXTERNAL, timeout_s, backends)
    }

    pub fn program(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        proto: u8,
        flags: u16,
        affinity_s: u32,
        backends: &[Be],
    ) {
        let rev = self.next_rev_nat_id;
        self.next_rev_nat_id += 1;
        let master = ServiceValue::master(backends.len() as u16, rev, flags, affinity_s);
        let mut ids = Vec::new();
        {
            let mut be_map: HashMap<_, u32, BackendValue> =
                HashMap::try_from(self.ebpf.map_mut(names::BACKENDS).unwrap()).unwrap();
            for b in backends {
                let id = self.next_backend_id;
                self.next_backend_id += 1;
                let mut v = BackendValue::new(b.0, b.1, proto);
                if b.2 {
                    v = v.local();
                }
                be_map.insert(id, v, 0).unwrap();
                ids.push(id);
            }
        }
        let mut svc = self.services();
        // Remove stale slots of an earlier programming of this frontend.
        for slot in 1..=64u16 {
            let _ = svc.remove(&ServiceKey::new(ip, port, proto, slot));
        }
        for (i, id) in ids.iter().enumerate() {
            svc.insert(
                ServiceKey::new(ip, port, proto, i as u16 + 1),
                ServiceValue::slot(&master, *id),
                0,
            )
            .unwrap();
        }
        svc.insert(ServiceKey::new(ip, port, proto, 0), master, 0)
            .unwrap();
    }

    pub fn node_addr(&mut self, ip: Ipv4Addr, snat: Ipv4Addr, flags: u32) {
        let mut m: HashMap<_, u32, NodeAddrValue> =
            HashMap::try_from(self.ebpf.map_mut(names::NODE_ADDRS).unwrap()).unwrap();
        m.insert(
            u32::from_ne_bytes(ip.octets()),
            NodeAddrValue::new(snat, flags),
            0,
        )
        .unwrap();
    }

    /// The usual node: NodePorts on NODE, which is also the SNAT address.
    pub fn with_node(suffix: &str) -> Result<Self> {
        Self::with_node_sized(suffix, &MapSizes::default())
    }

    /// [`Datapath::with_node`] with other map sizes.
    pub fn with_node_sized(suffix: &str, sizes: &MapSizes) -> Result<Self> {
        let mut dp = Self::new_with(suffix, sizes)?;
        dp.node_addr(NODE, NODE, node_flags::NODEPORT);
        dp.node_addr(Ipv4Addr::UNSPECIFIED, NODE, 0);
        Ok(dp)
    }

    /// Allows `net/len` to reach the frontend with revNAT id `rev`
    /// (loadBalancerSourceRanges), as the agent writes it.
    pub fn source_range(&mut self, rev: u16, net: Ipv4Addr, len: u8) {
        use aya::maps::lpm_trie::{Key, LpmTrie};
        let mut m: LpmTrie<_, SourceRange, u8> =
            LpmTrie::try_from(self.ebpf.map_mut(names::SOURCE_RANGES).unwrap()).unwrap();
        let key = Key::new(SourceRange::prefix_len(len), SourceRange::new(rev, net));
        m.insert(&key, 1, 0).unwrap();
    }

    /// The conntrack entry under `key`, confirmed or new.
    pub fn ct(&mut self, key: &CtKey) -> Option<CtValue> {
        self.ct_in(names::CONNTRACK, key)
            .or_else(|| self.ct_in(names::CT_NEW, key))
    }

    /// The entry under `key` in the conntrack table `table`.
    pub fn ct_in(&mut self, table: &str, key: &CtKey) -> Option<CtValue> {
        let m: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map_mut(table).unwrap()).unwrap();
        m.get(key, 0).ok()
    }

    /// The confirmed-table filter the programs read, as the agent maps it.
    pub fn ct_filter(&self) -> PinnedFilter {
        PinnedFilter::open(&self.bpffs.path().join(names::PIN_DIR)).expect("conntrack filter")
    }

    /// Writes (or with None removes) the entry under `key` in `table`, as
    /// the kernel's LRU eviction or another flow would (marking the
    /// confirmed-table filter, as the programs do).
    pub fn set_ct(&mut self, table: &str, key: &CtKey, value: Option<CtValue>) {
        if table == names::CONNTRACK && value.is_some() {
            self.ct_filter().filter().mark(key);
        }
        self.set_ct_unmarked(table, key, value);
    }

    /// [`Datapath::set_ct`] without the filter's mark: what a version of
    /// the programs from before the filter writes.
    pub fn set_ct_unmarked(&mut self, table: &str, key: &CtKey, value: Option<CtValue>) {
        let mut m: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map_mut(table).unwrap()).unwrap();
        match value {
            Some(v) => m.insert(key, v, 0).unwrap(),
            None => {
                let _ = m.remove(key);
            }
        }
    }

    pub fn counter(&mut self, reason: u32) -> u64 {
        let m: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(self.ebpf.map_mut(names::COUNTERS).unwrap()).unwrap();
        m.get(&reason, 0).unwrap().iter().sum()
    }
}
