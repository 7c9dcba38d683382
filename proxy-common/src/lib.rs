//! Map key and value types shared by the kernel programs (`proxy-ebpf`) and
//! the agent (`proxy-agent`).
//!
//! Rules every type here follows, because the kernel compares keys byte by
//! byte:
//! - `#[repr(C)]` with every padding byte spelled out as a `_pad` field, so a
//!   key built in userspace and one built in the kernel hash identically;
//! - a `const` size assertion, so a layout change cannot slip through;
//! - addresses and ports in network byte order (`_be` suffix), exactly as the
//!   kernel hands them to the socket programs. With the `user` feature,
//!   constructors and accessors convert byte order in this one place.
#![no_std]

pub mod counters;
pub mod ct_filter;
pub mod icmp_error;
pub mod maps;
pub mod refusal;

#[cfg(feature = "user")]
mod user;

/// IANA protocol numbers, the values carried in `proto` fields.
pub mod proto {
    pub const ICMP: u8 = 1;
    /// IPv4 in IPv4 (IPIP tunnels: flannel's `ipip` backend, Calico's IPIP).
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Bits of the TCP header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Key of the service map. Slot 0 is a frontend's master entry; slots
/// `1..=count` point at its backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    /// Which clients the entry serves (`scope::*`); 0 for almost every key.
    pub scope: u8,
    pub slot: u16,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 12);

impl ServiceKey {
    /// The master-entry key of a frontend, from values already in network
    /// byte order (as the kernel sees them).
    #[inline(always)]
    pub const fn master_raw(addr_be: u32, port_be: u16, proto: u8) -> Self {
        Self::slot_raw(addr_be, port_be, proto, 0)
    }

    #[inline(always)]
    pub const fn slot_raw(addr_be: u32, port_be: u16, proto: u8, slot: u16) -> Self {
        Self {
            addr_be,
            port_be,
            proto,
            scope: scope::NODE,
            slot,
            _pad2: 0,
        }
    }

    /// The same frontend's key as in-cluster clients see it
    /// ([`scope::IN_CLUSTER`]).
    #[inline(always)]
    pub const fn in_cluster(self) -> Self {
        Self {
            scope: scope::IN_CLUSTER,
            ..self
        }
    }

    /// Slot `slot` of the frontend this key belongs to, in the same scope.
    #[inline(always)]
    pub const fn with_slot(self, slot: u16) -> Self {
        Self { slot, ..self }
    }
}

/// Values of [`ServiceKey::scope`]: two views of one frontend.
pub mod scope {
    /// What this node serves: the only view of ClusterIPs and of frontends
    /// with `externalTrafficPolicy: Cluster`, and the node-local view the TC
    /// programs use for `externalTrafficPolicy: Local`.
    pub const NODE: u8 = 0;
    /// An `externalTrafficPolicy: Local` frontend (NodePort, externalIP, LB
    /// IP) as pods and node processes reach it through the socket programs:
    /// every endpoint of the Service, as kube-proxy sends in-cluster traffic
    /// for external destinations to the cluster-wide chain. Present only
    /// beside a scope-0 master carrying `svc_flags::ETP_LOCAL`, with the same
    /// revNAT id.
    pub const IN_CLUSTER: u8 = 1;
}

/// Value of the service map. For the master entry (slot 0): `count`,
/// `rev_nat_id`, `flags`, `affinity_timeout_s`; `backend_id` is 0. For a
/// backend slot: `backend_id`, and the rest copied from the master so a dump
/// of one slot is self-describing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceValue {
    pub backend_id: u32,
    pub count: u16,
    pub rev_nat_id: u16,
    pub flags: u16,
    pub _pad: u16,
    pub affinity_timeout_s: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

/// Value of the backend map, keyed by a `u32` backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    /// `BACKEND_STATE_*`.
    pub state: u8,
}
const _: () = assert!(core::mem::size_of::<BackendValue>() == 8);

pub const BACKEND_STATE_ACTIVE: u8 = 0;
/// Bit of [`BackendValue::state`]: the endpoint runs on this node, so the TC
/// datapath can DNAT to it without SNAT (replies pass this node anyway).
pub const BACKEND_FLAG_LOCAL: u8 = 0x80;

/// Bits of [`ServiceValue::flags`].
pub mod svc_flags {
    /// Reachable from outside the node through the TC programs: a NodePort
    /// (address 0.0.0.0), an externalIP or a LoadBalancer ingress IP.
    /// ClusterIPs are served by the socket programs only.
    pub const EXTERNAL: u16 = 1 << 0;
    /// `externalTrafficPolicy: Local`: the slots hold node-local endpoints
    /// only and the client address is kept (never SNAT).
    pub const ETP_LOCAL: u16 = 1 << 1;
    /// The Service has no usable endpoint anywhere: refuse (kube-proxy's
    /// REJECT) instead of dropping, which only a Local policy without local
    /// endpoints does.
    pub const REJECT: u16 = 1 << 2;
    /// `loadBalancerSourceRanges` (LoadBalancer IPs only): new connections
    /// from outside are accepted only from sources the source-range map
    /// holds for this frontend's revNAT id.
    pub const SOURCE_RANGES: u16 = 1 << 3;
}

/// The data of a source-range map key (an LPM trie key's data, matched bit
/// by bit from the first byte): the frontend's revNAT id, then the client
/// address. The key's prefix length is 32 + the range's length, so one
/// frontend's ranges never match another's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    /// The revNAT id in network byte order (so it is matched first, whole).
    pub rev_nat_id_be: u32,
    pub addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<SourceRange>() == 8);

impl SourceRange {
    /// The LPM prefix length of a range of `len` bits.
    pub const fn prefix_len(len: u8) -> u32 {
        32 + len as u32
    }
}

/// Value of the reverse-NAT map, keyed by a `u32` revNAT id (one per
/// frontend): the address the client believes it talks to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevNatValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNatValue>() == 8);

/// Key of the socket reverse-NAT map (LRU): which frontend a socket that was
/// sent to `backend` really addressed. Read by recvmsg4 (UDP replies must
/// come from the VIP) and getpeername4 (the peer must read as the VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevNatKey {
    pub cookie: u64,
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevNatKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevNatValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub rev_nat_id: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevNatValue>() == 8);

/// Length of the name buffer in [`ServiceName`].
pub const SERVICE_NAME_LEN: usize = 124;

/// Value of the names map, keyed by revNAT id: the `namespace/name:port`
/// of a frontend, so `bpfproxy dump` in another process can name what the
/// kernel holds without asking the agent. The kernel programs never read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    pub len: u32,
    pub bytes: [u8; SERVICE_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<ServiceName>() == 128);

/// Key of the session-affinity map (LRU): one client and one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    /// The client: its network namespace cookie for the socket programs,
    /// or [`AFFINITY_CLIENT_IP`] with its IPv4 address (as the packet
    /// carries it) for traffic the TC programs see from outside the node.
    pub client: u64,
    pub rev_nat_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);

/// Tag of an [`AffinityKey::client`] that is an IP address. Netns cookies
/// count up from 1 and never reach it.
pub const AFFINITY_CLIENT_IP: u64 = 1 << 63;

/// The backend a client was last sent to and when (seconds of the kernel's
/// monotonic clock).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub last_used_s: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 8);

/// The default SNAT port range of the TC programs (`bpfproxy run
/// --snat-port-range`): above Linux's default ephemeral range (32768-60999),
/// so the node's own connections never pick these ports, and the agent
/// reserves them (`net.ipv4.ip_local_reserved_ports`) in case the node's
/// range was widened.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Directions of a conntrack entry ([`CtKey::dir`]). A flow the stack
/// forwards (backend on this node, or eTP=Local) has FORWARD and REPLY; a
/// flow the TC programs forward themselves (`ct_flags::REDIRECT`: SNAT to a
/// backend on another node) has FORWARD and REPLY_SNAT.
pub mod ct_dir {
    /// Client → frontend at tc ingress: destination → backend (and, with
    /// REDIRECT, source → this node's SNAT address and port).
    pub const FORWARD: u8 = 0;
    /// Client → backend at tc egress: source → SNAT address and port. Only
    /// flows created by versions before REDIRECT have it; kept so they
    /// survive an upgrade.
    pub const FORWARD_SNAT: u8 = 1;
    /// Backend → SNAT address at tc ingress (`tc_ingress` or `tc_reply`):
    /// destination → the client; with REDIRECT also source → the frontend,
    /// and the program forwards the reply to the client itself.
    pub const REPLY_SNAT: u8 = 2;
    /// Backend → client at tc egress of the client-facing device: source →
    /// the frontend the client addressed.
    pub const REPLY: u8 = 3;
}

/// TCP states of a conntrack entry ([`CtValue::tcp_state`]); 0 for UDP.
pub mod ct_state {
    pub const NONE: u8 = 0;
    /// A SYN was seen, no further packet from the client yet.
    pub const SYN_SENT: u8 = 1;
    pub const ESTABLISHED: u8 = 2;
    /// A FIN or RST was seen in this direction.
    pub const CLOSING: u8 = 3;
}

/// Bits of [`CtValue::flags`].
pub mod ct_flags {
    /// The forward direction also rewrites the source (eTP=Cluster with a
    /// backend on another node).
    pub const SNAT: u8 = 1 << 0;
    /// The flow is translated whole at tc ingress and forwarded by the
    /// program itself (a route lookup and a redirect to the egress device),
    /// never handed to the stack: its FORWARD entry rewrites destination and
    /// source, its REPLY_SNAT entry destination (`addr_be:port_be`, the
    /// client) and source (`nat_addr_be:nat_port_be`, the frontend). It then
    /// needs no program on the device it leaves by, only the reply-side
    /// `tc_reply` where its replies come back (an overlay, a second NIC).
    pub const REDIRECT: u8 = 1 << 1;
}

/// Key of the conntrack map (LRU): a packet's 5-tuple as the program sees it
/// and the direction the entry serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// `ct_dir::*`.
    pub dir: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

impl CtKey {
    /// The key of the other direction of the flow this entry (`self`,
    /// `value`) belongs to: FORWARD ↔ REPLY_SNAT for flows the programs
    /// forward, FORWARD ↔ REPLY for flows the stack forwards. None for the
    /// entries of earlier versions (FORWARD_SNAT, SNAT without REDIRECT),
    /// which pair differently. The datapath moves a flow's entries between
    /// its tables together, and the agent expires them together.
    #[inline(always)]
    pub fn partner(&self, value: &CtValue) -> Option<CtKey> {
        let redirect = value.flags & ct_flags::REDIRECT != 0;
        let snat = value.flags & ct_flags::SNAT != 0;
        let (saddr_be, daddr_be, sport_be, dport_be, dir) = match self.dir {
            ct_dir::FORWARD if redirect && snat => (
                value.addr_be,
                value.nat_addr_be,
                value.port_be,
                value.nat_port_be,
                ct_dir::REPLY_SNAT,
            ),
            ct_dir::FORWARD if !redirect && !snat => (
                value.addr_be,
                self.saddr_be,
                value.port_be,
                self.sport_be,
                ct_dir::REPLY,
            ),
            ct_dir::REPLY_SNAT if redirect => (
                value.addr_be,
                value.nat_addr_be,
                value.port_be,
                value.nat_port_be,
                ct_dir::FORWARD,
            ),
            ct_dir::REPLY => (
                self.daddr_be,
                value.addr_be,
                self.dport_be,
                value.port_be,
                ct_dir::FORWARD,
            ),
            _ => return None,
        };
        Some(CtKey {
            saddr_be,
            daddr_be,
            sport_be,
            dport_be,
            proto: self.proto,
            dir,
            _pad: 0,
        })
    }
}

/// Value of the conntrack map. `addr_be:port_be` is the rewrite the key's
/// direction applies: the backend (FORWARD, new destination), the SNAT
/// source (FORWARD_SNAT), the client (REPLY_SNAT, new destination) or the
/// frontend (REPLY, new source). `nat_addr_be:nat_port_be` is the new
/// source of a REDIRECT entry: the SNAT address in FORWARD, the frontend in
/// REPLY_SNAT (zero without SNAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtValue {
    pub addr_be: u32,
    pub port_be: u16,
    /// `ct_flags::*`.
    pub flags: u8,
    /// `ct_state::*`.
    pub tcp_state: u8,
    pub nat_addr_be: u32,
    pub nat_port_be: u16,
    pub rev_nat_id: u16,
    pub backend_id: u32,
    /// Seconds of the kernel's monotonic clock at the last packet.
    pub last_seen_s: u32,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 24);

/// Value of the node-address map, keyed by an IPv4 address in network byte
/// order: one of this node's addresses NodePorts answer on, and the source
/// address to SNAT to. Key 0.0.0.0 (never a destination the programs look
/// up as a NodePort) holds the SNAT address for externalIPs and LB IPs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddrValue {
    pub snat_addr_be: u32,
    /// `node_flags::*`.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<NodeAddrValue>() == 8);

/// Value of the device map, keyed by interface index: what traffic the TC
/// programs forward out of that device is SNATed to (its primary IPv4
/// address, as iptables' MASQUERADE would pick it) and its MTU (for the
/// "fragmentation needed" answer when a packet does not fit).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceValue {
    pub snat_addr_be: u32,
    pub mtu: u32,
}
const _: () = assert!(core::mem::size_of::<DeviceValue>() == 8);

/// Bits of [`NodeAddrValue::flags`].
pub mod node_flags {
    /// NodePorts answer on this address.
    pub const NODEPORT: u32 = 1 << 0;
}

/// Per-frontend traffic counters: indices into [`ServiceStats::counts`].
pub mod svc_stat {
    /// Socket-LB translations: connect(), and sendmsg() of unconnected UDP.
    pub const SOCK_CONNECTIONS: usize = 0;
    /// New flows of the TC programs (traffic from outside the node).
    pub const TC_FLOWS: usize = 1;
    /// Refused at once for want of endpoints (ECONNREFUSED, RST, ICMP).
    pub const REFUSED: usize = 2;
    /// Dropped: a Local traffic policy without local endpoints.
    pub const DROPPED_NO_ENDPOINTS: usize = 3;
    /// Dropped: the client is outside `loadBalancerSourceRanges`.
    pub const DROPPED_SOURCE_RANGE: usize = 4;
    /// Packets and bytes the TC ingress program translated for the flows.
    pub const TC_PACKETS: usize = 5;
    pub const TC_BYTES: usize = 6;
    pub const MAX: usize = 8;
    /// Names for metrics and dump, by index (empty: unused).
    pub const NAMES: [&str; MAX] = [
        "sock_connections",
        "tc_flows",
        "refused",
        "dropped_no_endpoints",
        "dropped_source_range",
        "tc_packets",
        "tc_bytes",
        "",
    ];
}

/// Value of the per-frontend counter array, indexed by revNAT id. Shared
/// by all CPUs (atomic adds): a per-CPU copy of 65,536 frontends would
/// cost megabytes per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub counts: [u64; svc_stat::MAX],
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 64);

/// Key of the per-backend connection counters: one per (frontend,
/// backend) pair, the pairs the frontends' slots hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendStatKey {
    pub rev_nat_id: u32,
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<BackendStatKey>() == 8);
